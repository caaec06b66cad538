"""``fuse pairs``: one JSON record per image pair of two folders, the start of every pipeline.

    fuse pairs ir/ vis/ | fuse fuse -m laplacian -o fused/ | fuse score
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import report_pairing, usage_error
from fuse_cli.runner import Reporter
from stages.core.records import pair_directories, write_records


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


def add_commands(app: typer.Typer) -> None:
    app.command()(pairs)
