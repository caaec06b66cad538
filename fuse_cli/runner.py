"""The batch runner: the one loop every stage command runs through.

It owns what users expect of every stage, so stages never repeat it:
selecting the shard, skipping pairs whose outputs exist (unless
``--overwrite``), ``--dry-run``, batching, parallel workers, the progress bar
(stderr, only on a terminal), one clear error line per failed pair with the
record passed on carrying ``"error"``, records on stdout in input order, and
the exit status (0 all good, 1 when any pair failed).

Output files are written atomically by the stages (see
:func:`fuse_cli.images.atomic_file`), so an interrupted run leaves no partial
file and a re-run finishes the rest.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from tqdm import tqdm

from fuse_cli.options import RunOptions
from fuse_cli.records import MalformedRecord, format_record
from stages.base import Stage


class Reporter:
    """Writes diagnostics to stderr, one line each, prefixed by the command name."""

    def __init__(self, command: str, quiet: bool = False, verbose: bool = False):
        self.command, self.quiet, self.verbose = command, quiet, verbose
        self.errors = 0

    def error(self, message: str) -> None:
        self.errors += 1
        tqdm.write(f"fuse {self.command}: error: {message}", file=sys.stderr)

    def warn(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(f"fuse {self.command}: warning: {message}", file=sys.stderr)

    def info(self, message: str) -> None:
        if self.verbose:
            tqdm.write(f"fuse {self.command}: {message}", file=sys.stderr)


def select_shard(records: Iterable[dict], shard: tuple[int, int]) -> Iterator[dict]:
    """Every N-th record starting at the K-th (1-based), by position in the input."""
    k, n = shard
    return (r for i, r in enumerate(records) if i % n == k - 1)


def _batches(records: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(islice(records, size)):
        yield batch


def _error_text(record: dict, exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    pair = str(record.get("id", "?"))
    return message if message.startswith(f"pair {pair}") else f"pair {pair}: {message}"


def print_record(record: dict, rs: bool = False) -> None:
    """Write one record to stdout right away, so the next stage in a pipe can start."""
    sys.stdout.write(format_record(record, rs))
    sys.stdout.flush()


def run_stage(
    stage: Stage, records: Iterable[dict], opts: RunOptions, reporter: Reporter, emit: Callable[[dict], None] | None = None
) -> int:
    """Run ``stage`` over ``records``, hand each updated record to ``emit`` (default: print it), return the exit status."""
    emit = emit or (lambda record: print_record(record, opts.rs))
    show_bar = not opts.quiet and sys.stderr.isatty()
    inherited = 0
    pool = ThreadPoolExecutor(opts.workers) if opts.workers > 1 else None
    try:
        bar = tqdm(desc=f"fuse {stage.name}", unit="pair", disable=not show_bar, file=sys.stderr)
        for batch in _batches(select_shard(records, opts.shard), opts.batch_size):
            todo, results = [], {}
            for index, record in enumerate(batch):
                if "error" in record:
                    if isinstance(record, MalformedRecord):
                        reporter.error(record["error"])
                    else:
                        inherited += 1
                    results[index] = record
                    continue
                planned = stage.outputs(record)
                if opts.dry_run:
                    for path in planned:
                        exists = path.exists() and not opts.overwrite
                        print(f"{'skip (exists)' if exists else 'would write'}: {path}", file=sys.stderr)
                    continue
                if planned and not opts.overwrite and all(p.exists() for p in planned):
                    reporter.info(f"pair {record['id']}: outputs exist, skipped (use --overwrite)")
                    results[index] = {**record, **stage.skip_update(record)}
                    continue
                todo.append(index)
            for index, result in zip(todo, _process(stage, [batch[i] for i in todo], pool, opts.workers)):
                record = batch[index]
                if isinstance(result, BaseException):
                    text = _error_text(record, result)
                    reporter.error(text)
                    results[index] = {**record, "error": text}
                else:
                    results[index] = {**record, **result}
                    reporter.info(f"pair {record['id']}: done")
            for index in sorted(results):
                emit(results[index])
            bar.update(len(batch))
        bar.close()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if inherited:
        reporter.warn(f"{inherited} record(s) arrived with an error from an earlier stage and were passed on untouched")
    return 1 if reporter.errors or inherited else 0


def _process(stage: Stage, records: list[dict], pool: ThreadPoolExecutor | None, workers: int) -> list:
    """``stage.process`` on ``records``, split into contiguous chunks over the worker threads."""
    if not records:
        return []
    if pool is None or len(records) == 1:
        return stage.process(records)
    size = -(-len(records) // workers)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    return [result for part in pool.map(stage.process, chunks) for result in part]
