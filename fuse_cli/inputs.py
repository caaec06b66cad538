"""Where a stage's records come from: ``--records FILE``, paired folders, or stdin.

Shared by every command module, with the usage-error convention (exit 2).
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from fuse_cli.records import pair_directories, read_records_file, read_stdin_records
from fuse_cli.runner import Reporter


def usage_error(message: str) -> typer.Exit:
    typer.echo(f"fuse: usage error: {message}", err=True)
    return typer.Exit(2)


def gather_records(
    ir: Path | None, vis: Path | None, records: Path | None, reporter: Reporter, **extra_dirs: Path | None
) -> Iterator[dict]:
    """Records from ``--records FILE`` (``-``: stdin), from paired folders, or from stdin — in that order of preference."""
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
        report_unmatched(pairing, reporter)
        return iter(pairing.records)
    if sys.stdin is None or sys.stdin.isatty():
        raise usage_error("no input: pipe records on stdin, or give --records FILE or --ir DIR --vis DIR")
    return read_stdin_records()


def report_unmatched(pairing, reporter: Reporter) -> None:
    for path in pairing.unmatched:
        reporter.warn(f"{path}: no file with the same stem in the other folder; not paired")
    for path in pairing.duplicates:
        reporter.warn(f"{path}: another file in this folder has the same stem; ignored")


def gather_compared(
    ir: Path | None, vis: Path | None, fused: list[Path] | None, records: Path | None, reporter: Reporter
) -> Iterator[dict] | list[dict]:
    """Records of several methods: one per pair and ``--fused`` folder (``method`` = folder name), else as above."""
    if not fused:
        return gather_records(ir, vis, records, reporter)
    if ir is None or vis is None:
        raise usage_error("--fused needs --ir and --vis")
    return [{**record, "method": folder.name}
            for folder in fused for record in gather_records(ir, vis, None, reporter, fused=folder)]
