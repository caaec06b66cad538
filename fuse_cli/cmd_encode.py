"""``fuse encode``: CLIP image (and caption) embeddings, one ``OUT/<id>.safetensors`` per pair.

    fuse pairs ir/ vis/ | fuse encode -o emb/ | fuse fuse -m mgfusion --weights runs/mgfusion.safetensors

The file format is documented in :mod:`stages.encode`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_records, usage_error
from fuse_cli.runner import Reporter, run_stage
from stages.extras import require_extra

@opt.stage_options(batch_size=16)
def encode(
    out: opt.OutDir = Path("emb"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    model: opt.ClipModel = "ViT-B-32",
    pretrained: opt.ClipPretrained = "openai",
    image: Annotated[str, typer.Option("--image", help="Comma-separated record images to embed: ir, vis, fused.")] = "ir,vis",
    tokens: Annotated[bool, typer.Option("--tokens", help="Also store the patch-token maps <image>_tokens (ViT models).")] = False,
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Embed each pair's images (and "caption" text, when present) with CLIP; print each record with "embedding" added.

    Writes OUT/<id>.safetensors holding one (E,) float32 vector per image
    ("ir", "vis", "fused"), "text" for the caption, and with --tokens the
    (Gh, Gw, D) patch-token maps "<image>_tokens".
    """
    require_extra("clip", "fuse encode")
    from stages.encode import IMAGE_KEYS, EncodeStage
    from stages.nets.clip import parse_pretrained

    keys = [key.strip() for key in image.split(",") if key.strip()]
    if not keys or any(key not in IMAGE_KEYS for key in keys):
        raise usage_error(f"--image {image!r}: use a comma-separated list of {', '.join(IMAGE_KEYS)}")
    reporter = Reporter("encode", run.quiet, run.verbose)
    source = gather_records(ir, vis, records, reporter)
    make_stage = functools.partial(EncodeStage, out, model, parse_pretrained(pretrained), keys, tokens, device,
                                   run.batch_size * len(keys))
    stage = build_stage("encode", make_stage)
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


def add_commands(app: typer.Typer) -> None:
    app.command()(encode)
