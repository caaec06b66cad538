"""The tard network's detection head (l_ob, eq. 8), its joint training and ``fuse detect --model tard``."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from stages.detection.evaluation import Boxes, GroundTruth, load_ground_truth
from stages.nets import tard_detection
from stages.nets.tard import WEIGHTS as TARD_WEIGHTS
from stages.nets.tard import TardNet, load_tard
from stages.nets.tard_detection import TardDetection, TardDetector, load_detector, read_config, save_detector
from stages.training.tard import object_loss_fn
from tests.conftest import shared

torch.set_num_threads(1)

CLASSES = ["person", "bicycle", "car"]
MSRS_PAIRS = ["00537D", "00004N"]


def _pair_records(root, ids):
    return [{"id": i, "ir": str(root / "ir" / f"{i}.png"), "vis": str(root / "vis" / f"{i}.png")} for i in ids]


# --- contracts, random weights ----------------------------------------------------------------


def test_head_takes_the_fused_features_and_predicts_boxes():
    torch.manual_seed(0)
    net, head = TardNet().eval(), TardDetector(CLASSES)
    features = net.features(torch.rand(2, 1, 160, 256), torch.rand(2, 1, 160, 256))
    assert features.shape == (2, 32, 160, 256) and head.in_channels == 32
    raw = head.train()(features)
    assert raw["scores"].shape[:2] == (2, 3)  # training output: what ultralytics' loss takes
    boxes = head.eval().predict(features, conf=0.0, max_det=7)
    assert [b.shape for b in boxes] == [(7, 6), (7, 6)]
    assert set(boxes[0][:, 5].long().tolist()) <= {0, 1, 2}
    # a pair of any size: boxes in its pixels, inside the image
    found = TardDetection(net, head).detect(torch.rand(1, 1, 90, 300), torch.rand(1, 1, 90, 300), conf=0.0, max_det=50)[0]
    assert found.shape == (50, 6)
    assert (found[:, [0, 2]] <= 300).all() and (found[:, [1, 3]] <= 90).all() and (found[:, :4] >= 0).all()


def test_head_file_round_trip_and_config(tmp_path):
    torch.manual_seed(0)
    head = TardDetector(CLASSES).eval()
    save_detector(head, tmp_path / "head.safetensors")
    config = read_config(tmp_path / "head.safetensors")
    assert config == {"yaml": "yolov5n.yaml", "in_channels": 32, "names": CLASSES, "tard": "tard.safetensors"}
    again = load_detector(tmp_path / "head.safetensors")
    features = torch.rand(1, 32, 160, 256)
    assert all(torch.equal(a, b) for a, b in zip(head.predict(features, conf=0.0), again.predict(features, conf=0.0)))
    with pytest.raises(ValueError, match="not valid tard detection head weights"):
        read_config(TARD_WEIGHTS)  # the joint network's file
    with pytest.raises(FileNotFoundError):
        read_config(tmp_path / "none.safetensors")


def test_object_loss_reaches_the_head_and_the_features():
    torch.manual_seed(0)
    gt = GroundTruth({"a": Boxes(["car", "person"], [[0.1, 0.2, 0.4, 0.6], [0.6, 0.1, 0.7, 0.5]], normalised=True)}, CLASSES)
    head = TardDetector(CLASSES).train()
    loss_fn = object_loss_fn(head, gt)
    features = torch.rand(2, 32, 160, 256, requires_grad=True)
    loss = loss_fn(features, ["a", "unlabelled"])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert features.grad.abs().sum() > 0 and all(p.grad is not None for p in head.parameters() if p.requires_grad)
    targets = loss_fn.targets(["a"], (160, 256), (1.0, 1.0), None)
    assert targets["cls"].view(-1).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match=r"takes \(B, 32, H, W\)"):
        loss_fn(torch.rand(1, 3, 160, 256), ["a"])


def test_labelled_batch_boxes_follow_the_flip_and_the_ir_alone_is_deformed():
    from stages.training.tard import labelled_batch

    h, w = 32, 64
    pair = torch.zeros(2, h, w)
    pair[:, 8:16, 4:12] = 1.0  # a bright object at normalised x 1/16..3/16, y 1/4..1/2
    box = np.array([4 / w, 8 / h, 12 / w, 16 / h])
    rng, gen = random.Random(1), torch.Generator().manual_seed(0)
    flips, deformed_views = set(), 0
    for _ in range(8):
        ir, vis, deformed, phi, (affine,) = labelled_batch([pair], [0], rng, gen)
        corners = np.array([[box[0], box[1], 1], [box[2], box[3], 1]]) @ affine.T
        x0, x1 = sorted(corners[:, 0].round().astype(int))
        y0, y1 = sorted(corners[:, 1].round().astype(int))
        assert vis[0, 0, y0:y1, x0:x1].min() == 1 and vis[0, 0].sum() == (x1 - x0) * (y1 - y0)  # VIS: only flipped
        assert torch.equal(ir, vis) and phi.shape == (1, h, w, 2)
        flips.add(x0)
        deformed_views += not torch.allclose(deformed, ir, atol=1e-3)
    assert flips == {4, w - 12} and deformed_views >= 6  # both orientations drawn; the IR deformed (10 % are not)
    ir, vis, deformed, phi, _ = labelled_batch([pair], [0], rng, torch.Generator(), deform=False)
    assert deformed is ir


# --- real MSRS pairs -------------------------------------------------------------------------


def test_a_few_steps_reduce_l_ob_on_a_fixed_batch_and_the_saved_head_reloads(tmp_path):
    from stages.nets.registration import resize
    from stages.training.registration import preload
    from stages.training.tard import labelled_batch

    root = shared("msrs")
    torch.manual_seed(0)
    net = load_tard()
    gt = load_ground_truth(root / "labels")
    head = TardDetector(gt.classes).train()
    loss_fn = object_loss_fn(head, gt)
    data = [resize(p[None], net.registration.size)[0] for p in preload(_pair_records(root, MSRS_PAIRS))]
    _, vis, deformed, _, affines = labelled_batch(data, [0, 1], random.Random(0), torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(10):
        loss = loss_fn(net.features(deformed, vis), MSRS_PAIRS, affines)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    head.eval()
    with torch.no_grad():
        features = net.features(deformed, vis)
    save_detector(head, tmp_path / "head.safetensors")
    before = head.predict(features, conf=0.001)
    after = load_detector(tmp_path / "head.safetensors").predict(features, conf=0.001)
    assert sum(len(b) for b in before) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.fixture(scope="module")
def tard_run(tmp_path_factory):
    """One short epoch of joint training on four MSRS pairs: the run folder."""
    from stages.training.tard import train_tard_detection

    root = shared("msrs")
    out = tmp_path_factory.mktemp("tard_run")
    lines = []
    train_tard_detection(_pair_records(root, [*MSRS_PAIRS, "00008N", "00012N"]), root / "labels", out, epochs=1,
                         batch_size=2, progress=False, log=lines.append)
    return out, lines


def test_joint_training_writes_both_networks_and_the_card(tard_run):
    out, lines = tard_run
    card = json.loads((out / "tard_detector.json").read_text())
    assert card["classes"] == CLASSES and card["data"]["pairs_with_boxes"] == 4 and card["det_weight"] == 5.0
    (row,) = card["history"]
    assert set(row) >= {"epoch", "total", "reg", "c", "s", "fusion", "ob", "epe_px"} and np.isfinite(row["ob"])
    assert json.loads(lines[-1]) == row
    assert read_config(out / "tard_detector.safetensors")["names"] == CLASSES
    assert load_tard(out / "tard.safetensors").registration.size == load_tard().registration.size  # from --init


def test_detect_cli_runs_the_trained_head_and_evaluates(tard_run, tmp_path):
    from typer.testing import CliRunner

    from fuse_cli.app import app

    run, _ = tard_run
    root = shared("msrs")
    records = tmp_path / "pairs.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in _pair_records(root, MSRS_PAIRS)))
    out = tmp_path / "det"
    runner = CliRunner()
    done = runner.invoke(app, ["detect", "-r", str(records), "-o", str(out), "--model", str(run / "tard_detector.safetensors"),
                               "--labels", str(root / "labels"), "-f", "csv", "--device", "cpu", "--draw"])
    assert done.exit_code == 0, done.output
    table = done.stdout.splitlines()
    assert table[0] == "source,class,images,instances,detections,P,R,AP50,AP75,AP50:95"
    assert [line.split(",")[:2] for line in table[1:]] == [["tard", c] for c in [*CLASSES, "all"]]
    assert table[-1].split(",")[2] == "2"
    for pair in MSRS_PAIRS:
        data = json.loads((out / f"{pair}.json").read_text())
        assert (data["width"], data["height"], data["source"]) == (640, 480, "vis")
        assert data["image"].endswith(f"vis/{pair}.png")
        assert len((out / f"{pair}.txt").read_text().splitlines()) == len(data["boxes"])
        assert (out / f"{pair}.jpg").is_file()
    wrong = runner.invoke(app, ["detect", "-r", str(records), "-o", str(out), "--model", "tard", "--image", "ir"])
    assert wrong.exit_code == 2 and "--image does not apply" in wrong.stderr
    if not tard_detection.WEIGHTS.is_file():
        missing = runner.invoke(app, ["detect", "-r", str(records), "-o", str(out), "--model", "tard"])
        assert missing.exit_code == 1 and "no tard detection head is packaged" in missing.stderr
