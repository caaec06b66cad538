"""fuse detect: the evaluator against pycocotools, the label readers, the CLI on MSRS pairs, export + train, and the
detection loss for detection-driven fusion training.

Offline-safe: ultralytics gets a temporary settings folder (YOLO_CONFIG_DIR) and YOLO_OFFLINE=1, models are built
from ``yolov8n.yaml`` (random init, nothing downloaded), boxes are drawn with OpenCV's built-in font.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="fuse-test-yolo-"))
os.environ.setdefault("YOLO_OFFLINE", "1")

from conftest import fuse_cli, records_of, shared

from stages.detection.evaluation import (
    Boxes,
    evaluate,
    format_table,
    load_detections,
    load_ground_truth,
    parse_class_map,
    read_voc_xml,
    read_yolo_txt,
)

MSRS_PAIRS = ["00004N", "00537D", "00055D"]
CLASSES = ["person", "bicycle", "car"]


# --- agreement with pycocotools ----------------------------------------------------------------


def _pycocotools_eval(gt: dict[str, Boxes], dt: dict[str, Boxes], classes: list[str], size=(640, 480)):
    """Per-class (AP50, AP75, AP50:95) and the overall stats[:3] of pycocotools on the same boxes (in pixels)."""
    from pycocotools import cocoeval
    from pycocotools.coco import COCO

    ids = sorted(gt)  # pycocotools orders images by id; our evaluator by id string: the same order
    cat = {c: i + 1 for i, c in enumerate(classes)}
    images = [{"id": k + 1, "file_name": f"{i}.png", "width": size[0], "height": size[1]} for k, i in enumerate(ids)]
    anns, results = [], []
    for k, image in enumerate(ids):
        g = gt[image].to_pixels(size)
        for name, (x1, y1, x2, y2), crowd in zip(g.names, g.xyxy, g.crowd):
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": cat[name], "iscrowd": int(crowd),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        d = dt.get(image)
        if d is not None:
            d = d.to_pixels(size)
            for name, (x1, y1, x2, y2), score in zip(d.names, d.xyxy, d.scores):
                results.append({"image_id": k + 1, "category_id": cat[name], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": v, "name": c} for c, v in cat.items()]}
        coco.createIndex()
        run = cocoeval.COCOeval(coco, coco.loadRes(results), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    precision = run.eval["precision"][:, :, :, 0, 2]  # (IoU, recall, class) at area all, maxDets 100
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k]
        per_class[name] = (p[0].mean(), p[5].mean(), p.mean()) if (p > -1).all() else (np.nan,) * 3
    return per_class, run.stats[:3]


def _assert_agree(gt, dt, classes, size=(640, 480)):
    ours = evaluate(gt, dt, classes=classes)
    theirs, stats = _pycocotools_eval(gt, dt, classes, size)
    for row in ours.classes:
        np.testing.assert_allclose([row.row["AP50"], row.row["AP75"], row.row["AP50:95"]], theirs[row.name], atol=1e-12,
                                   err_msg=f"class {row.name}")
    overall = ours.overall
    np.testing.assert_allclose([overall["AP50:95"], overall["AP50"], overall["AP75"]], stats, atol=1e-12)
    return ours


def _noisy_detections(gt: dict[str, Boxes], rng: np.random.Generator, classes: list[str], scale: float) -> dict[str, Boxes]:
    """Jittered copies of most boxes, dropped boxes, duplicates, wrong classes, false positives, tied scores."""
    dt = {}
    for image, g in gt.items():
        keep = rng.random(len(g)) < 0.8
        xyxy = g.xyxy[keep]
        wh = np.c_[xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]]
        xyxy = xyxy + rng.normal(0, 0.1, xyxy.shape) * np.c_[wh, wh]
        names = [n if rng.random() > 0.1 else str(rng.choice(classes)) for n, k in zip(g.names, keep) if k]
        dup = rng.random(len(xyxy)) < 0.25
        xyxy = np.r_[xyxy, xyxy[dup] + rng.normal(0, 0.02 * scale, (int(dup.sum()), 4))]
        names += [names[i] for i in np.flatnonzero(dup)]
        n_fp = int(rng.integers(0, 4))
        corner = rng.uniform(0, 0.8 * scale, (n_fp, 2))
        xyxy = np.r_[xyxy, np.c_[corner, corner + rng.uniform(0.02 * scale, 0.2 * scale, (n_fp, 2))]]
        names += [str(rng.choice(classes)) for _ in range(n_fp)]
        scores = np.round(rng.random(len(xyxy)), 2)  # two decimals: many ties, where ordering rules matter
        dt[image] = Boxes(names, xyxy, scores, normalised=g.normalised)
    return dt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluator_agrees_with_pycocotools_on_synthetic_boxes(seed):
    rng = np.random.default_rng(seed)
    gt = {}
    for i in range(40):
        n = int(rng.integers(0, 9))
        corner = rng.uniform(0, 500, (n, 2))
        xyxy = np.c_[corner, corner + rng.uniform(3, 150, (n, 2))]
        gt[f"img{i:03d}"] = Boxes([str(c) for c in rng.choice(CLASSES, n)], xyxy, crowd=rng.random(n) < 0.07)
    dt = _noisy_detections(gt, rng, CLASSES, 500.0)
    result = _assert_agree(gt, dt, CLASSES)
    assert 0 < result.overall["AP50:95"] < result.overall["AP50"] < 1


def test_evaluator_agrees_with_pycocotools_on_msrs_labels():
    labels = shared("msrs", "labels")
    truth = load_ground_truth(labels)  # classes.txt found one folder up; double-spaced YOLO lines
    assert truth.classes == CLASSES and len(truth.boxes) == 26
    assert sum(len(b) for b in truth.boxes.values()) == 105
    for seed in (0, 1):
        dt = _noisy_detections(truth.boxes, np.random.default_rng(seed), CLASSES, 1.0)
        result = _assert_agree(truth.boxes, dt, CLASSES)
        assert {c.name: c.instances for c in result.classes} == {
            n: sum(b.names.count(n) for b in truth.boxes.values()) for n in CLASSES}


def test_evaluator_edge_cases():
    gt = {"a": Boxes(["person", "car"], [[10, 10, 50, 90], [100, 100, 200, 150]]), "b": Boxes.empty()}
    perfect = {"a": Boxes(["person", "car"], [[10, 10, 50, 90], [100, 100, 200, 150]], [0.9, 0.8])}
    result = evaluate(gt, perfect, classes=["person", "car", "bicycle"])
    assert result.overall["AP50:95"] == pytest.approx(1.0) and result.overall["P"] == 1 and result.overall["R"] == 1
    assert np.isnan(result.classes[2].row["AP50"])  # no ground truth: shown as '-', left out of the mean
    assert evaluate(gt, {}, classes=["person", "car"]).overall["AP50"] == 0
    fp_only = evaluate(gt, {"b": Boxes(["person", "truck"], [[0, 0, 5, 5], [1, 1, 9, 9]], [0.5, 0.4])})
    assert fp_only.unknown_classes == {"truck": 1} and fp_only.overall["AP50"] == 0
    # VOC difficult ground truth: detecting it is neither rewarded nor punished
    hard = {"a": Boxes(["person", "person"], [[10, 10, 50, 90], [200, 10, 240, 90]], ignore=[False, True])}
    both = {"a": Boxes(["person", "person"], [[10, 10, 50, 90], [200, 10, 240, 90]], [0.9, 0.95])}
    assert evaluate(hard, both).overall["AP50"] == pytest.approx(1.0)
    # P and R at the best-F1 score threshold, not at the lowest score: ranked TP TP FP FP FP TP against 3 objects
    # give (P, R) = (1, 1/3), (1, 2/3), (2/3, 2/3), (1/2, 2/3), (2/5, 2/3), (1/2, 1); F1 peaks at (1, 2/3)
    boxes = [[x, 10, x + 40, 90] for x in (10, 100, 200, 300, 400, 500)]
    three = {"a": Boxes(["person"] * 3, boxes[:3])}
    ranked = {"a": Boxes(["person"] * 6, [boxes[i] for i in (0, 1, 3, 4, 5, 2)], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])}
    row = evaluate(three, ranked).overall
    assert (row["P"], row["R"]) == (1.0, pytest.approx(2 / 3)) and row["detections"] == 6 and row["instances"] == 3
    table = format_table(result.rows("fused"), "markdown")
    assert table.splitlines()[0].startswith("| source | class |") and "| fused | all |" in table


# --- readers -----------------------------------------------------------------------------------


def test_yolo_reader_tolerates_double_spaces_and_scores(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("0  0.5  0.5  0.2  0.4\n\n2\t0.25 0.75   0.1 0.1  \n")
    boxes = read_yolo_txt(path, CLASSES)
    assert boxes.names == ["person", "car"] and boxes.scores is None and boxes.normalised
    np.testing.assert_allclose(boxes.xyxy[0], [0.4, 0.3, 0.6, 0.7])
    path.write_text("1 0.5 0.5 0.2 0.4 0.87\n")
    assert read_yolo_txt(path, CLASSES).scores.tolist() == [0.87]
    path.write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ValueError, match="class 7"):
        read_yolo_txt(path, CLASSES)


def test_voc_reader_and_class_map():
    boxes = read_voc_xml(shared("m3fd", "labels", "00000.xml"))
    assert boxes.size == (1024, 768) and "People" in boxes.names
    np.testing.assert_allclose(boxes.xyxy[0], [46, 372, 82, 478])
    mapped = boxes.renamed(parse_class_map(["People=person", "Car=car"]))
    assert "person" in mapped.names and "People" not in mapped.names
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_class_map(["People"])
    llvip = load_ground_truth(shared("llvip", "labels"))
    assert llvip.classes == ["person"] and len(llvip.boxes) == 9


def test_coco_ground_truth_and_results_round_trip(tmp_path):
    gt = {"010001": Boxes(["person", "car"], [[10, 20, 60, 120], [300, 200, 420, 260]]),
          "010002": Boxes(["person"], [[5, 5, 30, 70]])}
    coco = {"images": [{"id": 7, "file_name": "010001.jpg", "width": 640, "height": 480},
                       {"id": 9, "file_name": "sub/010002.jpg", "width": 640, "height": 480}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}], "annotations": []}
    for image_id, key in ((7, "010001"), (9, "010002")):
        for name, (x1, y1, x2, y2) in zip(gt[key].names, gt[key].xyxy):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": 1 if name == "person" else 3, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    results = [{"image_id": 7, "category_id": 1, "bbox": [12, 20, 48, 100], "score": 0.9},
               {"image_id": 9, "category_id": 1, "bbox": [100, 100, 20, 20], "score": 0.8}]
    (tmp_path / "res.json").write_text(json.dumps(results))
    truth = load_ground_truth(tmp_path / "gt.json")
    assert truth.classes == ["person", "car"] and set(truth.boxes) == {"010001", "010002"}
    found = load_detections(tmp_path / "res.json", coco=truth.coco)
    assert set(found) == {"010001", "010002"} and found["010001"].names == ["person"]
    result = evaluate(truth.boxes, found, classes=truth.classes)
    direct = evaluate(gt, {"010001": Boxes(["person"], [[12, 20, 60, 120]], [0.9]),
                           "010002": Boxes(["person"], [[100, 100, 120, 120]], [0.8])})
    assert result.overall == direct.overall


# --- the detection loss ------------------------------------------------------------------------


def test_patch_affine_follows_random_crop_batch():
    from stages.detection.loss import patch_affine
    from stages.training.loop import random_crop_batch

    full = np.zeros((48, 64), np.float32)
    full[10, 40] = 1.0  # a marker pixel at x=40, y=10
    for seed in range(8):
        rng = np.random.default_rng(seed)
        ir, _ = random_crop_batch([(full, full)], 32, np.random.default_rng(seed))
        # replay random_crop_batch's draws to know the crop, flips and turn
        y, x = int(rng.integers(0, 48 - 32 + 1)), int(rng.integers(0, 64 - 32 + 1))
        hflip, vflip, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(0, 4))
        centre = patch_affine((64, 48), x, y, 32, hflip, vflip, k) @ [40.5 / 64, 10.5 / 48, 1]
        patch = ir[0, 0].numpy()
        if patch.max() > 0:
            row, col = np.unravel_index(patch.argmax(), patch.shape)
            np.testing.assert_allclose(centre, [col + 0.5, row + 0.5], err_msg=f"seed {seed}")
        else:
            assert not (0 <= centre[0] < 32 and 0 <= centre[1] < 32)


def test_detection_loss_gradient_reaches_the_fused_image_not_the_detector():
    import torch

    from stages.detection.loss import detection_loss_fn, patch_affine

    torch.manual_seed(0)
    det_loss = detection_loss_fn("yolov8n.yaml", shared("msrs", "labels"), "cpu")
    fused = torch.rand(2, 1, 96, 128, requires_grad=True)
    affines = [patch_affine((640, 480), 300, 200, 128), patch_affine((640, 480), 0, 0, 128, hflip=True, rot90=1)]
    loss = det_loss(fused[:, :, :, :], ["00537D", "00004N"], [a[:, :] for a in affines])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in det_loss.model.parameters())
    whole = det_loss(torch.rand(1, 3, 120, 160), ["00537D"])  # whole image, padded to the stride
    assert torch.isfinite(whole)
    # whole-image targets are the labels themselves (480x640 needs no padding)
    label = np.array([[float(v) for v in line.split()] for line in (shared("msrs", "labels") / "00537D.txt").read_text().splitlines()])
    batch = det_loss.targets(["00537D"], (480, 640), (1.0, 1.0), None)
    np.testing.assert_allclose(batch["bboxes"].numpy(), label[:, 1:], atol=1e-5)
    assert batch["cls"].view(-1).tolist() == label[:, 0].tolist()
    half = detection_loss_fn(det_loss.model, shared("msrs", "labels"), "cpu", scale=0.5)
    assert torch.isfinite(half(torch.rand(1, 1, 480, 640), ["00537D"]))


# --- the command line on real pairs ------------------------------------------------------------


@pytest.fixture(scope="module")
def msrs_fused(tmp_path_factory) -> tuple[Path, Path]:
    """Three MSRS pairs fused by per-pixel max of the luminances, and their records file."""
    from stages.core.images import luminance, read_image, write_image

    root = shared("msrs")
    folder = tmp_path_factory.mktemp("msrs_fused")
    lines = []
    for pair in MSRS_PAIRS:
        ir, vis = root / "ir" / f"{pair}.png", root / "vis" / f"{pair}.png"
        write_image(folder / f"{pair}.png", np.maximum(luminance(read_image(ir)), luminance(read_image(vis))))
        lines.append(json.dumps({"id": pair, "ir": str(ir), "vis": str(vis), "fused": str(folder / f"{pair}.png")}))
    (folder / "fused.jsonl").write_text("\n".join(lines) + "\n")
    return folder, folder / "fused.jsonl"


def test_draw_boxes_outlines_each_box_in_its_class_colour():
    from ultralytics.utils.plotting import colors

    from stages.detect import draw_boxes

    grey = np.full((120, 160, 3), 128, np.uint8)
    drawn = draw_boxes(grey, [{"class": "person", "class_id": 0, "score": 0.5, "xyxy": [40.3, 50.2, 120.6, 110.1]}])
    assert (grey == 128).all()  # a copy is drawn on
    assert tuple(drawn[80, 40]) == tuple(drawn[80, 120]) == colors(0, bgr=True)  # left and right edges, mid-height
    assert (drawn[60:100, 50:110] == 128).all() and (drawn[55:, 125:] == 128).all()  # inside and beside: untouched
    assert (drawn[:50, 40:90] != 128).any()  # the label above the box


def test_detect_cli_end_to_end(msrs_fused, tmp_path):
    _, records = msrs_fused
    labels = shared("msrs", "labels")
    out = tmp_path / "det"
    done = fuse_cli("detect", "-r", records, "-o", out, "--model", "yolov8n.yaml", "--imgsz", "160", "--draw",
                    "--conf", "0.0001", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    rows = records_of(done.stdout)  # stdout carries records only: ultralytics' log lines go to stderr
    assert [r["id"] for r in rows] == MSRS_PAIRS
    import cv2

    for row in rows:
        assert set(row) >= {"id", "fused", "detections", "counts"} and isinstance(row["counts"], dict)
        data = json.loads(Path(row["detections"]).read_text())
        assert (data["width"], data["height"]) == (640, 480) and data["source"] == "fused"
        for box in data["boxes"]:
            assert set(box) == {"class", "class_id", "score", "xyxy"} and box["score"] >= 0.0001
        txt = (out / f"{row['id']}.txt").read_text().splitlines()
        assert len(txt) == len(data["boxes"]) and all(len(line.split()) == 6 for line in txt)
        drawn = cv2.imread(str(out / f"{row['id']}.jpg"))
        assert drawn is not None and drawn.shape == (480, 640, 3)
    assert not list(out.glob(".*part*"))  # no temporaries left behind

    from typer.testing import CliRunner

    from fuse_cli.app import app

    runner = CliRunner()
    # evaluate the files just written, without a model; pixel json vs normalised YOLO labels
    result = runner.invoke(app, ["detect", "--detections", str(out), "--labels", str(labels), "-r", str(records), "-f", "csv"])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0] == "source,class,images,instances,detections,P,R,AP50,AP75,AP50:95"
    assert [line.split(",")[1] for line in table[1:]] == [*CLASSES, "all"]
    assert table[-1].split(",")[2] == "3"  # three images evaluated, not the 26 labelled ones
    # the same, from the YOLO txt files with a score column: the same numbers
    for txt_only in (tmp_path / "txt",):
        txt_only.mkdir()
        for path in out.glob("*.txt"):
            (txt_only / path.name).write_text(path.read_text())
        again = runner.invoke(app, ["detect", "--detections", str(txt_only), "--labels", str(labels), "-r", str(records), "-f", "csv"])
        assert again.exit_code == 0, again.output
        assert [line.split(",")[2:] for line in again.stdout.splitlines()] == [line.split(",")[2:] for line in table]
    # run the model and evaluate in one go (outputs of the same recipe exist: skipped and re-read); a skipped run
    # still evaluates
    both = runner.invoke(app, ["detect", "-r", str(records), "-o", str(out), "--model", "yolov8n.yaml", "--imgsz", "160",
                               "--draw", "--conf", "0.0001", "--labels", str(labels), "--device", "cpu", "-f", "markdown"])
    assert both.exit_code == 0, both.output
    assert "| fused | all | 3 |" in both.stdout


def test_detect_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from fuse_cli.app import app

    runner = CliRunner()
    done = runner.invoke(app, ["detect", "--records", str(tmp_path / "none.jsonl"), "--model", "yolov8n.yaml"])
    assert done.exit_code == 2 and "no such records file" in done.stderr
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "x", "fused": str(tmp_path / "missing.png")}) + "\n")
    done = runner.invoke(app, ["detect", "-r", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope.pt")])
    assert done.exit_code == 1 and "no such file" in done.stderr
    done = runner.invoke(app, ["detect", "-r", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "o"), "--model", "yolov8n.yaml",
                               "--imgsz", "64", "--device", "cpu"])
    assert done.exit_code == 1 and "pair x" in done.stderr and "missing.png" in done.stderr
    assert records_of(done.stdout)[0]["error"].startswith("pair x")
    done = runner.invoke(app, ["detect", "--detections", str(tmp_path), "--records", str(tmp_path / "r.jsonl")])
    assert done.exit_code == 2 and "needs --labels" in done.stderr
    done = runner.invoke(app, ["detect", "--model", "yolov8n.yaml", "--classes", "zebra,person", "-r", str(tmp_path / "r.jsonl")])
    assert done.exit_code == 2 and "'zebra' is not a class" in done.stderr


def test_export_writes_a_dataset_ultralytics_trains_on(msrs_fused, tmp_path):
    """Export three fused MSRS pairs and train yolov8n.yaml one epoch at imgsz 64 (about 15 s on 2 CPU cores)."""
    import yaml
    from typer.testing import CliRunner

    from fuse_cli.app import app

    _, records = msrs_fused
    dataset = tmp_path / "dataset"
    runner = CliRunner()
    result = runner.invoke(app, ["detect", "export", "-r", str(records), "--labels", str(shared("msrs", "labels")),
                                 "-o", str(dataset), "--split", "0.67", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(dataset.resolve() / "data.yaml")
    data = yaml.safe_load((dataset / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == 3
    train, val = sorted((dataset / "images" / "train").iterdir()), sorted((dataset / "images" / "val").iterdir())
    assert len(train) == 2 and len(val) == 1
    for image in train + val:
        label = dataset / "labels" / image.parent.name / f"{image.stem}.txt"
        lines = [line.split() for line in label.read_text().splitlines()]
        assert lines and all(len(f) == 5 and f[0] in "012" and all(0 <= float(v) <= 1 for v in f[1:]) for f in lines)
    again = runner.invoke(app, ["detect", "export", "-r", str(records), "--labels", str(shared("msrs", "labels")),
                                "-o", str(dataset), "--split", "0.67", "--seed", "1"])
    assert again.exit_code == 0 and sorted((dataset / "images" / "train").iterdir()) == train  # same seed, same split

    trained = runner.invoke(app, ["detect", "train", "--data", str(dataset / "data.yaml"), "--model", "yolov8n.yaml",
                                  "--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu",
                                  "--project", str(tmp_path / "runs"), "--name", "t", "--set", "val=False"])
    assert trained.exit_code == 0, trained.output
    best = Path(trained.stdout.strip().splitlines()[-1])
    assert best.is_file() and best.suffix == ".safetensors" and best.with_suffix(".pt").is_file()
    import torch

    from stages.detect import is_tard_model
    from stages.nets.yolo import load_yolo

    assert not is_tard_model(best)
    safe, pickled = load_yolo(best), load_yolo(best.with_suffix(".pt"))
    assert safe.names == dict(enumerate(CLASSES))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    same = [m.predict(image, imgsz=64, conf=0.0, verbose=False)[0].boxes.data for m in (safe, pickled)]
    assert torch.allclose(same[0], same[1], atol=1e-3)
