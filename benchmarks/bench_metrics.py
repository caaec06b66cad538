"""Time of every fusion metric on the MSRS pairs (fused = mean of the luminances), ms per pair.

    python benchmarks/bench_metrics.py [--limit N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuse_cli.images import read_uint8  # noqa: E402
from stages.metrics import CONVENTIONS, METRICS, compute_metrics  # noqa: E402

MSRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrs"


def _luminance(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    return img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    args = parser.parse_args()
    pairs = []
    for ir_path in sorted((MSRS / "ir").iterdir())[: args.limit]:
        ir = read_uint8(ir_path)
        vis = read_uint8(next((MSRS / "vis").glob(ir_path.stem + ".*")))
        pairs.append((ir, vis, np.rint((_luminance(ir) + _luminance(vis)) / 2).astype(np.uint8)))
    print(f"{len(pairs)} MSRS pairs, {pairs[0][0].shape[1]}x{pairs[0][0].shape[0]}, one process\n")
    print("| metric | " + " | ".join(f"{c} ms / pair" for c in CONVENTIONS) + " |")
    print("|---|" + "---:|" * len(CONVENTIONS))
    totals = dict.fromkeys(CONVENTIONS, 0.0)
    for name in METRICS:
        cells = []
        for convention in CONVENTIONS:
            start = time.perf_counter()
            for ir, vis, fused in pairs:
                compute_metrics(ir, vis, fused, [name], convention)
            ms = (time.perf_counter() - start) * 1e3 / len(pairs)
            totals[convention] += ms
            cells.append(f"{ms:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| all | " + " | ".join(f"{totals[c]:.1f}" for c in CONVENTIONS) + " |")
    print("| pairs/s (all metrics) | " + " | ".join(f"{1e3 / totals[c]:.2f}" for c in CONVENTIONS) + " |")

if __name__ == "__main__":
    main()
