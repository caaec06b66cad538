"""Throughput of `fuse fuse` per fusion method on the MSRS pairs (640x480), against reading and writing alone.

The floor reads the two images and writes one PNG, with no fusion (at the default
fast PNG compression, and at Pillow's default level 6 for comparison).

    python benchmarks/bench_fuse.py [--data ../shared/data/msrs] [--methods mean,max,...] [--device cpu]
                                    [--limit N] [--workers N]

Runs the stage in-process through the batch runner, as `fuse fuse -j N -b 4` does
(no interpreter start-up; `bench_startup.py` measures that), with a warm-up pair
first; prints a markdown table of pairs/s and the ratio to the floor measured in
the same run, and the CPU time per pair (all threads of this process), which
moves less than the wall time when other processes share the cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from stages.core.images import write_image
from fuse_cli.options import RunOptions
from stages.core.records import pair_directories
from fuse_cli.runner import Reporter, run_stage
from stages.fuse import FuseStage, load_pair
from stages.methods.registry import list_methods

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrs"


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_floor(records: list[dict], out: Path, workers: int, png_compression: int | None = None) -> tuple[float, float]:
    """Wall and CPU seconds to read each pair and write its VIS as PNG, over ``workers`` threads."""
    out.mkdir(parents=True, exist_ok=True)
    options = {} if png_compression is None else {"png_compression": png_compression}

    def read_write(record: dict) -> None:
        _, vis = load_pair(record)
        write_image(out / f"{record['id']}.png", vis, **options)

    def run() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(read_write, records))

    return timed(run)


def time_method(records: list[dict], method: str, device: str, out: Path, workers: int) -> tuple[float, float] | None:
    """Wall and CPU seconds of the fuse stage on ``records``; ``None`` for a learned method without weights."""
    try:
        stage = FuseStage(out / method, method, device)
    except FileNotFoundError:
        return None  # a learned method without weights on this install
    stage.process(records[:1])  # warm-up
    opts = RunOptions(overwrite=True, batch_size=4, workers=workers, quiet=True)

    def run() -> None:
        run_stage(stage, records, opts, Reporter("fuse", quiet=True), emit=lambda record: None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", default=",".join(m.name for m in list_methods()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="use only the first N pairs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads, as `fuse fuse -j N`")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"bench_fuse: {args.data} not found (needs ../shared/data)")
    records = pair_directories({"ir": args.data / "ir", "vis": args.data / "vis"}).records[: args.limit]
    n = len(records)
    print(f"\n`fuse fuse -j {args.workers}` on {n} pairs of {args.data.name}, device {args.device}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        floor = time_floor(records, Path(tmp) / "floor", args.workers)
        rows = [("read 2 + write 1 (no fusion)", floor),
                ("read 2 + write 1, PNG level 6 (Pillow's default)", time_floor(records, Path(tmp) / "floor6",
                                                                                 args.workers, 6))]
        rows += [(m, time_method(records, m, args.device, Path(tmp), args.workers)) for m in args.methods.split(",")]
    print("| method | s total | ms / pair | CPU ms / pair | pairs/s | × floor |\n|---|---:|---:|---:|---:|---:|")
    for name, times in rows:
        if times is None:
            print(f"| {name} | no weights | | | | |")
        else:
            seconds, cpu = times
            print(f"| {name} | {seconds:.2f} | {1000 * seconds / n:.1f} | {1000 * cpu / n:.1f} | {n / seconds:.2f} "
                  f"| {seconds / floor[0]:.2f} |")
    print(f"\nLoad average at the end {os.getloadavg()[0]:.1f} (other processes share these CPUs).")


if __name__ == "__main__":
    main()
