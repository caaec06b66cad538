"""``fuse fuse``: fuse every pair with a registered method (``--list-methods``), one image per pair.

    fuse pairs ir/ vis/ | fuse fuse -m refinefuse -o fused/
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
from stages.methods.registry import METHODS


def _list_methods_and_exit(value: bool) -> None:
    """One line per method: name, kind, the extra it needs (and whether it is installed), its weights, summary."""
    if value:
        from stages.extras import has_extra
        from stages.methods.registry import list_methods

        typer.echo(f"{'method':<12} {'kind':<9} {'extra':<16} {'weights':<23} summary")
        for info in list_methods():
            extra = f"{info.extra} ({'ok' if has_extra(info.extra) else 'missing'})" if info.extra else "-"
            weights = "-" if info.kind == "classical" else "shipped" if info.weights_shipped() else "none: fuse train first"
            reference = f"  [{info.reference}]" if info.reference else ""
            typer.echo(f"{info.name:<12} {info.kind:<9} {extra:<16} {weights:<23} {info.summary}{reference}")
        raise typer.Exit()


Method = opt.choice(METHODS, "--method", "-m", what="fusion method",
                    help="Fusion method: mean, max, laplacian and gff are classical, the others networks; "
                    "--list-methods says what each needs.")
OutFormat = opt.choice(("png", "tif", "jpg"), "--out-format", what="output format", help="Image format of the outputs.")
Resize = opt.choice(("vis", "ir"), "--resize", what="--resize side", optional=True, show_default=False,
                    help="When pair sizes differ: 'vis' resamples IR to the VIS size, 'ir' the reverse.")


@opt.stage_options(batch_size=4, uses_device=lambda own: METHODS[own["method"]].kind != "classical")
def fuse_command(
    method: Method = "laplacian",
    out: opt.OutDir = Path("fused"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    weights: opt.Weights = None,
    out_format: OutFormat = "png",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16 (16 needs png or tif).")] = 8,
    png_compression: Annotated[int, typer.Option(
        "--png-compression", min=0, max=9,
        help="zlib level of PNG output: 1 is the fastest, 9 the smallest files; every level stores the same pixels.")] = 1,
    resize: Resize = None,
    tile: Annotated[int, typer.Option("--tile", help="Learned methods: tile size for large images (0: whole image).")] = 0,
    tile_overlap: Annotated[int, typer.Option("--tile-overlap", help="Learned methods: overlap between tiles, pixels.")] = 32,
    list_methods: Annotated[
        Optional[bool],
        typer.Option("--list-methods", callback=_list_methods_and_exit, is_eager=True, help="List fusion methods and exit."),
    ] = None,
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Fuse every pair and write OUT/<id>.<ext>; print each record with "fused" added.

    RGB visible images give RGB output (the luminance is fused, the visible
    chroma kept); gray gives gray. The output has the input's size.
    """
    from stages.fuse import FuseStage

    if bit_depth not in (8, 16) or bit_depth == 16 and out_format == "jpg":
        raise usage_error("--bit-depth must be 8 or 16, and 16 needs --out-format png or tif")
    reporter = Reporter("fuse", run.quiet, run.verbose)
    source = gather_records(ir, vis, records, reporter)
    options = {"tile": tile, "tile_overlap": tile_overlap} if tile else {}
    require_extra(METHODS[method].extra, f"fuse fuse -m {method}")
    make_stage = functools.partial(FuseStage, out, method, device, weights, out_format, bit_depth, resize, options,
                                   png_compression=png_compression)
    stage = build_stage("fuse", make_stage)
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


def add_commands(app: typer.Typer) -> None:
    app.command("fuse")(fuse_command)
