"""``--engine ray``: the same files and records as the local engine, per-pair errors, killed workers retried.

One local Ray session (2 CPUs, no dashboard, no usage stats) serves the whole
module; the commands run in this process, so they join it instead of starting
their own.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance for the module, not one per xdist worker
ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

from conftest import records_of
from typer.testing import CliRunner

from fuse_cli.app import app
from stages.core.images import atomic_file
from fuse_cli.options import RunOptions
from stages.core.records import pair_directories
from fuse_cli.runner import Reporter, run_stage
from stages.core.stage import Stage


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=2, include_dashboard=False)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
        try:
            yield
        finally:
            ray.shutdown()


def invoke(*args) -> tuple[int, list[dict], list[str]]:
    """Run ``fuse ARGS`` here; exit status, records on stdout, ``error`` lines on stderr."""
    done = CliRunner().invoke(app, [str(a) for a in args])
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    return done.exit_code, records_of(done.stdout), errors


def by_name(records: list[dict], key: str) -> list[dict]:
    """Records with the output path under ``key`` cut to its file name, to compare runs into two folders."""
    return [{**r, key: Path(r[key]).name} if key in r else r for r in records]


def test_fuse_on_ray_writes_the_same_images_and_records_as_local(synthetic_pairs, tmp_path):
    pairs = ("--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis", "-b", "2")
    local = invoke("fuse", "-m", "max", *pairs, "-o", tmp_path / "local")
    on_ray = invoke("fuse", "-m", "max", *pairs, "-o", tmp_path / "ray", "--engine", "ray", "--concurrency", "2")
    assert local[0] == on_ray[0] == 0
    assert len(local[1]) == 4 and by_name(on_ray[1], "fused") == by_name(local[1], "fused")
    for record in local[1]:
        name = Path(record["fused"]).name
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_ray_engine_skips_shards_and_dry_runs_on_the_driver(synthetic_pairs, tmp_path):
    pairs = ("fuse", "-m", "max", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis", "-o", tmp_path)
    first = invoke(*pairs, "--shard", "2/2")
    again = invoke(*pairs, "--engine", "ray", "--shard", "2/2", "-v")  # outputs exist: nothing to send to Ray
    assert again[0] == 0 and again[1] == first[1] and [r["id"] for r in again[1]] == ["scene_01", "scene_03"]
    dry = CliRunner().invoke(app, [str(a) for a in pairs] + ["--engine", "ray", "--dry-run", "--overwrite"])
    assert dry.exit_code == 0 and dry.stdout == ""
    assert dry.stderr.count("would write: ") == 4


def test_mask_on_ray_reports_a_corrupt_image_like_local_and_finishes_the_others(synthetic_pairs, tmp_path):
    shutil.copytree(synthetic_pairs, tmp_path / "pairs")
    corrupt = tmp_path / "pairs" / "vis" / "scene_01.png"
    corrupt.write_bytes(b"not a png")
    pairs = ("--ir", tmp_path / "pairs" / "ir", "--vis", tmp_path / "pairs" / "vis", "-b", "2")
    local = invoke("mask", "--backend", "salient", *pairs, "-o", tmp_path / "local")
    on_ray = invoke("mask", "--backend", "salient", *pairs, "-o", tmp_path / "ray", "--engine", "ray")
    assert local[0] == on_ray[0] == 1
    assert on_ray[2] == local[2] and len(on_ray[2]) == 1 and str(corrupt) in on_ray[2][0]
    assert by_name(on_ray[1], "mask") == by_name(local[1], "mask")
    assert [r["id"] for r in on_ray[1] if "error" in r] == ["scene_01"]
    for record in local[1]:
        if "mask" in record:
            name = Path(record["mask"]).name
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


class CrashOnceStage(Stage):
    """Copies each pair's VIS path into ``OUT/<id>.txt``, chattily; kills its worker the first time it sees ``crash_id``."""

    name = "crash-once"
    output_key, output_suffix = "copy", ".txt"

    def __init__(self, out_dir: Path, crash_id: str, marker: Path):
        self.out_dir, self.crash_id, self.marker = Path(out_dir), crash_id, Path(marker)

    def process_one(self, record: dict) -> dict:
        print(f"copying {record['id']}")  # must not reach the driver's stdout
        if record["id"] == self.crash_id and not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        path = self.output_path(record)
        with atomic_file(path) as tmp:
            tmp.write_text(record["vis"])
        return {"copy": str(path)}


def test_a_killed_worker_is_retried_and_no_pair_is_lost_or_repeated(synthetic_pairs, tmp_path, capfd):
    records = pair_directories({"ir": synthetic_pairs / "ir", "vis": synthetic_pairs / "vis"}).records
    make_stage = functools.partial(CrashOnceStage, tmp_path / "out", records[1]["id"], tmp_path / "crashed")
    emitted: list[dict] = []
    opts = RunOptions(out=tmp_path / "out", batch_size=1, engine="ray", concurrency=1)
    status = run_stage(make_stage(), records, opts, Reporter("crash-once"), emit=emitted.append, make_stage=make_stage)
    assert status == 0 and (tmp_path / "crashed").exists()
    assert [r["id"] for r in emitted] == [r["id"] for r in records]
    for record in emitted:
        assert Path(record["copy"]).read_text() == record["vis"]
    assert "copying" not in capfd.readouterr().out


def test_ray_engine_emits_a_record_while_its_input_is_still_open(synthetic_pairs, tmp_path):
    """The first pair comes back before the producer sends the second, as with the local engine."""
    from stages.fuse import FuseStage

    pairs = pair_directories({"ir": synthetic_pairs / "ir", "vis": synthetic_pairs / "vis"}).records[:2]
    first_out = threading.Event()

    def slow_producer():
        yield pairs[0]
        assert first_out.wait(120), "no record came out while the input was open"
        yield pairs[1]

    emitted: list[dict] = []
    make_stage = functools.partial(FuseStage, tmp_path, "max", "cpu")
    opts = RunOptions(out=tmp_path, batch_size=4, engine="ray", concurrency=1)
    status = run_stage(make_stage(), slow_producer(), opts, Reporter("fuse"),
                       emit=lambda record: emitted.append(record) or first_out.set(), make_stage=make_stage)
    assert status == 0 and [r["id"] for r in emitted] == [p["id"] for p in pairs]
