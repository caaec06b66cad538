"""Speed of `fuse score` on the MSRS pairs: every metric's time, the whole set, and pairs/s against the decode floor.

    python benchmarks/bench_metrics.py [--limit N] [--workers N] [--before REV[,REV...]]

Fused images are the mean of the two luminances, written as PNG. Three tables:

1. CPU ms per pair of each metric alone (``compute_metrics(..., [name])``, so each
   row includes the gray conversion), for both conventions, now and at each git
   revision of ``--before`` (default: the commit before the speed work of issue 20,
   and the one before the fourth round of it).
2. The whole set in one call (work shared between metrics), CPU ms per pair.
3. The score stage end to end (read three PNGs, score, in-process), wall time,
   one process and ``--workers`` processes, next to the "decode only" floor:
   reading the same three images, no scoring, in the same run.

CPU times (``time.process_time``, one OpenCV thread) are what the code costs; wall
times also carry whatever else the machine runs, so the load average is printed.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.core.images import read_uint8, write_image  # noqa: E402
from stages.metrics import CONVENTIONS, METRICS, compute_metrics  # noqa: E402
from stages.score import ScoreStage  # noqa: E402

MSRS = ROOT.parent / "shared" / "data" / "msrs"
BEFORE = "ebb7b46,f6f5a97"  # the last commits before issue 20's speed work, and before its fourth round


def _luminance(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    return img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])


def metrics_at(rev: str):
    """``stages.metrics`` as it was at git revision ``rev`` (imported from a temporary copy), or None."""
    folder = Path(tempfile.mkdtemp()) / f"metrics_{rev}"
    folder.mkdir()
    try:
        names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:stages/metrics"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for name in (n for n in names if n.endswith(".py")):
            source = subprocess.run(["git", "show", f"{rev}:stages/metrics/{name}"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout
            (folder / name).write_text(source)
    except (OSError, subprocess.CalledProcessError):
        return None
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(f"metrics_{rev}")


def cpu_ms(fn, pairs) -> float:
    """CPU milliseconds per pair of ``fn(ir, vis, fused)`` over ``pairs``."""
    start = time.process_time()
    for ir, vis, fused in pairs:
        fn(ir, vis, fused)
    return (time.process_time() - start) * 1e3 / len(pairs)


def wall_s(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for table 3")
    parser.add_argument("--before", default=BEFORE,
                        help="git revisions of the 'before' columns, comma-separated ('' for none)")
    args = parser.parse_args()
    if not MSRS.is_dir():
        raise SystemExit(f"bench_metrics: {MSRS} not found (needs ../shared/data)")
    cv2.setNumThreads(1)
    before = {rev: metrics_at(rev) for rev in args.before.split(",") if rev}
    tmp = Path(tempfile.mkdtemp())
    pairs, records = [], []
    for ir_path in sorted((MSRS / "ir").iterdir())[: args.limit]:
        vis_path = next((MSRS / "vis").glob(ir_path.stem + ".*"))
        ir, vis = read_uint8(ir_path), read_uint8(vis_path)
        fused = np.rint((_luminance(ir) + _luminance(vis)) / 2).astype(np.uint8)
        write_image(tmp / f"{ir_path.stem}.png", fused / 255.0)
        pairs.append((ir, vis, fused))
        records.append({"id": ir_path.stem, "ir": str(ir_path), "vis": str(vis_path),
                        "fused": str(tmp / f"{ir_path.stem}.png")})
    h, w = pairs[0][0].shape[:2]
    print(f"{len(pairs)} MSRS pairs, {w}x{h}, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}\n")

    versions = {"now": compute_metrics, **{rev: module.compute_metrics for rev, module in before.items() if module}}
    print("CPU ms per pair, each metric alone (includes the gray conversion):\n")
    print("| metric | " + " | ".join(f"{c} {v}" for c in CONVENTIONS for v in versions) + " |")
    print("|---|" + "---:|" * (len(CONVENTIONS) * len(versions)))
    totals = {(c, v): 0.0 for c in CONVENTIONS for v in versions}
    for name in METRICS:
        cells = []
        for convention in CONVENTIONS:
            for version, score in versions.items():
                ms = cpu_ms(lambda a, b, f: score(a, b, f, [name], convention), pairs)
                totals[convention, version] += ms
                cells.append(f"{ms:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| sum of the rows | " + " | ".join(f"{totals[key]:.1f}" for key in totals) + " |")
    whole = {key: cpu_ms(lambda a, b, f: versions[key[1]](a, b, f, None, key[0]), pairs) for key in totals}
    print("| **all 19 in one call** | " + " | ".join(f"**{whole[key]:.1f}**" for key in whole) + " |")
    print("| pairs/s, one core | " + " | ".join(f"{1e3 / whole[key]:.2f}" for key in whole) + " |")

    names = list(METRICS)
    decode_cpu = time.process_time()
    decode = wall_s(lambda: [read_uint8(r[k]) for r in records for k in ("ir", "vis", "fused")])
    decode_cpu = time.process_time() - decode_cpu
    serial = wall_s(lambda: ScoreStage(names).process(records))
    stage = ScoreStage(names, workers=args.workers)
    stage.process(records[:args.workers])  # start the worker processes outside the timing
    parallel = wall_s(lambda: stage.process(records))
    n = len(records)
    print(f"\n`fuse score` stage, all 19 metrics, mmif, wall time (load average now {os.getloadavg()[0]:.1f}):\n")
    print("| run | ms / pair | pairs/s | × decode floor |\n|---|---:|---:|---:|")
    for label, seconds in (("decode only (read ir, vis, fused; the floor)", decode), ("score, 1 process", serial),
                           (f"score, --workers {args.workers}", parallel)):
        print(f"| {label} | {1e3 * seconds / n:.1f} | {n / seconds:.2f} | {seconds / decode:.1f} |")
    print(f"\nDecode CPU time {1e3 * decode_cpu / n:.1f} ms per pair; whole-set scoring "
          f"{whole['mmif', 'now']:.1f} ms CPU per pair = {whole['mmif', 'now'] / (1e3 * decode_cpu / n):.1f}× decode.")


if __name__ == "__main__":
    main()
