"""The Python API (``fuse_api``): arrays in, the same pixels and scores as the command line out."""
from __future__ import annotations

import doctest
import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import fuse_api
from conftest import fuse_cli, records_of


@pytest.fixture(scope="module")
def pair(synthetic_pairs):
    """One generated pair as uint8 arrays: IR (H, W), VIS (H, W, 3), and their paths."""
    ir_path, vis_path = synthetic_pairs / "ir" / "scene_00.png", synthetic_pairs / "vis" / "scene_00.png"
    return iio.imread(ir_path), iio.imread(vis_path), ir_path, vis_path


def test_uint8_arrays_fuse_as_values_over_255(pair):
    ir, vis, _, _ = pair
    gray = vis[..., 1]  # a gray VIS, so the mean of the two is the exact expectation
    fused = fuse_api.fuse(ir, gray, method="mean")
    expected = np.rint((ir.astype(np.float64) + gray) / 2)
    assert fused.dtype == np.uint8 and fused.shape == ir.shape
    assert np.abs(fused.astype(int) - expected).max() <= 1
    assert (fused == 255).mean() < 0.01  # uint8 read as 0-255 floats saturated about half the pixels


def test_array_types_agree(pair):
    ir, vis, _, _ = pair
    as_uint8 = fuse_api.fuse(ir, vis, method="laplacian")
    as_float = fuse_api.fuse(ir / 255.0, vis / 255.0, method="laplacian")
    as_uint16 = fuse_api.fuse(ir.astype(np.uint16) * 257, vis.astype(np.uint16) * 257, method="laplacian")
    as_tensor = fuse_api.fuse(torch.from_numpy(ir / 255.0), torch.from_numpy(vis / 255.0).permute(2, 0, 1), method="laplacian")
    assert as_float.dtype == np.float32 and as_uint16.dtype == np.uint16 and as_tensor.shape == (3, *ir.shape)
    assert np.abs(as_float * 255 - as_uint8).max() <= 0.5 + 1e-3
    assert np.abs(as_uint16 / 257.0 - as_uint8).max() <= 0.5 + 1e-3
    assert torch.equal(as_tensor, torch.from_numpy(as_float).permute(2, 0, 1))


def test_classical_fusion_of_arrays_imports_no_torch():
    code = ("import sys, numpy as np, fuse_api\n"
            "ir, vis = np.zeros((40, 48), np.uint8), np.full((40, 48, 3), (200, 120, 40), np.uint8)\n"
            "fused = fuse_api.fuse(ir, vis, method='laplacian')\n"
            "assert fused.shape == (40, 48, 3) and 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_same_pixels_and_scores_as_the_command_line(pair, tmp_path):
    ir, vis, ir_path, vis_path = pair
    done = fuse_cli("fuse", "-m", "refinefuse", "--ir", ir_path.parent, "--vis", vis_path.parent, "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    cli_fused = iio.imread(tmp_path / "scene_00.png")
    fused = fuse_api.fuse(ir, vis, method="refinefuse", device="cpu")
    assert fused.shape == cli_fused.shape and np.abs(fused.astype(int) - cli_fused).max() <= 1

    scored = fuse_cli("score", "--format", "json", "--metrics", "EN,SSIM,Qabf", input=done.stdout)
    cli_scores = next(row for row in map(json.loads, scored.stdout.splitlines()) if row.get("id") == "scene_00")
    scores = fuse_api.score(ir, vis, cli_fused, metrics=["EN", "SSIM", "Qabf"])
    assert list(scores) == ["EN", "SSIM", "Qabf"]
    for name, value in scores.items():
        assert value == pytest.approx(cli_scores[name], rel=1e-6), name
    assert records_of(done.stdout)[0]["method"] == "refinefuse"


def test_bad_input_says_what_was_expected(pair):
    ir, vis, _, _ = pair
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        fuse_api.fuse(ir.astype(np.float32), vis, method="mean")
    with pytest.raises(ValueError, match="sizes differ"):
        fuse_api.fuse(ir[:100], vis, method="mean")
    with pytest.raises(KeyError, match="did you mean 'laplacian'"):
        fuse_api.fuse(ir, vis, method="laplace")
    with pytest.raises(ValueError, match="unknown metric"):
        fuse_api.score(ir, vis, vis, metrics=["XYZ"])
    assert "refinefuse" in fuse_api.methods() and "Qabf" in fuse_api.metrics()


def test_missing_extra_raises_one_clear_error(pair, monkeypatch):
    ir, vis, _, _ = pair
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if the 'text' extra were not installed
    with pytest.raises(fuse_api.MissingExtra, match=r"fusion method 'tesg' needs the 'text' extra: pip install 'fuse-cli\[text\]'"):
        fuse_api.fuse(ir, vis, method="tesg", device="cpu")


def test_docstring_example_runs():
    assert doctest.testmod(fuse_api).failed == 0
