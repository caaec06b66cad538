"""Detection-ready datasets from fused images, and training a detector on them with ultralytics.

:func:`export_dataset` writes the layout ultralytics reads::

    OUT/images/train/<id>.<ext>   OUT/labels/train/<id>.txt   (class cx cy w h, normalised)
    OUT/images/val/<id>.<ext>     OUT/labels/val/<id>.txt
    OUT/data.yaml                 path, train, val, nc, names

from records (``fused`` images by default) and labels in any format
:mod:`stages.detection.evaluation` reads (YOLO txt + classes file, VOC xml, COCO
json). The train/val split is a seeded shuffle, so the same seed gives the same
split. :func:`train_detector` then trains an ultralytics model on ``data.yaml``.
"""
from __future__ import annotations

import contextlib
import glob
import random
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.core.images import atomic_file
from stages.core.records import id_problem, shown_id
from stages.detection.evaluation import AnnotationError, Boxes, load_ground_truth


@dataclass
class ExportSummary:
    data_yaml: Path
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    boxes: int = 0
    errors: list[str] = field(default_factory=list)  # one line per record that was left out


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def yolo_lines(boxes: Boxes, classes: list[str], size: tuple[int, int] | None) -> list[str]:
    """``class cx cy w h`` lines, clipped to the image; boxes of classes outside ``classes`` are an error."""
    if len(boxes) == 0:
        return []
    norm = boxes.to_normalised(size or boxes.size)
    xyxy = np.clip(norm.xyxy, 0.0, 1.0)
    lines = []
    for name, (x1, y1, x2, y2) in zip(norm.names, xyxy):
        if name not in classes:
            raise AnnotationError(f"class {name!r} is not in the class list ({', '.join(classes)}); use --class-map")
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        lines.append(f"{classes.index(name)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}\n")
    return lines


def split_ids(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then the first ``round(fraction × n)`` for training (at least one of each when n ≥ 2 and fraction < 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--split {fraction}: use a fraction in (0, 1]")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    if fraction == 1:
        return sorted(order), []
    n_train = min(max(round(fraction * len(order)), 1), len(order) - 1) if len(order) >= 2 else len(order)
    return sorted(order[:n_train]), sorted(order[n_train:])


def export_dataset(records: Iterable[dict], labels: str | Path, out: str | Path, *, split: float = 0.8, seed: int = 0,
                   image: str = "fused", classes_file: str | Path | None = None,
                   class_map: Mapping[str, str] | None = None, link: bool = False,
                   log: Callable[[str], None] | None = None) -> ExportSummary:
    """Write an ultralytics dataset (``images/``, ``labels/``, ``data.yaml``) under ``out``.

    With ``split == 1`` every image trains and ``val`` points at the training
    images (ultralytics needs a validation set). ``link`` hard-links the images
    instead of copying them where the file system allows.
    """
    log = log or (lambda line: None)
    out = Path(out).resolve()
    chosen: dict[str, Path] = {}
    errors = []
    for record in records:
        pair = str(record.get("id", "?"))
        value = record.get(image)
        if "error" in record or not isinstance(value, str):
            errors.append(f"pair {pair}: {record.get('error', f'record has no {image!r} path')}; not exported")
        elif problem := id_problem(record.get("id")):
            errors.append(f"pair {shown_id(record.get('id'))}: unusable id: it {problem}; not exported")
        elif pair in chosen:
            errors.append(f"pair {pair}: a second record with this id; not exported")
        elif not Path(value).is_file():
            errors.append(f"pair {pair}: {value}: no such file; not exported")
        else:
            chosen[pair] = Path(value)
    gt = load_ground_truth(labels, ids=list(chosen), classes_file=classes_file, class_map=class_map)
    for pair in gt.missing:
        log(f"pair {pair}: no label file in {labels}; exported as an image without objects")
    classes = list(gt.classes or [])
    train, val = split_ids(list(chosen), split, seed)
    boxes_written, written = 0, {"train": [], "val": []}
    for subset, ids in (("train", train), ("val", val)):
        other = "val" if subset == "train" else "train"
        for pair in ids:
            source = chosen[pair]
            try:
                lines = yolo_lines(gt.boxes[pair], classes, gt.boxes[pair].size or image_size(source))
            except (AnnotationError, ValueError, OSError) as exc:
                errors.append(f"pair {pair}: {exc}; not exported")
                continue
            for stale in [*(out / "images" / other).glob(f"{glob.escape(pair)}.*"), out / "labels" / other / f"{pair}.txt"]:
                stale.unlink(missing_ok=True)  # from an earlier export with another split
            target = out / "images" / subset / f"{pair}{source.suffix.lower()}"
            with atomic_file(target) as tmp:
                try:
                    if not link:
                        raise OSError
                    tmp.hardlink_to(source)
                except OSError:
                    shutil.copyfile(source, tmp)
            with atomic_file(out / "labels" / subset / f"{pair}.txt") as tmp:
                tmp.write_text("".join(lines))
            boxes_written += len(lines)
            written[subset].append(pair)
    exported_train, exported_val = written["train"], written["val"]
    import yaml

    data = {"path": str(out), "train": "images/train", "val": "images/val" if exported_val else "images/train",
            "nc": len(classes), "names": dict(enumerate(classes))}
    with atomic_file(out / "data.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return ExportSummary(out / "data.yaml", exported_train, exported_val, classes, boxes_written, errors)


def train_detector(data: str | Path, model: str | Path = "yolov8n.yaml", *, epochs: int = 100, imgsz: int = 640,
                   device: str = "cpu", batch: int = 16, workers: int = 0, project: str | Path = "runs/detect",
                   name: str = "train", seed: int = 0, plots: bool = False, exist_ok: bool = False,
                   **extra) -> Path:
    """Train an ultralytics detector on ``data`` (a ``data.yaml``); returns ``best.safetensors``.

    Ultralytics writes ``best.pt`` (a pickle); the same weights are saved beside it as
    ``best.safetensors`` (:func:`stages.nets.yolo.save_yolo`), which loads without running code.

    ``model`` is a model YAML (training from scratch) or ``.pt`` weights (fine-tuning).
    ``plots`` is off by default: ultralytics' plots fetch a font, which fails offline.
    Other keyword arguments pass through to ``YOLO.train`` (``lr0``, ``mosaic``, ``patience``, …).
    """
    from stages.nets.yolo import load_yolo, save_yolo

    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such file")
    yolo = load_yolo(model)
    with contextlib.redirect_stdout(sys.stderr):
        yolo.train(data=str(data.resolve()), epochs=epochs, imgsz=imgsz, device=device, batch=batch, workers=workers,
                   project=str(Path(project).resolve()), name=name, seed=seed, plots=plots, exist_ok=exist_ok, **extra)
    trainer = yolo.trainer
    best = Path(trainer.best)
    best = best if best.is_file() else Path(trainer.last)
    return save_yolo(load_yolo(best), best.with_suffix(".safetensors"))  # our own .pt, just written
