"""``--engine ray``: compute a stage's pairs on Ray actors, on this machine or a cluster.

Each of ``--concurrency`` actors builds the stage once, from the command's
picklable factory (``functools.partial(FuseStage, ...)``), and receives
batches of records as they arrive (:class:`ActorPool`). The batch runner
(:mod:`fuse_cli.runner`) keeps everything else on the driver: shard, skip,
dry run, error lines, record order, exit status. Only the pairs left to
compute travel, tagged with their input position, and each comes back as
soon as its actor is done, so records stream through ``--engine ray`` as
through the local engine.

Without ``RAY_ADDRESS`` the command starts Ray on this machine and stops it
when done. To use a cluster, start Ray on its nodes and point the command at it::

    ray start --head --port 6379            # on the head node
    ray start --address HEAD:6379           # on every other node
    export RAY_ADDRESS=HEAD:6379            # where you run fuse
    fuse fuse -m refinefuse -o /shared/fused --engine ray --concurrency 8 --num-gpus 1 < pairs.jsonl

Input and output paths must be the same on every node (shared storage), and
every node needs this package installed. A killed actor is restarted and its
batch retried, up to :data:`MAX_TASK_RETRIES` times; stages write outputs
atomically, so a retried batch never leaves a partial file and each record
comes back once.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import ray

from fuse_cli.options import RunOptions
from stages.core.stage import Stage, StageError, error_text, process_safely

#: How often a batch is retried after its actor died (a pair that kills its worker every time fails the run).
MAX_TASK_RETRIES = 3


class StageActor:
    """Ray actor: builds the stage once, then processes batches of records."""

    def __init__(self, make_stage: Callable[[], Stage]):
        # Ray forwards a worker's stdout to the driver's, which carries only records: print to stderr instead.
        sys.stdout.flush()
        os.dup2(2, 1)
        self.stage = make_stage()

    def process(self, records: list[dict]) -> list[dict | StageError]:
        results = process_safely(self.stage, records)
        # Exceptions travel as StageError with the runner's text, so any of them unpickles on the driver.
        return [r if isinstance(r, dict) else StageError(error_text(rec, r)) for rec, r in zip(records, results)]


def connect(verbose: bool = False) -> bool:
    """Join the cluster at ``$RAY_ADDRESS``, else start Ray here; ``False`` when this process is connected already.

    Ray's own messages on stderr are kept to warnings unless ``verbose``.
    Worker and raylet logs stay in Ray's log folder
    (``/tmp/ray/session_latest/logs``): Ray would print some of them on stdout,
    which carries only records.
    """
    level = logging.INFO if verbose else logging.WARNING
    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=level, log_to_driver=False)
    return True


class ActorPool:
    """``opts.concurrency`` actors holding the stage; batches go to idle actors, results come back as they finish.

    Use as a context manager. The first batch connects to Ray (see
    :func:`connect`) and starts the actors, so a run with nothing to compute
    starts neither; leaving the context stops Ray if the pool started it.
    """

    def __init__(self, make_stage: Callable[[], Stage], opts: RunOptions):
        self.make_stage, self.opts = make_stage, opts
        self.idle: list | None = None  # the actors without a batch; None until the first batch
        self.queued: list[list[tuple[int, dict]]] = []
        self.running: dict = {}  # ObjectRef -> (actor, its batch)
        self.connected_here = False

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.idle, self.running = None, {}
        if self.connected_here:
            ray.shutdown()

    def busy(self) -> bool:
        """Whether every actor has a batch and as many more wait: read no more input until one finishes."""
        return len(self.queued) >= self.opts.concurrency

    def pending(self) -> bool:
        return bool(self.queued or self.running)

    def submit(self, batch: list[tuple[int, dict]]) -> None:
        """Queue ``(position, record)`` pairs to compute; an idle actor takes them at once."""
        if not batch:
            return
        if self.idle is None:
            self.connected_here = connect(self.opts.verbose)
            gpus = {"num_gpus": self.opts.num_gpus} if self.opts.num_gpus else {}
            actor = ray.remote(StageActor).options(max_restarts=-1, max_task_retries=MAX_TASK_RETRIES, **gpus)
            self.idle = [actor.remote(self.make_stage) for _ in range(self.opts.concurrency)]
        self.queued.append(batch)
        self._dispatch()

    def finished(self, wait: bool) -> list[tuple[int, dict | Exception]]:
        """``(position, keys to add or the error)`` of every batch done by now; with ``wait``, at least one batch."""
        if not self.running:
            return []
        done, _ = ray.wait(list(self.running), num_returns=1, timeout=None if wait else 0)
        if done:  # take whatever else has finished too
            done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        results = []
        for ref in done:
            actor, batch = self.running.pop(ref)
            self.idle.append(actor)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the actor died on every retry
                failure = RuntimeError(f"its Ray worker failed ({type(exc).__name__}) after {MAX_TASK_RETRIES} retries")
                outcome = [StageError(error_text(record, failure)) for _, record in batch]
            results += [(position, result) for (position, _), result in zip(batch, outcome)]
        self._dispatch()
        return results

    def _dispatch(self) -> None:
        while self.idle and self.queued:
            actor, batch = self.idle.pop(), self.queued.pop(0)
            self.running[actor.process.remote([record for _, record in batch])] = (actor, batch)
