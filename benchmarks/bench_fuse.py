"""Throughput of `fuse fuse` per fusion method on the MSRS pairs (640x480), against reading and writing alone.

The baseline reads the two images and writes one, with no fusion.

    python benchmarks/bench_fuse.py [--data ../shared/data/msrs] [--methods mean,max,...] [--device cpu] [--limit N]

Runs the stage in-process (no interpreter start-up), batch size 1, one worker,
with a warm-up pair first; prints a markdown table of pairs/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fuse_cli.images import write_image
from fuse_cli.records import pair_directories
from stages.fuse import FuseStage, load_pair
from stages.registry import list_methods

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrs"


def time_baseline(records: list[dict], out: Path) -> float:
    start = time.perf_counter()
    for record in records:
        _, vis = load_pair(record)
        write_image(out / f"{record['id']}.png", vis)
    return time.perf_counter() - start


def time_method(records: list[dict], method: str, device: str, out: Path) -> float | None:
    try:
        stage = FuseStage(out / method, method, device)
    except FileNotFoundError:
        return None  # a learned method without weights on this install
    stage.process(records[:1])  # warm-up
    start = time.perf_counter()
    for record in records:
        stage.process([record])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", default=",".join(m.name for m in list_methods()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="use only the first N pairs")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"bench_fuse: {args.data} not found (needs ../shared/data)")
    records = pair_directories({"ir": args.data / "ir", "vis": args.data / "vis"}).records[: args.limit]
    print(f"\n`fuse fuse` on {len(records)} pairs of {args.data.name}, device {args.device}, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| method | s total | ms / pair | pairs/s |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("read 2 + write 1 (no fusion)", time_baseline(records, Path(tmp) / "baseline"))]
        rows += [(m, time_method(records, m, args.device, Path(tmp))) for m in args.methods.split(",")]
    for name, seconds in rows:
        if seconds is None:
            print(f"| {name} | no weights | | |")
        else:
            print(f"| {name} | {seconds:.2f} | {1000 * seconds / len(records):.1f} | {len(records) / seconds:.2f} |")


if __name__ == "__main__":
    main()
