"""Every registered fusion method, through the real ``fuse fuse -m NAME``, on one real MSRS night pair:

* its output matches the stored golden values (8×8 block means of the fused luminance), so a silent
  change to a network, its shipped weights or a classical method fails here;
* no two methods give the same image, so a stage that ignores ``-m`` fails here.

After promoting new weights on purpose, rewrite the golden values with
``FUSE_UPDATE_GOLDEN=1 python -m pytest tests/test_shipped_fusion.py -p no:xdist`` and commit
``tests/data/golden_fusion.json`` with the weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import fuse_cli, shared

GOLDEN = Path(__file__).parent / "data" / "golden_fusion.json"
WEIGHTS = Path(__file__).resolve().parents[1] / "stages" / "weights"
PAIR_ID = "00881N"  # an MSRS night pair: a warm pedestrian and a crossing lit only in the visible image
WINDOW = (slice(160, 352), slice(192, 448))  # a 192×256 part of it, so every network runs in seconds
BLOCKS = 8
TOLERANCE = 1.0  # grey levels, per block mean: float noise across machines stays far below it
UPDATE = os.environ.get("FUSE_UPDATE_GOLDEN") == "1"


def _methods() -> list[str]:
    """Every method `fuse fuse --list-methods` lists that can run offline (learned ones need shipped weights)."""
    from stages.methods.registry import list_methods

    return [m.name for m in list_methods() if m.kind == "classical" or (WEIGHTS / f"{m.name}.safetensors").is_file()]


METHODS = _methods()


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    """The cropped pair as ``ir/`` and ``vis/`` folders."""
    msrs = shared("msrs")
    root = tmp_path_factory.mktemp("golden_pair")
    for modality in ("ir", "vis"):
        (root / modality).mkdir()
        image = iio.imread(msrs / modality / f"{PAIR_ID}.png")
        iio.imwrite(root / modality / f"{PAIR_ID}.png", np.ascontiguousarray(image[WINDOW]))
    return root


@pytest.fixture(scope="module")
def fused(pair_dir, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each method's fused luminance (float, grey levels), made by the CLI."""
    out = tmp_path_factory.mktemp("golden_fused")
    results = {}
    for method in METHODS:
        run = fuse_cli("fuse", "-q", "-m", method, "--ir", pair_dir / "ir", "--vis", pair_dir / "vis",
                       "-o", out / method)
        assert run.returncode == 0, f"fuse fuse -m {method} failed: {run.stderr[-2000:]}"
        image = iio.imread(out / method / f"{PAIR_ID}.png").astype(np.float64)
        results[method] = image @ [0.299, 0.587, 0.114] if image.ndim == 3 else image
    return results


def _block_means(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return image[:h // BLOCKS * BLOCKS, :w // BLOCKS * BLOCKS].reshape(BLOCKS, h // BLOCKS, BLOCKS, -1).mean(axis=(1, 3))


def test_every_method_matches_its_golden_values(fused):
    if UPDATE:
        GOLDEN.write_text(json.dumps({"pair": f"msrs/{PAIR_ID}", "window": [[s.start, s.stop] for s in WINDOW],
                                      "block_means": {m: np.round(_block_means(f), 3).tolist()
                                                      for m, f in sorted(fused.items())}}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["block_means"]
    assert set(fused) <= set(golden), f"no golden values for {sorted(set(fused) - set(golden))}: set FUSE_UPDATE_GOLDEN=1"
    for method, image in fused.items():
        diff = np.abs(_block_means(image) - np.array(golden[method]))
        assert diff.max() <= TOLERANCE, f"{method}: block means moved by up to {diff.max():.2f} grey levels"


def test_no_two_methods_give_the_same_image(fused):
    names = sorted(fused)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(fused[a] - fused[b]).mean() > 0.5, f"-m {a} and -m {b} gave the same image"
