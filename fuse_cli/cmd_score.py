"""``fuse score``: fusion metrics per image and a mean row per method, as CSV, JSON Lines or tables.

    fuse pairs ir/ vis/ | fuse fuse -m laplacian -o fused/ | fuse score --format markdown
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_compared, usage_error
from fuse_cli.runner import Reporter, run_stage
from stages.metrics import CONVENTION_HELP, CONVENTIONS, METRIC_NAMES, REGISTRATION_METRICS


Metrics = Annotated[Optional[str], typer.Option(
    "--metrics", show_default=False, autocompletion=opt.complete_list((*METRIC_NAMES, *REGISTRATION_METRICS)),
    help=f"Comma-separated metric names (default: all): {', '.join(METRIC_NAMES)}; with --grid-gt or --aligned "
    f"also {', '.join(REGISTRATION_METRICS)}, then the default.")]
Convention = opt.choice(CONVENTIONS, "--convention", what="convention", help="Reference implementation to reproduce; see below.")
ScoreFormat = opt.choice(("csv", "json", "table", "markdown", "latex"), "--format", "-f", what="format", help=(
    "csv, json (JSON Lines) or table: every image and the mean rows; markdown or latex (booktabs): the table of means, "
    "one row per method, best bold, second underlined, arrows for each metric's direction."))
GroupBy = opt.choice(("dataset",), "--group-by", what="grouping", optional=True, show_default=False, help=(
    "markdown, latex: 'dataset' gives each dataset its own means: the record's dataset key, else the folder holding "
    "its IR folder (tno/ir/x.png: tno)."))
GroupLayout = opt.choice(("columns", "tables"), "--group-layout", what="layout", help=(
    "With --group-by: 'columns' (datasets side by side as column groups) or 'tables' (one table each)."))


def score(
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    fused: opt.FusedFolders = None,
    records: opt.RecordsFile = None,
    metrics: Metrics = None,
    convention: Convention = "mmif",
    fmt: ScoreFormat = "csv",
    precision: Annotated[int, typer.Option("--precision", min=0, max=10, help="markdown, latex: decimals shown (marks compare the shown values, so equal cells tie).")] = 3,
    group_by: GroupBy = None,
    group_layout: GroupLayout = "columns",
    grid_gt: Annotated[Optional[Path], typer.Option("--grid-gt", help="Registration: folder of ground-truth deformations <id>.npy (the dataset convention); adds EPE.", show_default=False)] = None,
    aligned: Annotated[Optional[Path], typer.Option("--aligned", help="Registration: folder of aligned IR images; adds MAE and NCC of the record's ir.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw a bar chart per metric (one bar per method) to this PNG.", show_default=False)] = None,
    workers: opt.Workers = 1,
    shard: opt.Shard = None,
    engine: opt.Engine = "local",
    concurrency: opt.Concurrency = 1,
    num_gpus: opt.NumGPUs = 0.0,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    from stages.score import ScoreStage, format_rows, image_row, mean_rows, parse_metric_names, plot_means, score_rows

    if group_by and fmt not in ("markdown", "latex"):
        raise usage_error("--group-by needs --format markdown or latex")
    opt.check_engine(engine)
    try:
        names = parse_metric_names(metrics, registration=bool(grid_gt or aligned))
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    reporter = Reporter("score", quiet, verbose)
    source = gather_compared(ir, vis, fused, records, reporter)
    scored: list[dict] = []
    # --workers N scores pairs in N processes (the stage's own pool); batches give each several pairs.
    run_opts = opt.RunOptions(batch_size=8 * workers if workers > 1 else 1, workers=1, shard=opt.parse_shard(shard), quiet=quiet,
                              verbose=verbose, engine=engine, concurrency=concurrency, num_gpus=num_gpus)
    make_stage = functools.partial(ScoreStage, names, convention, grid_gt, aligned,
                                   workers if engine == "local" else 1)
    streaming = fmt in ("csv", "json")  # a row per pair as it is scored, the mean rows at the end

    def keep(record: dict) -> None:
        scored.append(record)
        if streaming and "scores" in record:
            sys.stdout.write(format_rows([image_row(record, convention)], names, fmt, header=False))
            sys.stdout.flush()

    if fmt == "csv":
        sys.stdout.write(format_rows([], names, fmt))
    status = run_stage(build_stage("score", make_stage), source, run_opts, reporter, emit=keep, make_stage=make_stage)
    if streaming:
        sys.stdout.write(format_rows(mean_rows(scored, names, convention), names, fmt, header=False))
    elif fmt == "table":
        sys.stdout.write(format_rows(score_rows(scored, names, convention), names, fmt))
    else:
        from stages.report.table import MeanTable, latex_table, markdown_table

        to_text = latex_table if fmt == "latex" else markdown_table
        sys.stdout.write(to_text(MeanTable.from_records(scored, names, group_by), convention, precision, group_layout))
    if plot is not None:
        plot_means(score_rows(scored, names, convention), names, plot)
    raise typer.Exit(status)


score.__doc__ = f"""Fusion metrics per image and a mean row per method.

Reads records with ir, vis and fused (from `fuse fuse`), or --ir/--vis with one
or more --fused folders to compare methods side by side. --workers N scores
N pairs at a time in N processes; the values and the row order do not change.
csv and json print each pair's row as soon as it is scored, the mean rows at
the end, so a pipe shows scores while earlier stages still run.

{CONVENTION_HELP}
"""


def add_commands(app: typer.Typer) -> None:
    app.command()(score)
