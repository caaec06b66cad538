"""``--engine ray``: compute a stage's pairs on Ray Data actors, on this machine or a cluster.

Each actor builds the stage once, from the command's picklable factory
(``functools.partial(FuseStage, ...)``), and Ray Data's ``map_batches`` feeds
it batches of records. The batch runner (:mod:`fuse_cli.runner`) keeps
everything else on the driver: shard, skip, dry run, error lines, record
order, exit status. Only the pairs left to compute travel, tagged with their
input position.

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
import pickle
import sys
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import ray
import ray.data

from fuse_cli.options import RunOptions
from stages.core.stage import Stage, StageError, error_text, process_safely

#: How often a batch is retried after its actor died (a pair that kills its worker every time fails the run).
MAX_TASK_RETRIES = 3


class StageActor:
    """Ray Data callable class: builds the stage once per actor, then processes batches of pickled records."""

    def __init__(self, make_stage: Callable[[], Stage]):
        # Ray forwards a worker's stdout to the driver's, which carries only records: print to stderr instead.
        sys.stdout.flush()
        os.dup2(2, 1)
        self.stage = make_stage()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [pickle.loads(blob) for blob in batch["record"]]
        results = process_safely(self.stage, records)
        # Exceptions travel as StageError with the runner's text, so any of them unpickles on the driver.
        portable = [r if isinstance(r, dict) else StageError(error_text(rec, r)) for rec, r in zip(records, results)]
        return {"position": batch["position"], "result": np.array([pickle.dumps(r) for r in portable], dtype=object)}


def connect(verbose: bool = False) -> bool:
    """Join the cluster at ``$RAY_ADDRESS``, else start Ray here; ``False`` when this process is connected already.

    Ray's and Ray Data's own messages on stderr are kept to warnings unless
    ``verbose``. Worker and raylet logs stay in Ray's log folder
    (``/tmp/ray/session_latest/logs``): Ray would print some of them on stdout,
    which carries only records.
    """
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("ray.data").setLevel(level)
    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=level, log_to_driver=False)
    return True


def process_on_ray(
    make_stage: Callable[[], Stage], todo: list[tuple[int, dict]], opts: RunOptions
) -> Iterator[tuple[int, dict | Exception]]:
    """For each ``(position, record)`` of ``todo``, yield ``(position, keys to add or the error)`` as actors finish."""
    if not todo:
        return
    connected_here = connect(opts.verbose)
    try:
        items = [{"position": position, "record": pickle.dumps(record)} for position, record in todo]
        with warnings.catch_warnings():
            # Ray 2.60 deprecates actor options passed as keywords and names no replacement for these two yet.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            results = ray.data.from_items(items).map_batches(
                StageActor,
                fn_constructor_args=(make_stage,),
                batch_size=opts.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=opts.concurrency),
                num_gpus=opts.num_gpus or None,
                max_restarts=-1,
                max_task_retries=MAX_TASK_RETRIES,
            )
        for row in results.iter_rows():
            yield int(row["position"]), pickle.loads(row["result"])
    finally:
        if connected_here:
            ray.shutdown()
