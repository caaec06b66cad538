"""`fuse score` as users drive it: inputs, formats, method comparison, plot."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from conftest import fuse_cli, records_of, shared


@pytest.fixture(scope="module")
def two_methods(synthetic_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    for method in ("mean", "max"):
        done = fuse_cli("fuse", "-m", method, "-o", out / method, "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
        assert done.returncode == 0, done.stderr
    return synthetic_pairs, out


def test_several_fused_folders_side_by_side_with_mean_rows(two_methods):
    pairs, fused = two_methods
    done = fuse_cli("score", "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused / "mean", "--fused", fused / "max",
                    "--metrics", "en,SD,qabf")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(rows[0]) == ["id", "method", "convention", "EN", "SD", "Qabf"]
    assert [r["method"] for r in rows] == ["mean"] * 4 + ["max"] * 4 + ["mean", "max"]
    assert [r["id"] for r in rows[-2:]] == ["mean", "mean"]
    for method, mean_row in zip(("mean", "max"), rows[-2:]):
        per_image = [float(r["Qabf"]) for r in rows[:-2] if r["method"] == method]
        assert float(mean_row["Qabf"]) == pytest.approx(np.mean(per_image), rel=1e-5)
    assert all(r["convention"] == "mmif" for r in rows)


def test_formats_json_table_markdown(two_methods):
    pairs, fused = two_methods
    base = ("score", "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused / "max", "--metrics", "EN,SSIM")
    lines = [json.loads(line) for line in fuse_cli(*base, "--format", "json").stdout.splitlines()]
    assert len(lines) == 5 and set(lines[0]) == {"id", "method", "convention", "EN", "SSIM"}
    markdown = fuse_cli(*base, "--format", "markdown").stdout.splitlines()  # the table of means (tests/test_report.py)
    assert markdown[:2] == ["| method | EN ↑ | SSIM ↑ |", "|---|---:|---:|"] and markdown[2].startswith("| max | **")
    table = fuse_cli(*base, "--format", "table").stdout.splitlines()
    assert table[0].split() == ["id", "method", "convention", "EN", "SSIM"] and len(table) == 6


def test_vifb_convention_named_and_different(two_methods):
    pairs, fused = two_methods
    base = ("score", "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused / "max", "--metrics", "SSIM", "--format", "json")
    mmif = json.loads(fuse_cli(*base).stdout.splitlines()[-1])
    vifb = json.loads(fuse_cli(*base, "--convention", "vifb").stdout.splitlines()[-1])
    assert (mmif["convention"], vifb["convention"]) == ("mmif", "vifb")
    assert vifb["SSIM"] > mmif["SSIM"]  # Wang's Gaussian window on L = 255 vs near-zero constants (METRICS.md)


def test_plot_written(two_methods, tmp_path):
    pairs, fused = two_methods
    done = fuse_cli("score", "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused / "mean", "--fused", fused / "max",
                    "--metrics", "EN,VIF,Qcv", "--plot", tmp_path / "bars.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_from_fuse_and_per_pair_errors(two_methods, tmp_path):
    pairs, fused = two_methods
    listed = fuse_cli("fuse", "-m", "max", "-o", fused / "max", "--ir", pairs / "ir", "--vis", pairs / "vis").stdout
    records = records_of(listed)
    records[1]["fused"] = str(tmp_path / "gone.png")
    done = fuse_cli("score", "--metrics", "EN", input="".join(json.dumps(r) + "\n" for r in records))
    assert done.returncode == 1 and "gone.png" in done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["id"] for r in rows] == [records[0]["id"], records[2]["id"], records[3]["id"], "mean"]


def test_unknown_metric_or_convention_is_a_usage_error(two_methods):
    pairs, fused = two_methods
    base = ("score", "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused / "max")
    bad = fuse_cli(*base, "--metrics", "EN,Bogus")
    assert bad.returncode == 2 and "Bogus" in bad.stderr and "Qabf" in bad.stderr
    assert fuse_cli(*base, "--convention", "nope").returncode == 2


def test_published_tno_outputs_score_in_the_expected_ranges():
    tno = shared("tno")
    done = fuse_cli("score", "--ir", tno / "ir", "--vis", tno / "vis", "--fused", tno / "published" / "SeAFusion",
                    "--metrics", "EN,SD,Qabf,VIF,SSIM", "--format", "json")
    mean = json.loads(done.stdout.splitlines()[-1])
    assert mean["id"] == "mean" and mean["method"] == "SeAFusion"
    assert 6.5 < mean["EN"] < 7.5 and 0.3 < mean["Qabf"] < 0.7 and 0.5 < mean["VIF"] < 1.2 and 0.8 < mean["SSIM"] < 1.2
