"""``fuse mask``: a binary target mask per pair (``OUT/<id>.png``, record key ``mask``).

    fuse pairs ir/ vis/ | fuse mask -o masks/                       # RefineFuse's salient rule
    fuse pairs ir/ vis/ | fuse caption --keyword person -o cap/ | fuse mask --backend text --keyword person -o masks/
    ... | fuse detect -o det/ | fuse mask --backend boxes --classes person -o masks/
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_records, usage_error
from fuse_cli.runner import Reporter, run_stage
from stages.extras import require_extra


#: stages.mask.BACKENDS, named here so --help imports no backend.
BACKENDS = ("salient", "text", "boxes")
Backend = opt.choice(BACKENDS, "--backend", what="mask backend", help=(
    "salient (IR targets + high IR contrast), text (CLIP dense similarity to --keyword) or boxes (the record's detections)."))


@opt.stage_options(batch_size=4)
def mask(
    backend: Backend = "salient",
    out: opt.OutDir = Path("masks"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    keyword: Annotated[Optional[str], typer.Option("--keyword", help="text: the target word, e.g. person.", show_default=False)] = None,
    contrast: Annotated[bool, typer.Option("--contrast/--targets-only", help="salient: add RefineFuse's high-IR-contrast positions near the targets, or keep the warm targets only.")] = True,
    classes: Annotated[Optional[str], typer.Option("--classes", help="boxes: comma-separated class names to keep (default all).", show_default=False)] = None,
    min_score: Annotated[float, typer.Option("--min-score", help="boxes: ignore detections scoring below this.")] = 0.0,
    model: opt.ClipModel = "ViT-B-32",
    pretrained: opt.ClipPretrained = "openai",
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Write a binary mask OUT/<id>.png (255 = target) per pair and add "mask" to the record."""
    from stages.mask import MaskStage

    if backend == "text" and not keyword:
        raise usage_error("--backend text needs --keyword WORD (e.g. person)")
    if backend == "text":
        require_extra("clip", "fuse mask --backend text")
    reporter = Reporter("mask", run.quiet, run.verbose)
    source = gather_records(ir, vis, records, reporter)
    wanted = {c.strip() for c in classes.split(",") if c.strip()} if classes else None
    make_stage = functools.partial(MaskStage, out, backend, keyword=keyword, contrast=contrast, classes=wanted,
                                   min_score=min_score, clip_model=model, pretrained=pretrained,
                                   device=device if backend == "text" else "cpu")
    stage = build_stage("mask", make_stage)
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


def add_commands(app: typer.Typer) -> None:
    app.command()(mask)
