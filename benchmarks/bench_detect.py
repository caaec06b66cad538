"""Detection on MSRS: one detector trained here, mAP on IR, VIS and every fusion method, and detection-driven training.

    python benchmarks/bench_detect.py [--data ../shared/data] [--epochs 150] [--imgsz 320] [--fuse-epochs 4]
                                      [--tard-epochs 20]
                                      [--work build/bench/detect] [--cache build/bench/fused] [--limit N]

Trained models and the images fused with them are reused by a re-run: each lives under
``--work`` in a folder named by its settings (pairs, epochs, image size), so other settings
train anew. Everything goes through the commands a user types (``fuse detect export``, ``fuse detect train``,
``fuse fuse``, ``fuse train``, ``fuse detect --labels``), run as subprocesses:

1. Split the 26 MSRS pairs by id: every third pair (sorted) is held out for evaluation,
   the rest train.
2. Train one detector, YOLOv8n from its YAML (no pretrained weights can be fetched here),
   on the training pairs' IR images (``labels_ir``) and VIS images (``labels_vis``): a
   detector that has seen both modalities but no fused image, so no fusion method is
   favoured.
3. Evaluate it on the held-out pairs' IR, VIS and fused images of every method (the fused
   images of ``bench_quality.py``'s cache are reused, others are fused now), always
   against the fused-image labels ``labels/`` (every object visible in either camera):
   P, R, AP50, AP75, AP50:95 over all classes, COCO definitions.
4. ``tard``'s own detection head (the target-aware paper's l_ob): ``fuse train -m tard
   --labels`` on the training pairs for ``--tard-epochs`` epochs (joint network fine-tuned
   from the shipped weights, new head), then ``fuse detect --model tard_detector.safetensors``
   on the held-out IR + VIS pairs.
5. Detection-driven fusion training: ``dfh-base`` fine-tuned from the shipped weights on
   the training pairs for ``--fuse-epochs`` epochs, once with the frozen detector's loss
   (``--det-model --labels --det-weight 0.1``) and once without (the control: same
   crops, same seed), both then evaluated like the others.

With 17 training images per modality and a detector trained from scratch, the absolute
numbers are low and a few boxes move them; read them as a check that the whole path
works on real labelled pairs, not as a ranking of fusion methods.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench_quality import made_otherwise, weights_stamp
from stages.fuse import FuseStage  # noqa: E402 (bench_quality puts the project on the path)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FUSE = str(Path(sys.executable).with_name("fuse"))
FUSION_METHODS = ("mean", "max", "laplacian", "gff", "refinefuse", "dfh-base", "tard", "tesg", "textdfh")
COLUMNS = ("P", "R", "AP50", "AP75", "AP50:95")


def fuse(*args: str | Path, stdout=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run one ``fuse`` command; its stderr goes to ours, failure raises."""
    return subprocess.run([FUSE, *map(str, args)], check=True, text=True, stdout=stdout,
                          env={**os.environ, "YOLO_OFFLINE": "1"})


def write_records(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def split_pairs(root: Path, limit: int | None) -> tuple[list[dict], list[dict]]:
    """Training and held-out records (every third id, sorted, is held out)."""
    ids = sorted(p.stem for p in (root / "ir").glob("*.png"))[:limit]
    records = [{"id": i, "ir": str(root / "ir" / f"{i}.png"), "vis": str(root / "vis" / f"{i}.png")} for i in ids]
    return [r for k, r in enumerate(records) if k % 3], records[::3]


def train_detector(root: Path, records: Path, pairs: int, work: Path, epochs: int, imgsz: int) -> Path:
    """YOLOv8n from scratch on the training pairs' IR and VIS images (``records``); returns ``best.pt``."""
    run = f"ir_vis-{pairs}pairs-{epochs}ep-{imgsz}px"
    best = work / "runs" / run / "weights" / "best.pt"
    if best.is_file():
        return best
    for modality in ("ir", "vis"):
        fuse("detect", "export", "-r", records, "--image", modality, "--labels", root / f"labels_{modality}",
             "--label-classes", root / "classes.txt", "--split", "1", "-o", work / f"dataset_{modality}", "-q")
    names = yaml.safe_load((work / "dataset_ir" / "data.yaml").read_text())["names"]
    both = [str(work / f"dataset_{m}" / "images" / "train") for m in ("ir", "vis")]
    data = work / "data.yaml"
    data.write_text(yaml.safe_dump({"train": both, "val": both, "names": names}, sort_keys=False))
    trained = fuse("detect", "train", "--data", data, "--model", "yolov8n.yaml", "--epochs", epochs, "--imgsz", imgsz,
                   "--batch", 8, "--project", work / "runs", "--name", run, "--exist-ok", "--device", "cpu",
                   stdout=subprocess.PIPE).stdout.strip().splitlines()[-1]
    return Path(trained)


def fused_records(held_out: list[dict], method: str, folder: Path, weights: Path | None = None) -> list[dict]:
    """Held-out records with ``fused`` from ``folder`` (fused now where missing, or all when another recipe made them)."""
    args = ["fuse", "-m", method, "-o", folder, "-r", write_records(folder / "pairs.jsonl", held_out), "-q"]
    stale = made_otherwise(FuseStage(folder, method, "cpu", weights), held_out)
    fuse(*args, *(["--weights", weights] if weights else []), *(["--overwrite"] if stale else []))
    return [{**r, "fused": str(folder / f"{r['id']}.png")} for r in held_out]


def evaluate(records: list[dict], name: str, root: Path, work: Path, *model: str | Path) -> dict:
    """The "all" row of ``fuse detect --labels`` on ``records`` with the given model options."""
    report = work / "eval" / f"{name}.jsonl"
    report.parent.mkdir(parents=True, exist_ok=True)
    fuse("detect", "-r", write_records(work / "eval" / f"{name}.records.jsonl", records), *model,
         "--labels", root / "labels", "--label-classes", root / "classes.txt",
         "--format", "json", "--report", report, "-o", work / "eval" / name, "--overwrite", "-q")
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return next(r for r in rows if r.get("class") == "all")


def yolo(detector: Path, image: str, imgsz: int) -> tuple:
    """``fuse detect`` options running the trained YOLO on one image of each record."""
    return ("--model", detector, "--image", image, "--imgsz", imgsz)


def detection_driven(root: Path, records: Path, detector: Path, work: Path, epochs: int) -> dict[str, Path]:
    """``dfh-base`` fine-tuned with and without the frozen detector's loss: ``{row name: run folder}``."""
    runs = {}
    for name, kind, extra in (("dfh-base + det loss", "det", ["--det-model", detector, "--labels", root / "labels",
                                                              "--label-classes", root / "classes.txt",
                                                              "--det-weight", "0.1", "--det-scale", "0.5"]),
                              ("dfh-base fine-tuned (control)", "control", [])):
        out = work / "fusion" / (f"{kind}-{epochs}ep" + (f"-{detector.parents[1].name}" if extra else ""))
        if not (out / "dfh-base.safetensors").exists():
            fuse("train", "-m", "dfh-base", "-r", records, "--init", ROOT / "stages/weights/dfh-base.safetensors",
                 "--epochs", epochs, "--seed", 0, "--device", "cpu", "-o", out, "-q", *extra)
        runs[name] = out
    return runs


def tard_head(root: Path, records: Path, held_out: list[dict], work: Path, epochs: int) -> dict:
    """Train ``tard``'s detection head on the training pairs (``records``); evaluate it on the held-out pairs.

    The head trains on the packaged ``tard`` network, so its folder is named by those weights too.
    """
    out = work / f"tard-{epochs}ep-{weights_stamp('tard')}"
    head = out / "tard_detector.safetensors"
    if not head.exists():
        fuse("train", "-m", "tard", "-r", records, "--labels", root / "labels", "--label-classes", root / "classes.txt",
             "--epochs", epochs, "--seed", 0, "--device", "cpu", "-o", out, "-q")
    return evaluate(held_out, out.name, root, work, "--model", head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=150, help="detector training epochs")
    parser.add_argument("--imgsz", type=int, default=320, help="detector image size")
    parser.add_argument("--fuse-epochs", type=int, default=4, help="epochs of the detection-driven fine-tune")
    parser.add_argument("--tard-epochs", type=int, default=20, help="epochs of tard's detection head")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "detect")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "fused" / "msrs")
    parser.add_argument("--limit", type=int, help="use only the first N pairs (smoke run)")
    args = parser.parse_args(argv)
    root = args.data / "msrs"
    if not (root / "labels").is_dir():
        sys.exit(f"bench_detect: {root / 'labels'} not found (needs ../shared/data)")
    train, held_out = split_pairs(root, args.limit)
    records = write_records(args.work / "train.jsonl", train)
    epochs, tard_epochs, fuse_epochs = (2, 1, 1) if args.limit else (args.epochs, args.tard_epochs, args.fuse_epochs)
    detector = train_detector(root, records, len(train), args.work, epochs, args.imgsz)
    rows = {name.upper(): evaluate(held_out, name, root, args.work, *yolo(detector, name, args.imgsz))
            for name in ("ir", "vis")}
    for method in FUSION_METHODS:
        fused = fused_records(held_out, method, args.cache / method)
        rows[method] = evaluate(fused, method, root, args.work, *yolo(detector, "fused", args.imgsz))
    rows["tard (own head, ir + vis)"] = tard_head(root, records, held_out, args.work, tard_epochs)
    for name, run in detection_driven(root, records, detector, args.work, fuse_epochs).items():
        fused = fused_records(held_out, "dfh-base", args.work / "fused" / run.name, run / "dfh-base.safetensors")
        rows[name] = evaluate(fused, run.name, root, args.work, *yolo(detector, "fused", args.imgsz))
    print(f"YOLOv8n from scratch, {epochs} epochs at imgsz {args.imgsz} on the IR and VIS images of {len(train)} MSRS "
          f"pairs; evaluated on {len(held_out)} held-out pairs against `labels/`, all classes "
          f"(tard's head: {tard_epochs} epochs; detection-driven rows: {fuse_epochs} fine-tuning epochs on the training "
          "pairs)\n")
    print("| input | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("-" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
