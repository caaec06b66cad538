"""Quality of the ``salient`` mask (``stages.methods.guidance.salient_mask``) where it can be measured.

* TNO (``../shared/data/tno_masks``): 20 binary salient-target masks drawn on the
  IR image — intersection over union per image and the mean.
* MSRS (``../shared/data/msrs/labels``, YOLO boxes of person/bicycle/car):
  IoU of the mask with the union of the filled boxes, and the box hit rate
  (fraction of boxes with at least 10 % of their area in the mask).
* LLVIP (9 labelled pairs, ``person`` VOC boxes): the same box measures. LLVIP is
  the set the thresholds were chosen on, so its row is not a held-out score.

Both variants are measured: warm targets alone (``contrast=False``) and
RefineFuse's full rule (warm targets ∪ high IR contrast near them).

    python benchmarks/bench_masks.py            # prints a markdown table
    python benchmarks/bench_masks.py --per-image
    python benchmarks/bench_masks.py --limit 3  # the first 3 images of each set
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.images import luminance, read_image  # noqa: E402
from stages.methods.guidance import read_mask, salient_mask  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIT_FRACTION = 0.1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _find(folder: Path, stem: str) -> Path:
    return next(p for p in folder.iterdir() if p.stem == stem)


def yolo_boxes(path: Path, shape) -> list[tuple[int, int, int, int]]:
    h, w = shape
    boxes = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5:
            _, cx, cy, bw, bh = map(float, parts[:5])
            boxes.append((int((cx - bw / 2) * w), int((cy - bh / 2) * h), int(np.ceil((cx + bw / 2) * w)),
                          int(np.ceil((cy + bh / 2) * h))))
    return boxes


def voc_boxes(path: Path) -> list[tuple[int, int, int, int]]:
    root = ET.parse(path).getroot()
    return [tuple(int(float(obj.find("bndbox").find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
            for obj in root.iter("object")]


def box_scores(mask: np.ndarray, boxes) -> tuple[float, int, int]:
    filled = np.zeros_like(mask)
    hits = 0
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(0, x0), max(0, y0)
        filled[y0:y1, x0:x1] = True
        region = mask[y0:y1, x0:x1]
        hits += int(region.size > 0 and region.mean() >= HIT_FRACTION)
    return iou(mask, filled), hits, len(boxes)


def load(folder: Path, stem: str):
    ir = luminance(read_image(_find(folder / "ir", stem)))
    vis = luminance(read_image(_find(folder / "vis", stem)))
    return ir, vis


def measure(contrast: bool, per_image: bool, limit: int | None = None) -> dict[str, str]:
    rows = {}
    tno = DATA / "tno_masks"
    if (tno / "mask").is_dir():
        scores = []
        for path in sorted((tno / "mask").iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)[:limit]:
            ir, vis = load(tno, path.stem)
            value = iou(salient_mask(ir, vis, contrast=contrast), read_mask(path, ir.shape))
            scores.append(value)
            if per_image:
                print(f"tno {path.stem}: IoU {value:.3f}", file=sys.stderr)
        rows[f"TNO masks ({len(scores)}, IoU)"] = f"{np.mean(scores):.3f} (median {np.median(scores):.3f})"
    for name, folder, labels, reader in (
        ("MSRS boxes ({})", DATA / "msrs", DATA / "msrs" / "labels", "yolo"),
        ("LLVIP boxes ({}, tuning set)", DATA / "llvip", DATA / "llvip" / "labels", "voc"),
    ):
        if not labels.is_dir():
            continue
        ious, hits, total = [], 0, 0
        label_files = [p for p in sorted(labels.iterdir()) if p.suffix in (".txt", ".xml") and p.name != "classes.txt"]
        for path in label_files[:limit]:
            ir, vis = load(folder, path.stem)
            boxes = yolo_boxes(path, ir.shape) if reader == "yolo" else voc_boxes(path)
            if not boxes:
                continue
            value, hit, count = box_scores(salient_mask(ir, vis, contrast=contrast), boxes)
            ious.append(value)
            hits, total = hits + hit, total + count
            if per_image:
                print(f"{name} {path.stem}: IoU {value:.3f} hits {hit}/{count}", file=sys.stderr)
        rows[name.format(len(ious))] = f"IoU {np.mean(ious):.3f}, boxes hit {hits}/{total} ({hits / max(total, 1):.0%})"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-image", action="store_true", help="also print each image's score on stderr")
    parser.add_argument("--limit", type=int, help="use only the first N images of each set")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: the mask benchmark needs ../shared/data")
    targets = measure(False, args.per_image, args.limit)
    full = measure(True, args.per_image, args.limit)
    print("| data | warm targets only | salient (targets ∪ IR contrast) |")
    print("|---|---|---|")
    for key in targets:
        print(f"| {key} | {targets[key]} | {full[key]} |")


if __name__ == "__main__":
    main()
