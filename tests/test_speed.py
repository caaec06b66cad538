"""The fast paths give the results of the plain ones (correctness only; speed is measured in benchmarks/)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from fuse_cli.images import write_image
from stages.metrics import METRICS
from stages.score import ScoreStage
from tests.conftest import fuse_cli


@pytest.fixture(scope="module")
def scored_records(synthetic_pairs, tmp_path_factory) -> list[dict]:
    """Records of the generated pairs with a mean fusion written beside them, plus one whose fused file is missing."""
    from fuse_cli.images import read_image
    from fuse_cli.records import pair_directories

    out = tmp_path_factory.mktemp("fused")
    records = pair_directories({"ir": synthetic_pairs / "ir", "vis": synthetic_pairs / "vis"}).records
    for record in records:
        ir, vis = read_image(record["ir"]), read_image(record["vis"])
        write_image(out / f"{record['id']}.png", (ir[..., None] + vis) / 2)
        record["fused"] = str(out / f"{record['id']}.png")
    return [*records, {**records[0], "id": "missing", "fused": str(out / "missing.png")}]


def test_parallel_scoring_equals_serial_in_any_order(scored_records):
    names = list(METRICS)
    serial = {r["id"]: ScoreStage(names, "mmif").process([r])[0] for r in scored_records}
    shuffled = scored_records[:]
    random.Random(1).shuffle(shuffled)
    stage = ScoreStage(names, "mmif", workers=2)
    parallel = stage.process(shuffled)
    assert len(parallel) == len(shuffled)
    for record, result in zip(shuffled, parallel):
        expected = serial[record["id"]]
        if isinstance(expected, Exception):
            assert type(result) is type(expected) and str(result) == str(expected)
        else:
            assert result == expected  # the same floats, bit for bit
    assert stage.process(shuffled[:2]) == [serial[r["id"]] for r in shuffled[:2]]  # the pool is reused


def test_score_workers_cli_keeps_values_and_row_order(scored_records, tmp_path):
    records = [r for r in scored_records if r["id"] != "missing"]
    random.Random(2).shuffle(records)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    serial = fuse_cli("score", "--records", path, "--metrics", "EN,Qabf,VIF")
    parallel = fuse_cli("score", "--records", path, "--metrics", "EN,Qabf,VIF", "--workers", "2")
    assert serial.returncode == parallel.returncode == 0, serial.stderr + parallel.stderr
    assert parallel.stdout == serial.stdout
    assert [line.split(",")[0] for line in serial.stdout.splitlines()[1:-1]] == [r["id"] for r in records]
