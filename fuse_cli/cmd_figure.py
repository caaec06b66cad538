"""``fuse figure``: the qualitative comparison figure — pairs × [IR, VIS, each method] with zoomed insets.

    fuse figure --ir tno/ir --vis tno/vis --fused out/gff --fused out/tesg --ids 01,07 --zoom auto -o fig.pdf
    cat fused_*.jsonl | fuse figure --zoom 120,80,64,64 --zoom auto -o fig.png --dpi 600
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import gather_compared, usage_error
from fuse_cli.runner import Reporter


def figure(
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    fused: opt.FusedFolders = None,
    records: opt.RecordsFile = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure file: .png, .pdf or .svg (vector text).")] = Path("figure.png"),
    ids: Annotated[Optional[str], typer.Option("--ids", help="Comma-separated pair ids, one row each, in this order (default: the first 4 pairs).", show_default=False)] = None,
    zoom: Annotated[
        Optional[list[str]],
        typer.Option("--zoom", help="A region to box and enlarge: x,y,w,h in pixels, or auto (where the methods' edges and texture differ most; with one method, where it and the sources differ). Repeat for more regions.", show_default=False),
    ] = None,
    zoom_size: Annotated[Optional[int], typer.Option("--zoom-size", min=8, help="Side of an auto region in pixels (default: a fifth of the shorter image side).", show_default=False)] = None,
    inset: Annotated[float, typer.Option("--inset", min=0.1, max=0.6, help="Inset side as a fraction of the image's shorter side.")] = 0.42,
    dpi: Annotated[int, typer.Option("--dpi", min=50, max=2400, help="Resolution of a PNG, and of the images embedded in a PDF or SVG.")] = 300,
    width: Annotated[float, typer.Option("--width", min=1.0, help="Figure width in inches (7: a two-column page, 3.5: one column).")] = 7.0,
    font_size: Annotated[float, typer.Option("--font-size", min=4.0, help="Column labels, points (shrunk where a label would not fit its column).")] = 7.0,
    source_labels: Annotated[str, typer.Option("--source-labels", help="Labels of the two source columns, e.g. MRI,CT.")] = "IR,VIS",
    quiet: opt.Quiet = False,
) -> None:
    """Draw pairs (rows) × IR, VIS and each method's output (columns), zoom regions boxed and enlarged in a corner.

    Reads records from `fuse fuse` (several methods' records concatenated), or
    --ir/--vis with one --fused folder per method. Each zoom region has one colour on
    every image; its inset goes to the corner that covers neither another region nor
    the warm IR targets. Colour images stay in colour, gray stays gray. Pairs dropped
    because a folder lacks their file are named on stderr and give exit status 1.
    """
    from stages.core.images import ImageError, read_image
    from stages.report.figure import FORMATS, FigureRow, draw_figure, parse_box, plan_zooms
    from stages.report.pairs import group_by_pair

    if out.suffix.lower() not in FORMATS:
        raise usage_error(f"{out}: write the figure as .png, .pdf or .svg")
    labels = [s.strip() for s in source_labels.split(",")]
    if len(labels) != 2 or not all(labels):
        raise usage_error(f"--source-labels {source_labels!r}: give two labels, e.g. IR,VIS")
    zooms = zoom or []
    try:
        boxes = [parse_box(z) for z in zooms if z != "auto"]
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    reporter = Reporter("figure", quiet=quiet)
    pairs, methods = group_by_pair(list(gather_compared(ir, vis, fused, records, reporter)))
    if ids:
        wanted = [i.strip() for i in ids.split(",") if i.strip()]
        by_id = {p.pair_id: p for p in pairs}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise usage_error(f"--ids: no pair {', '.join(missing)} in the input")
        pairs = [by_id[i] for i in wanted]
    else:
        pairs = pairs[:4]
    if not pairs:
        raise usage_error("no pairs in the input")
    rows, plans = [], []
    try:
        for pair in pairs:
            lacking = [m for m in methods if m not in pair.fused]
            if lacking:
                raise ValueError(f"pair {pair.pair_id}: no fused image of {', '.join(lacking)}")
            images = [read_image(p) for p in (pair.ir, pair.vis, *(pair.fused[m] for m in methods))]
            if len({img.shape[:2] for img in images}) != 1:
                raise ValueError(f"pair {pair.pair_id}: its images differ in size")
            row = FigureRow(pair.pair_id, images)
            plans.append(plan_zooms(row, boxes, auto=zooms.count("auto"), size=zoom_size, fraction=inset))
            rows.append(row)
        draw_figure(rows, [*labels, *methods], plans, out, dpi=dpi, width=width, font_size=font_size, fraction=inset)
    except (ImageError, ValueError, OSError) as exc:
        typer.echo(f"fuse figure: error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not quiet:
        for row, plan in zip(rows, plans):
            regions = "; ".join(f"{','.join(map(str, z.box))} ({z.corner})" for z in plan)
            typer.echo(f"{row.pair_id}: {regions or 'no zoom'}", err=True)
        typer.echo(f"wrote {out}", err=True)
    raise typer.Exit(1 if reporter.errors else 0)  # pairs dropped: a folder lacked files


def add_commands(app: typer.Typer) -> None:
    app.command()(figure)
