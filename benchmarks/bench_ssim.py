"""Our two SSIMs against scikit-image's ``structural_similarity`` with the options that give the same numbers.

    pip install scikit-image   # not a dependency of fuse; only this comparison needs it
    python benchmarks/bench_ssim.py [--limit N] [--repeat N]

On the MSRS pairs (fused = mean of IR and VIS, rounded): the largest relative
difference of each convention's SSIM and the CPU ms per pair (best of ``--repeat``,
``time.process_time``, one OpenCV thread) of ours and of scikit-image:

* ``mmif``: SSIM(F, IR) + SSIM(F, VIS) on float32, ``data_range=2, win_size=7``;
* ``vifb``: SSIM(VIS, F) + SSIM(IR, F), ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255``.

Each call runs in its own :func:`sharing` block, so ours gets no work from other metrics.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.metrics._filters import sharing  # noqa: E402
from stages.metrics.structural import ssim_mmif, ssim_vifb  # noqa: E402

MSRS = ROOT.parent / "shared" / "data" / "msrs"


def skimage_versions():
    from skimage.metrics import structural_similarity as ssim

    def mmif(a, b, f):
        f, a, b = (x.astype(np.float32) for x in (f, a, b))
        return ssim(f, a, data_range=2, win_size=7) + ssim(f, b, data_range=2, win_size=7)

    def vifb(a, b, f):
        options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        return ssim(b, f, **options) + ssim(a, f, **options)

    return mmif, vifb


def cpu_ms(fn, args, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        with sharing():
            fn(*args)
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=26, help="pairs to use (default: all 26)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per call; the fastest counts")
    args = parser.parse_args()
    try:
        sk_mmif, sk_vifb = skimage_versions()
    except ImportError:  # `make bench` runs every script: say so and let the others report
        print("scikit-image is not installed (pip install scikit-image): nothing to compare.")
        return
    cv2.setNumThreads(1)
    pairs = []
    for ir_path in sorted((MSRS / "ir").glob("*.png"))[: args.limit]:
        a = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        b = cv2.imread(str(MSRS / "vis" / ir_path.name), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        pairs.append((a, b, np.round((a + b) / 2)))
    print(f"{len(pairs)} MSRS pairs {pairs[0][0].shape[::-1]}, CPU ms per pair (best of {args.repeat})")
    print("| convention | ours ms | scikit-image ms | scikit-image / ours | largest relative difference |")
    print("|---|---:|---:|---:|---:|")
    for name, ours, theirs in (("mmif", ssim_mmif, sk_mmif), ("vifb", ssim_vifb, sk_vifb)):
        diff = max(abs(ours(*p) - theirs(*p)) / abs(ours(*p)) for p in pairs)
        t_ours = np.mean([cpu_ms(ours, p, args.repeat) for p in pairs])
        t_theirs = np.mean([cpu_ms(theirs, p, args.repeat) for p in pairs])
        print(f"| {name} | {t_ours:.1f} | {t_theirs:.1f} | {t_theirs / t_ours:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
