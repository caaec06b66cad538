"""``fuse train -m NAME``: train a network on pairs read like every stage reads them.

Several datasets are joined by concatenating records:

    cat <(fuse pairs roadscene/ir roadscene/vis) <(fuse pairs llvip/ir llvip/vis) \\
      | fuse train -m refinefuse -o runs/ --epochs 50

Unset hyper-parameters take the paper's values (``stages.nets.learned_methods.NETWORKS``).
The checkpoint is ``OUT/<name>.safetensors`` with a JSON model card beside it;
``fuse fuse -m NAME --weights OUT/<name>.safetensors`` uses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import gather_records, usage_error
from fuse_cli.runner import Reporter


def _pairs(records: list[dict], reporter: Reporter) -> list[tuple[str, str]]:
    pairs = []
    for record in records:
        if "error" in record or not isinstance(record.get("ir"), str) or not isinstance(record.get("vis"), str):
            reporter.error(f"pair {record.get('id', '?')}: {record.get('error', 'record lacks ir/vis paths')}; not used")
            continue
        pairs.append((record["ir"], record["vis"]))
    return pairs


def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Network to train: refinefuse, dfh-base, mgfusion, register.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the checkpoint and its model card.")] = Path("runs"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    val_ir: Annotated[Optional[Path], typer.Option("--val-ir", help="Validation IR folder (scored every epoch).", show_default=False)] = None,
    val_vis: Annotated[Optional[Path], typer.Option("--val-vis", help="Validation VIS folder.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: the paper's).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Batch size (default: the paper's).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the paper's).", show_default=False)] = None,
    crop: Annotated[Optional[int], typer.Option("--crop", min=16, help="Random crop size (default: the paper's).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; runs on CPU are deterministic.")] = 0,
    clip_model: Annotated[str, typer.Option("--clip-model", help="mgfusion: open_clip model name.")] = "ViT-B-32",
    pretrained: Annotated[str, typer.Option("--pretrained", help="mgfusion: open_clip tag (downloaded by open_clip), a local checkpoint, or none.")] = "openai",
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Checkpoint to continue from.", show_default=False)] = None,
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
) -> None:
    """Train a fusion or registration network; writes OUT/<name>.safetensors and OUT/<name>.json."""
    from stages.nets.learned_methods import NETWORKS

    trainable = [*NETWORKS, "mgfusion", "register"]
    if method not in trainable:
        raise usage_error(f"-m {method!r}: trainable networks are {', '.join(trainable)}")
    if resume is not None and not resume.is_file():
        raise usage_error(f"--resume {resume}: no such checkpoint")
    reporter = Reporter("train", quiet)
    pairs = _pairs(list(gather_records(ir, vis, records, reporter)), reporter)
    if not pairs:
        raise usage_error("no training pairs")
    log = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    settings = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr, "crop": crop}.items() if v is not None}
    common = {"seed": seed, "device": opt.resolve_device(device), "resume": resume, "progress": not quiet, "log": log}
    if method == "register":
        from stages.register_training import train_register

        path = train_register([{"ir": a, "vis": b} for a, b in pairs], out, **{"epochs": 30, **settings}, **common)
    elif method == "mgfusion":
        from stages.encode import parse_pretrained
        from stages.mgfusion_training import train_mgfusion

        path = train_mgfusion(pairs, out, clip_model=clip_model, pretrained=parse_pretrained(pretrained), **settings, **common)
    else:
        from stages.train import train as train_network

        paper = {k: NETWORKS[method].defaults[k] for k in ("epochs", "batch_size", "lr", "crop")}
        val_pairs = _pairs(list(gather_records(val_ir, val_vis, None, reporter)), reporter) if val_ir or val_vis else None
        path = train_network(method, pairs, out, **{**paper, **settings}, val_pairs=val_pairs, **common)
    typer.echo(str(path))
    raise typer.Exit(1 if reporter.errors else 0)


def register(app: typer.Typer) -> None:
    app.command()(train)
