"""``fuse report``: one static HTML page to browse a comparison of fusion methods.

    fuse report --ir msrs/ir --vis msrs/vis --fused out/max --fused out/tesg -o report/
    cat fused_*.jsonl | fuse report -o report/ --metrics EN,SD,VIF,Qabf
    xdg-open report/index.html
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import gather_compared, usage_error
from fuse_cli.runner import Reporter, run_stage
from stages.metrics import CONVENTIONS, METRIC_NAMES

#: The metrics the papers' tables share, scored unless --metrics says otherwise.
REPORT_METRICS = "EN,SD,SF,AG,MI,SCD,VIF,Qabf,SSIM"
Metrics = Annotated[str, typer.Option("--metrics", autocompletion=opt.complete_list(METRIC_NAMES),
                                      help=f"Comma-separated metrics for the score table, of {', '.join(METRIC_NAMES)}.")]
Convention = opt.choice(CONVENTIONS, "--convention", what="convention", help="Metric convention, as fuse score.")


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.html, scores.png and any converted images.")] = Path("report"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    fused: opt.FusedFolders = None,
    records: opt.RecordsFile = None,
    metrics: Metrics = REPORT_METRICS,
    convention: Convention = "mmif",
    precision: Annotated[int, typer.Option("--precision", min=0, max=10, help="Decimals shown in the tables.")] = 3,
    source_labels: Annotated[str, typer.Option("--source-labels", help="Names of the two sources, e.g. MRI,CT.")] = "IR,VIS",
    workers: opt.Workers = 1,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Write OUT/index.html: the mean score table (sortable), its bar charts, and a gallery per pair.

    The gallery shows IR, VIS and each method's output at full resolution: buttons
    (or keys 1-9) switch between them, two menus and a slider slide between any
    two. Images are referenced where they lie, not copied (TIFF and 16-bit PNG get
    an 8-bit PNG under OUT/images/), so the page opens from disk and stays small;
    keep it beside the images. The URL remembers the view, e.g.
    index.html#sort=Qabf&compare=max,gff&split=40. Scores are computed as fuse
    score computes them; pairs that fail are reported and left out (exit status 1).
    """
    from stages.core.images import atomic_file
    from stages.report.html import browser_url, render_page
    from stages.report.pairs import group_by_pair
    from stages.report.table import MeanTable
    from stages.score import ScoreStage, parse_metric_names, plot_means, score_rows

    labels = tuple(s.strip() for s in source_labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise usage_error(f"--source-labels {source_labels!r}: give two labels, e.g. IR,VIS")
    try:
        names = parse_metric_names(metrics)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    reporter = Reporter("report", quiet, verbose)
    source = list(gather_compared(ir, vis, fused, records, reporter))
    pairs, methods = group_by_pair(source)
    if not pairs:
        raise usage_error("no pairs in the input")

    missing = sorted({p for r in source for p in (r.get("ir"), r.get("vis"), r.get("fused"))
                      if isinstance(p, str) and not Path(p).is_file()})
    for path in missing:
        reporter.error(f"{path}: no such image; left out of the report")
    scored: list[dict] = []
    # As fuse score: --workers N scores in N processes (the stage's pool), batches give each several pairs.
    run_opts = opt.RunOptions(batch_size=8 * workers, workers=1, quiet=quiet, verbose=verbose)
    make_stage = functools.partial(ScoreStage, names, convention, None, None, workers)
    complete = [r for r in source if r.get("fused") and not {r.get("ir"), r.get("vis"), r["fused"]} & set(missing)]
    status = run_stage(make_stage(), complete, run_opts, reporter, emit=scored.append, make_stage=make_stage)
    status = max(status, int(bool(missing)))
    scored = [r for r in scored if "scores" in r]
    table = MeanTable.from_records(scored, names) if scored else None
    pair_scores = {(r["id"], str(r.get("method") or "fused")): r["scores"] for r in scored}

    out.mkdir(parents=True, exist_ok=True)
    urls = {}
    for pair in pairs:
        for key, path in [("ir", pair.ir), ("vis", pair.vis), *pair.fused.items()]:
            if path in missing:
                continue
            try:
                urls[(pair.pair_id, key)] = browser_url(path, out, f"{key}/{pair.pair_id}")
            except (OSError, ValueError) as exc:  # ImageError is a ValueError
                reporter.error(f"pair {pair.pair_id}: {path}: {exc}; left out of the gallery")
                status = 1
    plots = []
    if scored:
        plot_means(score_rows(scored, names, convention), names, out / "scores.png")
        plots.append("scores.png")
    page = render_page(pairs, methods, urls, table, pair_scores, convention, plots, labels, precision)
    with atomic_file(out / "index.html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    if not quiet:
        typer.echo(f"wrote {out / 'index.html'} ({len(pairs)} pairs, {len(methods)} methods)", err=True)
    raise typer.Exit(status)


def add_commands(app: typer.Typer) -> None:
    app.command()(report)
