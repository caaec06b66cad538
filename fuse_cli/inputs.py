"""Where a stage's records come from: ``--records FILE``, paired folders, or stdin.

Shared by every command module, with the exit statuses of what a command cannot
use: :func:`usage_error` (exit 2) and :func:`build_stage` (exit 1 or 2).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from fuse_cli.runner import Reporter
from stages.core.records import IMAGE_SUFFIXES, Pairing, pair_directories, read_records_file, read_stdin_records
from stages.core.stage import Stage
from stages.nets.checkpoint import WeightsError
from stages.nets.yolo import ModelError


def usage_error(message: str) -> typer.Exit:
    typer.echo(f"fuse: usage error: {message}", err=True)
    return typer.Exit(2)


def build_stage(command: str, make_stage: Callable[[], Stage]) -> Stage:
    """``make_stage()``; what it raises ends ``fuse COMMAND`` the same way for every command.

    A file, model or library that cannot be used (``OSError``, ``RuntimeError``,
    ``ImportError``, a weights file that does not fit: ``WeightsError``, a detector
    that does not load: ``ModelError``) exits 1
    with ``fuse COMMAND: error: ...``; any other ``ValueError`` is an option value
    the stage refused: a usage error (exit 2).
    """
    try:
        return make_stage()
    except (OSError, RuntimeError, ImportError, WeightsError, ModelError) as exc:
        typer.echo(f"fuse {command}: error: {exc}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        raise usage_error(str(exc)) from None


def gather_records(
    ir: Path | None, vis: Path | None, records: Path | None, reporter: Reporter, **extra_dirs: Path | None
) -> Iterable[dict]:
    """Records from ``--records FILE`` (``-``: stdin), from paired folders, or from stdin — in that order of preference.

    Folders and a regular records file give a list (its length is the progress bar's total); pipes stream.
    """
    if records is not None:
        try:
            return read_records_file(records)
        except FileNotFoundError:
            raise usage_error(f"{records}: no such records file") from None
        except OSError as exc:
            raise usage_error(f"{records}: cannot read records ({exc.strerror or exc})") from None
    if ir is not None or vis is not None:
        if ir is None or vis is None:
            raise usage_error("--ir and --vis go together")
        folders = {"ir": ir, "vis": vis, **{k: v for k, v in extra_dirs.items() if v is not None}}
        try:
            pairing = pair_directories(folders)
        except FileNotFoundError as exc:
            raise usage_error(str(exc)) from None
        report_pairing(pairing, reporter)
        return pairing.records
    if sys.stdin is None or sys.stdin.isatty():
        raise usage_error("no input: pipe records on stdin, or give --records FILE or --ir DIR --vis DIR")
    return read_stdin_records()


def report_pairing(pairing: Pairing, reporter: Reporter) -> None:
    """Summary lines, not one per file: a folder lacking files (an error: pairs dropped), duplicates, an empty folder.

    With ``-v`` each unpaired or duplicate file gets its own line as well.
    """
    for folder, stems in pairing.missing.items():
        shown = ", ".join(stems[:3]) + (", …" if len(stems) > 3 else "")
        reporter.error(f"{folder}: lacks {len(stems)} of the {pairing.found} images the other folder(s) have "
                       f"({shown}); {len(stems)} pair(s) dropped")
    if pairing.duplicates:
        reporter.warn(f"{len(pairing.duplicates)} file(s) share a stem with another file of their folder and are "
                      f"ignored ({', '.join(str(p) for p in pairing.duplicates[:3])}{', …' if len(pairing.duplicates) > 3 else ''})")
    for path in pairing.unmatched:
        reporter.info(f"{path}: no file with the same stem in the other folder(s); not paired")
    for path in pairing.duplicates:
        reporter.info(f"{path}: another file in this folder has the same stem; ignored")
    if pairing.empty:
        folders = " and ".join(str(folder) for folder in pairing.empty)
        problem = f"{folders}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        if pairing.found:
            reporter.error(f"{problem}; {pairing.found} pair(s) dropped")
        else:
            reporter.warn(problem)


def gather_compared(
    ir: Path | None, vis: Path | None, fused: list[Path] | None, records: Path | None, reporter: Reporter
) -> Iterable[dict]:
    """Records of several methods: one per pair and ``--fused`` folder (``method`` = folder name), else as above."""
    if not fused:
        return gather_records(ir, vis, records, reporter)
    if ir is None or vis is None:
        raise usage_error("--fused needs --ir and --vis")
    return [{**record, "method": folder.name}
            for folder in fused for record in gather_records(ir, vis, None, reporter, fused=folder)]
