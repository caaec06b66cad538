"""``fuse detect``: YOLO on fused (or IR / VIS) images, mAP against labels, datasets, training.

    fuse detect -o det/ --model yolov8n.pt < fused.jsonl > detected.jsonl
    fuse detect -o det/ --labels msrs/labels --format markdown < fused.jsonl
    fuse detect --detections other_detector/ --labels msrs/labels          (no model: score existing boxes)
    fuse pairs msrs/ir msrs/vis | fuse detect --model runs/tard/tard_detector.safetensors -o det/ --labels msrs/labels
    fuse detect export -r fused.jsonl --labels msrs/labels -o dataset/ --split 0.8
    fuse detect train --data dataset/data.yaml --model yolov8n.yaml --epochs 30 --imgsz 320

One command group: ``fuse detect`` with options runs the detector (and, with
``--labels``, evaluates); ``export`` and ``train`` are its two subcommands,
so every detection verb is found under ``fuse detect --help``.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_records, usage_error
from stages.core.records import parse_records, read_records_file
from fuse_cli.runner import Reporter, print_record, run_stage
from stages.extras import require_extra

FORMATS = ("table", "markdown", "csv", "json")
TableFormat = opt.choice(FORMATS, "--format", "-f", what="format", help="Evaluation table: table, markdown, csv or json (JSON Lines).")
EVAL_CONF = 0.001  # the confidence floor detectors are evaluated at (ultralytics val, YOLOv5 val)

Model = Annotated[str, typer.Option("--model", help="YOLO weights: a .safetensors from fuse detect train (loads no code), a .pt path (a pickle: loading it runs any code it carries, so give only files you trust), a model YAML (random init), or a name ultralytics downloads (yolov8n.pt) where there is internet. Or the tard network's own detection head: a tard_detector.safetensors you trained (fuse train -m tard --labels DIR; no head is packaged) with its tard.safetensors beside it; it reads each record's ir and vis, registers the IR inside the network and gives boxes on the VIS grid (--image, --imgsz and --half do not apply).")]
ImageKey = opt.choice(("fused", "ir", "vis"), "--image", what="image", help="Which image of each record: fused, ir or vis.")

detect_app = typer.Typer(
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    subcommand_metavar="[export|train]",
)


def ultralytics_device(name: str) -> str:
    """Our device names (``cpu``, ``cuda``, ``cuda:N``) in ultralytics' spelling (``cpu``, ``0``, ``N``)."""
    device = opt.resolve_device(name)
    if device == "cuda":
        return "0"
    return device.split(":", 1)[1] if device.startswith("cuda:") else device


def _class_map(items: list[str] | None) -> dict[str, str]:
    from stages.detection.evaluation import parse_class_map

    try:
        return parse_class_map(items)
    except ValueError as exc:
        raise usage_error(f"--class-map: {exc}") from None


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"fuse {command}: error: {exc}", err=True)
    return typer.Exit(1)


@detect_app.callback(invoke_without_command=True)
@opt.stage_options(batch_size=8)
def detect(
    ctx: typer.Context,
    out: opt.OutDir = Path("detections"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    model: Model = "yolov8n.pt",
    image: ImageKey = "fused",
    conf: Annotated[
        float | None,
        typer.Option("--conf", min=0.0, max=1.0, help=f"Confidence threshold (default 0.25; {EVAL_CONF} with --labels, as detectors are evaluated). Counts and --draw use --conf when given, else 0.25.", show_default=False),
    ] = None,
    iou: Annotated[float, typer.Option("--iou", min=0.0, max=1.0, help="IoU threshold of non-maximum suppression.")] = 0.7,
    classes: Annotated[str | None, typer.Option("--classes", help="Keep only these detector classes, by name or index: person,car or 0,2.", show_default=False)] = None,
    imgsz: Annotated[int, typer.Option("--imgsz", min=32, help="Inference size (pixels, longest side).")] = 640,
    draw: Annotated[bool, typer.Option("--draw", help="Also write OUT/<id>.jpg with the boxes drawn.")] = False,
    half: Annotated[bool, typer.Option("--half", help="Half precision (CUDA only).")] = False,
    labels: opt.Labels = None,
    label_classes: opt.LabelClasses = None,
    class_map: opt.ClassMap = None,
    detections: Annotated[
        str | None,
        typer.Option("--detections", help="Evaluate existing detections instead of running a model: a folder of YOLO txt with a score column or of fuse json, a COCO results json, a .jsonl of records from fuse detect, or - for such records on stdin.", show_default=False),
    ] = None,
    fmt: TableFormat = "table",
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write the evaluation table to this file and keep printing records on stdout.", show_default=False),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Text of the 'source' column (default: --image, or the detections' name).", show_default=False)] = None,
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Run a YOLO detector on each record's image; with --labels, print its mAP table.

    Writes OUT/<id>.txt and OUT/<id>.json (OUT/<id>.jpg with --draw) and prints
    each record with "detections" and "counts" added. With --labels, print precision, recall, AP50, AP75 and AP50:95 per class and
    overall (COCO's definitions; the same numbers pycocotools gives) instead of
    the records. Subcommands: export (an ultralytics dataset), train (a detector).
    """
    if ctx.invoked_subcommand is not None:
        return
    mapping = _class_map(class_map)
    reporter = Reporter("detect", run.quiet, run.verbose)
    if detections is not None:
        if labels is None:
            raise usage_error("--detections needs --labels to evaluate against")
        require_extra("detect", "fuse detect --detections")
        status = _evaluate_existing(detections, labels, label_classes, mapping, fmt, report, name, ir, vis, records, reporter)
        raise typer.Exit(status)

    require_extra("detect", "fuse detect")
    from stages.detect import DetectStage, TardDetectStage, is_tard_model

    tard = is_tard_model(model)
    if tard and image != "fused":
        raise usage_error(f"--image {image}: --model {model} reads each record's ir and vis; --image does not apply")
    if labels is not None and not labels.exists():
        raise usage_error(f"--labels {labels}: no such folder or file")
    source = gather_records(ir, vis, records, reporter)
    threshold = conf if conf is not None else (EVAL_CONF if labels is not None else 0.25)
    show_conf = conf if conf is not None else 0.25
    if tard:
        make_stage = functools.partial(TardDetectStage, out, model, threshold, iou, classes, opt.resolve_device(device),
                                       draw, show_conf=show_conf)
    else:
        make_stage = functools.partial(DetectStage, out, model, image, threshold, iou, classes, imgsz,
                                       ultralytics_device(device), draw, half, show_conf=show_conf)
    stage = build_stage("detect", make_stage)
    if labels is None:
        raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))
    done: list[dict] = []

    def emit(record: dict) -> None:
        done.append(record)
        if report is not None:
            print_record(record, run.rs)

    status = run_stage(stage, source, run, reporter, emit=emit, make_stage=make_stage)
    if run.dry_run:
        raise typer.Exit(status)
    status = max(status, _evaluate_records(done, labels, label_classes, mapping, fmt, report,
                                           name or ("tard" if tard else image), stage.image, reporter))
    raise typer.Exit(status)


def _image_sizes(records: list[dict], key: str) -> dict[str, tuple[int, int]]:
    """Lazily-read ``(width, height)`` per id, for mixing pixel and normalised boxes."""
    from stages.detection.dataset import image_size

    class Sizes(dict):
        def get(self, pair, default=None):
            if pair not in self:
                path = paths.get(pair)
                try:
                    self[pair] = image_size(Path(path)) if path else None
                except OSError:
                    self[pair] = None
            return dict.get(self, pair) or default

    paths = {str(r["id"]): r.get(key) for r in records if isinstance(r.get(key), str)}
    return Sizes()


def _evaluate_records(done: list[dict], labels: Path, label_classes: Path | None, mapping: dict[str, str], fmt: str,
                      report: Path | None, source_name: str, image_key: str, reporter: Reporter) -> int:
    from stages.detection.evaluation import AnnotationError, read_detections_json

    detections, status = {}, 0
    for record in done:
        path = record.get("detections")
        if "error" in record or not isinstance(path, str):
            reporter.warn(f"pair {record.get('id', '?')}: no detections ({record.get('error', 'record lacks detections')}); left out of the evaluation")
            continue
        try:
            detections[str(record["id"])] = read_detections_json(path).renamed(mapping)
        except AnnotationError as exc:
            reporter.error(str(exc))
            status = 1
    if not detections:
        reporter.error("nothing to evaluate")
        return 1
    return max(status, _evaluate(detections, list(detections), labels, label_classes, mapping, fmt, report, source_name,
                                 _image_sizes(done, image_key), reporter))


def _evaluate_existing(detections: str, labels: Path, label_classes: Path | None, mapping: dict[str, str], fmt: str,
                       report: Path | None, name: str | None, ir: Path | None, vis: Path | None, records: Path | None,
                       reporter: Reporter) -> int:
    from stages.detection.evaluation import AnnotationError, load_detections, load_ground_truth, read_class_names

    if detections == "-" or detections.endswith(".jsonl"):
        if detections != "-" and not Path(detections).is_file():
            raise usage_error(f"--detections {detections}: no such file")
        stream = parse_records(sys.stdin) if detections == "-" else read_records_file(Path(detections))
        done = list(stream)
        key = next((r.get("source") for r in done if isinstance(r.get("source"), str)), "fused")
        return _evaluate_records(done, labels, label_classes, mapping, fmt, report, name or ("records" if detections == "-" else Path(detections).stem), key, reporter)
    path = Path(detections)
    if not path.exists():
        raise usage_error(f"--detections {detections}: no such folder or file")
    sizes: dict = {}
    image_ids = None
    if ir is not None or vis is not None or records is not None:
        given = list(gather_records(ir, vis, records, reporter))
        image_ids = [str(r["id"]) for r in given if "error" not in r]
        sizes = _image_sizes(given, "fused" if any("fused" in r for r in given) else "vis")
    try:
        gt = load_ground_truth(labels, ids=image_ids, classes_file=label_classes, class_map=mapping)
        names = read_class_names(label_classes) if label_classes else gt.classes
        found = load_detections(path, names=names, coco=gt.coco, known_ids=gt.boxes, class_map=mapping)
    except AnnotationError as exc:
        reporter.error(str(exc))
        return 1
    return _evaluate(found, image_ids, labels, label_classes, mapping, fmt, report, name or path.stem, sizes, reporter, gt=gt)


def _evaluate(detections: dict, image_ids: list[str] | None, labels: Path, label_classes: Path | None,
              mapping: dict[str, str], fmt: str, report: Path | None, source_name: str, sizes, reporter: Reporter,
              gt=None) -> int:
    from stages.core.images import atomic_file
    from stages.detection.evaluation import AnnotationError, evaluate, format_table, load_ground_truth, names_by_index

    try:
        if gt is None:
            gt = load_ground_truth(labels, ids=image_ids, classes_file=label_classes, class_map=mapping)
        for pair in gt.missing:
            reporter.warn(f"pair {pair}: no label file in {labels}; evaluated as an image without objects")
        extra = sorted(set(detections) - set(gt.boxes))
        if extra and image_ids is None:
            reporter.warn(f"{len(extra)} image(s) with detections have no labels and are not evaluated: {', '.join(extra[:5])}")
        detections = names_by_index(detections, gt.classes)  # a YAML-built detector names its classes 0, 1, …
        result = evaluate(gt.boxes, detections, classes=gt.classes, image_ids=image_ids, sizes=sizes)
    except AnnotationError as exc:
        reporter.error(str(exc))
        return 1
    for cls, count in sorted(result.unknown_classes.items()):
        reporter.warn(f"{count} detection(s) of class {cls!r}, which the labels do not have; ignored (map names with --class-map)")
    text = format_table(result.rows(source_name), fmt)
    if report is None:
        sys.stdout.write(text)
    else:
        with atomic_file(report) as tmp:
            tmp.write_text(text)
    return 0


@detect_app.command("export")
def export(
    labels: opt.Labels = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder: images/, labels/, data.yaml.")] = Path("dataset"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    image: ImageKey = "fused",
    split: Annotated[float, typer.Option("--split", min=0.0, max=1.0, help="Fraction of images for training; the rest validate (1: all train, val = train).")] = 0.8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val shuffle.")] = 0,
    label_classes: opt.LabelClasses = None,
    class_map: opt.ClassMap = None,
    link: Annotated[bool, typer.Option("--link", help="Hard-link images instead of copying them (same file system).")] = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Write an ultralytics-ready dataset from records' images and their labels; print the data.yaml path."""
    require_extra("detect", "fuse detect export")
    from stages.detection.dataset import export_dataset
    from stages.detection.evaluation import AnnotationError

    if labels is None:
        raise usage_error("fuse detect export needs --labels (the ground truth it writes the dataset from)")
    if not labels.exists():
        raise usage_error(f"--labels {labels}: no such folder or file")
    mapping = _class_map(class_map)
    reporter = Reporter("detect export", quiet, verbose)
    source = gather_records(ir, vis, records, reporter)
    try:
        summary = export_dataset(source, labels, out, split=split, seed=seed, image=image, classes_file=label_classes,
                                 class_map=mapping, link=link, log=reporter.warn)
    except (AnnotationError, ValueError) as exc:
        raise _fail("detect export", exc) from None
    for line in summary.errors:
        reporter.error(line)
    if not quiet:
        typer.echo(f"fuse detect export: {len(summary.train)} train + {len(summary.val)} val images, {summary.boxes} boxes, "
                   f"classes {', '.join(summary.classes)}", err=True)
    typer.echo(str(summary.data_yaml))
    raise typer.Exit(1 if summary.errors or not summary.train else 0)


@detect_app.command("train")
def train(
    data: Annotated[Path, typer.Option("--data", help="The dataset's data.yaml (from fuse detect export).")],
    model: Annotated[str, typer.Option("--model", help="Start from: a model YAML (yolov8n.yaml: from scratch) or .pt weights (fine-tune; yolov8n.pt downloads where there is internet; a .pt is a pickle that runs any code it carries: trusted files only).")] = "yolov8n.pt",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs.")] = 100,
    imgsz: Annotated[int, typer.Option("--imgsz", min=32, help="Training image size (pixels).")] = 640,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Batch size.")] = 16,
    project: Annotated[Path, typer.Option("--project", help="Folder of training runs.")] = Path("runs/detect"),
    name: Annotated[str, typer.Option("--name", help="Run name: weights go to PROJECT/NAME/weights/best.safetensors (and ultralytics' best.pt).")] = "train",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    loader_workers: Annotated[int, typer.Option("--loader-workers", min=0, help="Data-loading processes (0: in the main process).")] = 0,
    plots: Annotated[bool, typer.Option("--plots", help="Let ultralytics draw its plots (fetches a font: needs internet once).")] = False,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Reuse PROJECT/NAME instead of making NAME2, NAME3, ….")] = False,
    extra: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other ultralytics training argument, KEY=VALUE (repeat): --set lr0=0.005 --set mosaic=0.", show_default=False),
    ] = None,
    device: opt.Device = "auto",
) -> None:
    """Train a YOLO detector on a dataset with ultralytics; print the path of the best weights.

    They are written twice: ultralytics' best.pt (a pickle) and best.safetensors,
    which fuse detect --model and fuse train --det-model load without running code.
    """
    require_extra("detect", "fuse detect train")
    import yaml

    from stages.nets.yolo import ModelError
    from stages.detection.dataset import train_detector

    if not data.is_file():
        raise usage_error(f"--data {data}: no such file")
    settings = {}
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise usage_error(f"--set {item!r}: write KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    try:
        best = train_detector(data, model, epochs=epochs, imgsz=imgsz, device=ultralytics_device(device), batch=batch,
                              workers=loader_workers, project=project, name=name, seed=seed, plots=plots,
                              exist_ok=exist_ok, **settings)
    except (ModelError, FileNotFoundError) as exc:
        raise _fail("detect train", exc) from None
    typer.echo(str(best))


def add_commands(app: typer.Typer) -> None:
    app.add_typer(detect_app, name="detect")
