"""The batch runner: the one loop every stage command runs through.

It owns what users expect of every stage, so stages never repeat it:
selecting the shard, refusing ids that cannot name files and duplicate ids,
skipping pairs whose outputs the same recipe made (and refusing outputs made
otherwise) unless ``--overwrite`` (see :class:`Planner`), ``--dry-run``,
batching that never waits on a slow producer (:func:`available_batches`),
parallel workers, the progress bar (stderr, only on a terminal, with a total
when the input is a list), one
clear error line per failed pair with the record passed on carrying
``"error"``, records on stdout in input order, and the exit status (0 all
good, 1 when any pair failed).

Two engines compute the pairs the :class:`Planner` leaves to do: ``local``
(this process, batch by batch, streaming) and ``ray`` (:mod:`fuse_cli.ray_engine`,
imported only then: batches go to Ray actors as they arrive, and the records
come back in input order as the actors finish them).

Output files are written atomically by the stages (see
:func:`stages.core.images.atomic_file`), so an interrupted run leaves no partial
file; a re-run removes the temporaries killed runs left and finishes the rest.
"""
from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from fuse_cli.options import RunOptions
from stages.core.provenance import explain, read_recipe
from stages.core.records import MalformedRecord, format_record, id_problem
from stages.core.stage import Stage, StageError, error_text, process_safely


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


#: How long a partial batch waits for the next record before it goes (seconds).
STALL_SECONDS = 0.05
_END = object()


def available_batches(records: Iterable[dict], size: int, idle: float | None = None) -> Iterator[list[dict]]:
    """Batches of at most ``size`` records, each holding what has arrived: a partial batch goes when input stalls.

    A thread reads ``records`` (stdin may block) into a queue; a batch waits for
    its first record, then takes more until it is full or none comes for
    :data:`STALL_SECONDS`, so a slow producer's pair is fused as soon as it arrives.
    With ``idle``, an empty batch comes whenever no record has arrived for ``idle``
    seconds: the caller's turn to collect work done elsewhere. An exception
    raised while reading is raised here.
    """
    arrived: queue.Queue = queue.Queue(maxsize=2 * size)

    def read() -> None:
        try:
            for record in records:
                arrived.put(record)
            arrived.put(_END)
        except BaseException as exc:  # noqa: BLE001 — handed to the consuming thread
            arrived.put(exc)

    threading.Thread(target=read, name="fuse-records", daemon=True).start()
    batch: list[dict] = []
    while True:
        try:
            item = arrived.get(timeout=STALL_SECONDS if batch else idle)
        except queue.Empty:  # the input stalled: what has arrived goes now (nothing, with ``idle``)
            yield batch
            batch = []
            continue
        if item is _END or isinstance(item, BaseException):
            if batch:
                yield batch
            if item is _END:
                return
            raise item
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []


def count_selected(records: Iterable[dict], shard: tuple[int, int]) -> int | None:
    """How many records the shard selects when the input's length is known (a list), else ``None``."""
    if not isinstance(records, Sized):
        return None
    k, n = shard
    return len(range(k - 1, len(records), n))


def print_record(record: dict, rs: bool = False) -> None:
    """Write one record to stdout right away, so the next stage in a pipe can start."""
    sys.stdout.write(format_record(record, rs))
    sys.stdout.flush()


#: :class:`Planner`'s answer for a record the stage has to compute.
COMPUTE = object()


class Planner:
    """Decides what happens to each record before any work is sent, whatever the engine.

    A record is refused (one error line, the record passed on with ``"error"``)
    when its id cannot name files (:func:`stages.core.records.id_problem`), when an
    earlier record of this run writes the same files (a duplicate id), or when
    its output exists but was made by another recipe (another method, weights,
    pixel-changing option or other inputs; :mod:`stages.core.provenance`) and
    ``--overwrite`` is not given. It is skipped when every output exists and the
    first one carries this run's recipe; otherwise it is computed.
    """

    def __init__(self, stage: Stage, opts: RunOptions, reporter: Reporter):
        self.stage, self.opts, self.reporter = stage, opts, reporter
        self.seen = 0  # records planned
        self.inherited = 0  # records that arrived with an error from an earlier stage
        self.claimed: set[Path] = set()  # the files earlier records of this run write

    def __call__(self, record: dict) -> dict | object | None:
        """The record to emit as it is (error or skipped), ``None`` (dry run: nothing to emit) or :data:`COMPUTE`."""
        self.seen += 1
        if "error" in record:
            if isinstance(record, MalformedRecord):
                self.reporter.error(record["error"])
            else:
                self.inherited += 1
            return record
        try:
            planned = self._claim(record)
            skip = bool(planned) and not self.opts.overwrite and self._made_here(record, planned)
        except Exception as exc:  # noqa: BLE001 — nothing one record holds may stop the run
            text = error_text(record, exc)
            self.reporter.error(text)
            return {**record, "error": text}
        if self.opts.dry_run:
            for path in planned:
                print(f"{'skip (made by the same recipe)' if skip else 'would write'}: {path}", file=sys.stderr)
            return None
        if skip:
            self.reporter.info(f"pair {record['id']}: outputs made by the same recipe exist, skipped (use --overwrite)")
            return {**record, **self.stage.skip_update(record)}
        return COMPUTE

    def _claim(self, record: dict) -> list[Path]:
        """The files the stage will write for ``record``; :class:`StageError` for a bad or duplicate id."""
        problem = id_problem(record.get("id"))
        if problem:
            raise StageError(f"unusable id: it {problem}; nothing written for this pair")
        planned = self.stage.outputs(record)
        taken = [path for path in planned if path in self.claimed]
        if taken:
            raise StageError(f"duplicate id: an earlier record of this input writes {taken[0]}; "
                             "this one is not processed")
        self.claimed.update(planned)
        return planned

    def _made_here(self, record: dict, planned: list[Path]) -> bool:
        """Whether every output exists and the first carries this run's recipe; :class:`StageError` if made otherwise."""
        carrier = planned[0]
        if not carrier.exists():
            return False
        why = explain(read_recipe(carrier), self.stage.recipe(record))
        if why:
            raise StageError(f"{carrier} {why}; left as it is (--overwrite replaces it)")
        return all(path.exists() for path in planned[1:])


def _finish(record: dict, result: dict | BaseException, reporter: Reporter) -> dict:
    """The record to emit once computed: with the stage's keys, or with ``"error"`` and an error line."""
    if isinstance(result, BaseException):
        text = error_text(record, result)
        reporter.error(text)
        return {**record, "error": text}
    reporter.info(f"pair {record['id']}: done")
    return {**record, **result}


def run_stage(
    stage: Stage,
    records: Iterable[dict],
    opts: RunOptions,
    reporter: Reporter,
    emit: Callable[[dict], None] | None = None,
    make_stage: Callable[[], Stage] | None = None,
) -> int:
    """Run ``stage`` over ``records``, hand each updated record to ``emit`` (default: print it), return the exit status.

    With ``opts.engine == "ray"`` the pairs are computed on Ray actors, each
    building its own stage with ``make_stage`` (a picklable factory, e.g.
    ``functools.partial(FuseStage, ...)``); ``stage`` then only plans.
    """
    from stages.core.images import remove_stale_temporaries  # numpy, Pillow, imageio: not for commands that run no stage

    emit = emit or (lambda record: print_record(record, opts.rs))
    if opts.out is not None and not opts.dry_run:
        for path in remove_stale_temporaries(opts.out):
            reporter.info(f"{path}: removed, a temporary file a killed run left")
    show_bar = not opts.quiet and sys.stderr.isatty()
    plan = Planner(stage, opts, reporter)
    selected = select_shard(records, opts.shard)
    total = count_selected(records, opts.shard)
    with tqdm(desc=f"fuse {stage.name}", unit="pair", total=total, disable=not show_bar, file=sys.stderr) as bar:
        if opts.engine == "ray" and not opts.dry_run:
            if make_stage is None:
                raise ValueError("engine 'ray' needs make_stage, the factory each actor builds its stage with")
            _run_on_ray(make_stage, selected, plan, opts, reporter, emit, bar)
        else:
            _run_local(stage, selected, plan, opts, reporter, emit, bar)
    if not plan.seen:
        reporter.warn("no records to process: the input holds no pairs")
    if plan.inherited:
        reporter.warn(f"{plan.inherited} record(s) arrived with an error from an earlier stage and were passed on untouched")
    return 1 if reporter.errors or plan.inherited else 0


def _run_local(stage: Stage, records: Iterator[dict], plan: Planner, opts: RunOptions, reporter: Reporter,
               emit: Callable[[dict], None], bar: tqdm) -> None:
    """Batch by batch in this process: plan, compute (over ``opts.workers`` threads), emit in input order."""
    pool = ThreadPoolExecutor(opts.workers) if opts.workers > 1 else None
    try:
        for batch in available_batches(records, opts.batch_size):
            todo, results = [], {}
            for index, record in enumerate(batch):
                decision = plan(record)
                if decision is COMPUTE:
                    todo.append(index)
                elif decision is not None:
                    results[index] = decision
            for index, result in zip(todo, _process(stage, [batch[i] for i in todo], pool, opts.workers)):
                results[index] = _finish(batch[index], result, reporter)
            for index in sorted(results):
                emit(results[index])
            bar.update(len(batch))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def _run_on_ray(make_stage: Callable[[], Stage], records: Iterator[dict], plan: Planner, opts: RunOptions,
                reporter: Reporter, emit: Callable[[dict], None], bar: tqdm) -> None:
    """Plan each record here as it arrives, compute the rest on Ray actors, emit in input order as results come back."""
    from fuse_cli.ray_engine import ActorPool

    ready: dict[int, dict] = {}
    waiting: dict[int, dict] = {}
    emitted = 0

    def emit_ready() -> None:
        nonlocal emitted
        while emitted in ready:
            emit(ready.pop(emitted))
            bar.update(1)
            emitted += 1

    def collect(wait: bool) -> None:
        for position, result in pool.finished(wait):
            ready[position] = _finish(waiting.pop(position), result, reporter)
        emit_ready()

    position = 0
    with ActorPool(make_stage, opts) as pool:
        # An empty batch (the input quiet for a moment) lets finished pairs out while a slow producer writes.
        for batch in available_batches(records, opts.batch_size, idle=STALL_SECONDS):
            todo = []
            for record in batch:
                decision = plan(record)
                if decision is COMPUTE:
                    waiting[position] = record
                    todo.append((position, record))
                else:
                    ready[position] = decision
                position += 1
            pool.submit(todo)
            collect(wait=pool.busy())  # every actor busy and as many batches queued: wait before reading on
        while pool.pending():
            collect(wait=True)


def _process(stage: Stage, records: list[dict], pool: ThreadPoolExecutor | None, workers: int) -> list:
    """:func:`process_safely` on ``records``, split into contiguous chunks over the worker threads."""
    if not records:
        return []
    if pool is None or len(records) == 1:
        return process_safely(stage, records)
    size = -(-len(records) // workers)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    return [result for part in pool.map(process_safely, [stage] * len(chunks), chunks) for result in part]
