"""The ``fuse`` command: one thin Typer command per stage.

Commands parse options, gather records (stdin, ``--records FILE`` or
``--ir DIR --vis DIR``), build the stage from a picklable factory
(``functools.partial``) and hand the stage, the records and the factory (which
``--engine ray`` actors build their own stage with) to
:func:`fuse_cli.runner.run_stage`. Exit status: 0 success, 1 some pair
failed, 2 usage error.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import __version__
from fuse_cli import options as opt
from fuse_cli.examples import add_examples
from fuse_cli.inputs import gather_compared, gather_records, report_pairing, usage_error
from stages.core.records import pair_directories, write_records
from fuse_cli.runner import Reporter, run_stage
from stages.extras import MissingExtra, require_extra
from stages.metrics import CONVENTION_HELP, CONVENTIONS, METRIC_NAMES, REGISTRATION_METRICS
from stages.nets.checkpoint import WeightsError
from stages.methods.registry import METHODS

app = typer.Typer(
    name="fuse",
    help="Multimodal image fusion (infrared + visible, medical) as composable shell stages.\n\n"
    "Example: fuse pairs ir/ vis/ | fuse fuse -m laplacian -o fused/ | fuse score",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fuse {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Multimodal image fusion toolchain."""


@app.command()
def pairs(
    ir_dir: Annotated[Path, typer.Argument(help="Folder of infrared (or first-modality, e.g. MRI) images.")],
    vis_dir: Annotated[Path, typer.Argument(help="Folder of visible (or second-modality, e.g. CT/PET) images.")],
    rs: opt.RS = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Print one JSON record per image pair, matched by file stem across extensions.

    A folder lacking files the other has is named on stderr with the count of
    pairs dropped (exit status 1); -v lists each unpaired file.
    """
    reporter = Reporter("pairs", quiet, verbose)
    try:
        pairing = pair_directories({"ir": ir_dir, "vis": vis_dir})
    except FileNotFoundError as exc:
        raise usage_error(str(exc)) from None
    report_pairing(pairing, reporter)
    write_records(pairing.records, rs=rs)
    raise typer.Exit(1 if reporter.errors or pairing.duplicates else 0)


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


@app.command("fuse")
@opt.stage_options(batch_size=4)
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
    try:
        stage = make_stage()
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"fuse fuse: error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


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


@app.command()
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
    status = run_stage(make_stage(), source, run_opts, reporter, emit=keep, make_stage=make_stage)
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


def _register_command_modules() -> None:
    """Each ``fuse_cli/cmd_<stage>.py`` adds its command(s) through its ``register(app)`` function."""
    import fuse_cli

    for module in sorted(pkgutil.iter_modules(fuse_cli.__path__), key=lambda m: m.name):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"fuse_cli.{module.name}").register(app)


_register_command_modules()
add_examples(app)


def _terminate(signum, frame) -> None:
    # `kill` becomes an exception in the main thread, so pending atomic writes remove their temporaries.
    raise SystemExit(128 + signum)


def run() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    # A closed pipe (`fuse pairs ... | head`) ends the command quietly, as it does any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        app(prog_name="fuse")  # also under `python -m fuse_cli`: usage lines and completion scripts name `fuse`
    except MissingExtra as exc:  # an optional dependency the command needs, checked before any work
        typer.echo(str(exc), err=True)
        sys.exit(2)
    except WeightsError as exc:  # a model file a command reads outside per-pair work (train --resume/--init)
        typer.echo(f"fuse: error: {exc}", err=True)
        sys.exit(1)
