"""``fuse train -m NAME``: train a network on pairs read like every stage reads them.

Several datasets are joined by concatenating records:

    cat <(fuse pairs roadscene/ir roadscene/vis) <(fuse pairs llvip/ir llvip/vis) \\
      | fuse train -m refinefuse -o runs/ --epochs 50

Unset hyper-parameters take the paper's values, and each method accepts the options and calls
the trainer its spec names (``stages.methods.specs.LEARNED``): an option it does not accept is
a usage error.

The target-aware joint network trains its own detection head (l_ob) with the registration
and fusion losses, starting from the shipped ``tard`` weights:

    fuse pairs msrs/ir msrs/vis | fuse train -m tard --labels msrs/labels -o runs/tard --epochs 50
    fuse pairs msrs/ir msrs/vis | fuse detect --model runs/tard/tard_detector.safetensors --labels msrs/labels

Detection-driven training (refinefuse, dfh-base, tesg, textdfh) adds a frozen YOLO detector's loss on the
fused patches, weighted by ``--det-weight``; labels are looked up by IR file stem:

    fuse pairs msrs/ir msrs/vis | fuse train -m dfh-base --init stages/weights/dfh-base.safetensors \
      --det-model runs/detect/msrs/weights/best.pt --labels msrs/labels --det-weight 0.1 --det-scale 0.5

The text-guided networks compute their guidance per pair while preparing (``salient``
masks, ``advisor`` captions encoded by MiniLM) and cache it with ``--cache DIR``:

    fuse pairs roadscene/ir roadscene/vis | fuse train -m textdfh --base-weights runs/dfh-base.safetensors
    fuse pairs roadscene/ir roadscene/vis | fuse train -m tesg --no-mask-guidance -o runs/tesg-nomask

The checkpoint is ``OUT/<name>.safetensors`` with a JSON model card beside it;
``fuse fuse -m NAME --weights OUT/<name>.safetensors`` uses it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import gather_records, usage_error
from fuse_cli.runner import Reporter
from stages.extras import require_extra
from stages.methods.specs import LEARNED

#: Every learned fusion method trains, and so does the registration network (their specs).
TRAINABLE = tuple(LEARNED)


def _for(option: str) -> str:
    """The start of a per-method option's help: ``"NAME, NAME: "``, the methods whose spec accepts it."""
    return ", ".join(name for name, spec in LEARNED.items() if option in spec.options) + ": "


Method = opt.choice(TRAINABLE, "--method", "-m", what="trainable network", help="Network to train.")
Optimizer = opt.choice(("sgd", "adam"), "--optimizer", what="optimizer", optional=True, show_default=False,
                       help=_for("--optimizer") + "sgd or adam (default: the paper's).")
Schedule = opt.choice(("constant", "cosine"), "--schedule", what="schedule", optional=True, show_default=False,
                      help=_for("--schedule") + "learning rate per epoch: constant, or cosine decay from --lr towards 1 % of it at the "
                      "end of --epochs (default: the paper's; a resumed run keeps its own).")
TextEncoder = opt.choice(("minilm", "clip"), "--text-encoder", what="text encoder",
                         help=_for("--text-encoder") + "minilm (offline, packaged) or clip (open_clip text tower).")


def _records(records: list[dict], reporter: Reporter) -> list[dict]:
    """The usable records as ``{"id", "ir", "vis"}``, in their order; the others reported as errors."""
    kept = []
    for record in records:
        if "error" in record or not isinstance(record.get("ir"), str) or not isinstance(record.get("vis"), str):
            reporter.error(f"pair {record.get('id', '?')}: {record.get('error', 'record lacks ir/vis paths')}; not used")
            continue
        kept.append({"id": record.get("id"), "ir": record["ir"], "vis": record["vis"]})
    return kept


def _pairs(records: list[dict], reporter: Reporter) -> list[tuple[str, str]]:
    """The usable records as ``(ir, vis)`` path tuples."""
    return [(record["ir"], record["vis"]) for record in _records(records, reporter)]


def train(
    method: Method,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the checkpoint and its model card.")] = Path("runs"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    val_ir: Annotated[Optional[Path], typer.Option("--val-ir", help=_for("--val-ir/--val-vis") + "validation IR folder (scored every epoch).", show_default=False)] = None,
    val_vis: Annotated[Optional[Path], typer.Option("--val-vis", help="Validation VIS folder.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: the paper's).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Batch size (default: the paper's).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the paper's).", show_default=False)] = None,
    crop: Annotated[Optional[int], typer.Option("--crop", min=16, help="Random crop size (default: the paper's).", show_default=False)] = None,
    fusion_epochs: Annotated[Optional[int], typer.Option("--fusion-epochs", min=0, help=_for("--fusion-epochs") + "epochs of the tard fusion head after the registration phase, 0 skips (default: the trainer's, 2).", show_default=False)] = None,
    optimizer: Optimizer = None,
    schedule: Schedule = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; runs on CPU are deterministic.")] = 0,
    clip_model: Annotated[str, typer.Option("--clip-model", help=_for("--clip-model") + "open_clip model name.")] = "ViT-B-32",
    pretrained: opt.ClipPretrained = "openai",
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Checkpoint to continue from.", show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help=_for("--init") + "weights to start from (fine-tuning; a fresh optimiser and epoch count, unlike --resume; for register a tard.safetensors or a register.safetensors).", show_default=False)] = None,
    base_weights: Annotated[Optional[Path], typer.Option("--base-weights", help=_for("--base-weights") + "the frozen dfh-base weights it refines (default: the shipped ones).", show_default=False)] = None,
    mask_guidance: Annotated[bool, typer.Option("--mask-guidance/--no-mask-guidance", help=_for("--no-mask-guidance") + "foreground/background mask guidance (MGCA); --no-mask-guidance trains the paper's ablation.")] = True,
    fixed_text: Annotated[Optional[str], typer.Option("--fixed-text", help=_for("--fixed-text") + "one text for every pair instead of the advisor's captions (the fixed-text ablation).", show_default=False)] = None,
    text_encoder: TextEncoder = "minilm",
    cache: Annotated[Optional[Path], typer.Option("--cache", help=_for("--cache") + "folder caching each pair's mask and caption between runs.", show_default=False)] = None,
    det_model: Annotated[Optional[Path], typer.Option("--det-model", help=_for("--det-model") + "a YOLO detector (.pt, or a model YAML; a .pt is a pickle that runs any code it carries: trusted files only) whose loss on the fused image is added to the fusion loss; it stays frozen. Needs --labels.", show_default=False)] = None,
    labels: opt.Labels = None,
    label_classes: opt.LabelClasses = None,
    class_map: opt.ClassMap = None,
    det_weight: Annotated[Optional[float], typer.Option("--det-weight", min=0.0, help="Weight (lambda) of the detection loss: with --det-model the frozen detector's (default 0.1); with -m tard its head's l_ob (default 5, the paper's lambda_3).", show_default=False)] = None,
    det_scale: Annotated[float, typer.Option("--det-scale", min=0.01, help="With --det-model: resize fused patches by this factor before the detector, to match the size it was trained at (imgsz 320 on 640-wide images: 0.5).")] = 1.0,
    low_light: Annotated[float, typer.Option("--low-light", min=0.0, max=1.0, help=_for("--low-light") + "probability of darkening a training sample as at night (VIS gain 0.15-0.6 and gamma 1-1.8, IR gain 0.2-1), so daylight pairs also teach night scenes.")] = 0.0,
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
) -> None:
    """Train a fusion or registration network; writes OUT/<name>.safetensors and OUT/<name>.json."""
    spec = LEARNED[method]
    given = {  # the per-method options given, as the command line spells them (see LearnedMethod.options)
        "--crop": crop is not None, "--resume": resume is not None, "--init": init is not None,
        "--fusion-epochs": fusion_epochs is not None,
        "--optimizer": optimizer is not None, "--schedule": schedule is not None, "--low-light": bool(low_light),
        "--val-ir/--val-vis": (val_ir or val_vis) is not None, "--det-model": det_model is not None,
        "--labels": labels is not None, "--label-classes": label_classes is not None, "--class-map": bool(class_map),
        "--det-weight": det_weight is not None, "--det-scale": det_scale != 1.0, "--fixed-text": fixed_text is not None,
        "--cache": cache is not None, "--text-encoder": text_encoder != "minilm", "--no-mask-guidance": not mask_guidance,
        "--base-weights": base_weights is not None, "--clip-model": clip_model != "ViT-B-32",
        "--pretrained": pretrained != "openai",
    }
    if misplaced := [option for option, on in given.items() if on and option not in spec.options]:
        raise usage_error("; ".join(f"{option} is for {', '.join(n for n, s in LEARNED.items() if option in s.options)}"
                                    f", not -m {method}" for option in misplaced))
    if missing := [option for option in spec.requires if not given[option]]:
        raise usage_error(f"-m {method} {spec.requires[missing[0]]}")
    detection_options = [option for option in ("--labels", "--label-classes", "--class-map") if given[option]]
    if "--det-model" in spec.options and det_model is None and detection_options:
        raise usage_error(f"{', '.join(detection_options)} only apply with --det-model")
    if det_model is not None and labels is None:
        raise usage_error("--det-model needs --labels (the ground truth the detector's loss is computed against)")
    if resume is not None and init is not None:
        raise usage_error("--init starts a new run and --resume continues one: give one of them")
    for option, path in {"--resume": resume, "--init": init, "--base-weights": base_weights}.items():
        if path is not None and not path.is_file():
            raise usage_error(f"{option} {path}: no such {'checkpoint' if option == '--resume' else 'file'}")
    if labels is not None and not labels.exists():
        raise usage_error(f"--labels {labels}: no such folder or file")
    if det_model is not None and not det_model.is_file() and det_model.suffix not in (".yaml", ".yml"):
        raise usage_error(f"--det-model {det_model}: no such file")  # ultralytics finds its own YAMLs
    if extra := ("clip" if text_encoder == "clip" else spec.train_extra):
        require_extra(extra, f"fuse train -m {method}")
    if det_model is not None:
        require_extra("detect", "fuse train --det-model")
    reporter = Reporter("train", quiet)
    kept = _records(list(gather_records(ir, vis, records, reporter)), reporter)
    if not kept:
        raise usage_error("no training pairs")
    device = opt.resolve_device(device)
    log = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    options = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr, "crop": crop}.items() if v is not None}
    options.update(seed=seed, device=device, progress=not quiet and sys.stderr.isatty(), log=log)
    keywords = {  # the trainer's keyword for each per-method option, passed when the method accepts the option
        "--resume": {"resume": resume}, "--init": {"init": init}, "--optimizer": {"optimizer": optimizer},
        "--schedule": {"schedule": schedule},
        "--low-light": {"low_light": low_light}, "--fixed-text": {"fixed_text": fixed_text}, "--cache": {"cache": cache},
        "--text-encoder": {"text_backend": text_encoder}, "--no-mask-guidance": {"mask_guidance": mask_guidance},
        "--base-weights": {"base_weights": base_weights}, "--clip-model": {"clip_model": clip_model},
        "--pretrained": {"pretrained": pretrained},
        "--fusion-epochs": {} if fusion_epochs is None else {"fusion_epochs": fusion_epochs},
    }
    for option in spec.options:
        options.update(keywords.get(option, {}))
    if "--val-ir/--val-vis" in spec.options:
        val = (val_ir or val_vis) is not None
        options["val_pairs"] = _pairs(list(gather_records(val_ir, val_vis, None, reporter)), reporter) if val else None
    if "--det-model" in spec.options:  # a frozen detector's loss on the fused patches
        options.update(_detection(det_model, labels, label_classes, class_map, det_scale, det_weight, device))
    elif "--labels" in spec.options:  # the network's own detection head (tard) reads the labels
        options.update(labels_dir=labels, classes_file=label_classes, class_map=_class_map(class_map))
        options.update({} if det_weight is None else {"det_weight": det_weight})
    data = kept if spec.pairs_as_records else [(record["ir"], record["vis"]) for record in kept]
    try:
        path = spec.train(pairs=data, out=out, **spec.trainer_args, **options)
    except ValueError as exc:
        if "--labels" not in spec.requires:
            raise
        raise usage_error(f"--labels {labels}: {exc}") from None  # unreadable labels, no classes, no pair with boxes
    typer.echo(str(path))
    raise typer.Exit(1 if reporter.errors else 0)


def _class_map(class_map: list[str] | None) -> dict[str, str] | None:
    """``--class-map`` parsed; a usage error when malformed."""
    from stages.detection.evaluation import parse_class_map

    try:
        return parse_class_map(class_map)
    except ValueError as exc:
        raise usage_error(f"--class-map: {exc}") from None


def _detection(det_model: Path | None, labels: Path, label_classes: Path | None, class_map: list[str] | None,
               scale: float, weight: float | None, device: str) -> dict:
    """``{"det_loss", "det_weight"}`` for the training functions (λ 0.1 unless given), or ``{}`` without ``--det-model``."""
    if det_model is None:
        return {}
    from stages.detection.loss import detection_loss_fn

    mapping = _class_map(class_map)
    try:
        det_loss = detection_loss_fn(det_model, labels, device, classes_file=label_classes, class_map=mapping, scale=scale)
    except (OSError, ValueError) as exc:
        raise usage_error(f"--det-model {det_model} / --labels {labels}: {exc}") from None
    if not det_loss.class_index:
        raise usage_error(f"--labels {labels}: no label class matches a class of the detector "
                          f"({', '.join(map(str, det_loss.model.names.values()))}); use --class-map FROM=TO")
    return {"det_loss": det_loss, "det_weight": 0.1 if weight is None else weight}


def add_commands(app: typer.Typer) -> None:
    app.command()(train)
