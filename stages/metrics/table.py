"""The metric table (``METRICS``) and ``compute_metrics``: see :mod:`stages.metrics`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import CONVENTIONS, DEFAULT_CONVENTION, gradient, intensity, perceptual, structural
from ._filters import cv2_gray, matlab_gray, shared, sharing


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its direction, a one-line summary and its definition under each convention."""

    name: str
    higher_is_better: bool
    summary: str
    mmif: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    vifb: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    vifb_unrounded_gray: bool = False  # VIFB converts colour sources with rgb2gray on doubles (no rounding)
    vifb_whole_colour: bool = False  # VIFB scores a colour fused image as one matrix, not per channel


_M = MetricInfo
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    _M("EN", True, "entropy of the fused histogram, bits", intensity.en_mmif, intensity.en_vifb),
    _M("SD", True, "standard deviation of the fused image, grey levels", intensity.sd, intensity.sd),
    _M("SF", True, "spatial frequency (RMS of neighbour differences)", intensity.sf_mmif, intensity.sf_vifb,
       vifb_whole_colour=True),
    _M("AG", True, "average gradient", intensity.ag_mmif, intensity.ag_vifb),
    _M("EI", True, "edge intensity (mean Sobel magnitude)", intensity.ei, intensity.ei),
    _M("MI", True, "mutual information with both sources, nats", intensity.mi_mmif, intensity.mi_vifb),
    _M("CE", False, "cross entropy of the sources' histograms to the fused one, bits", intensity.ce, intensity.ce),
    _M("PSNR", True, "peak signal-to-noise ratio against both sources, dB", intensity.psnr_mmif, intensity.psnr_vifb,
       vifb_unrounded_gray=True),
    _M("MSE", False, "mean squared error against both sources", intensity.mse, intensity.mse),
    _M("RMSE", False, "root mean squared error against both sources", intensity.rmse_mmif, intensity.rmse_vifb,
       vifb_unrounded_gray=True),
    _M("SSIM", True, "SSIM(F, IR) + SSIM(F, VIS)", structural.ssim_mmif, structural.ssim_vifb),
    _M("MS-SSIM", True, "multi-scale MEF-SSIM against the (IR, VIS) sequence", structural.ms_ssim,
       structural.ms_ssim),
    _M("CC", True, "mean correlation coefficient with the sources", intensity.cc, intensity.cc),
    _M("SCD", True, "sum of the correlations of differences", intensity.scd, intensity.scd),
    _M("VIF", True, "visual information fidelity VIF(IR, F) + VIF(VIS, F)", structural.vif, structural.vif),
    _M("Qabf", True, "gradient-based edge preservation Q^AB/F", gradient.qabf, gradient.qabf_vifb,
       vifb_unrounded_gray=True),
    _M("Nabf", False, "fusion artifacts N^AB/F (modified, corrected)", gradient.nabf, gradient.nabf),
    _M("Qcv", False, "Chen-Varshney perceptual difference", perceptual.qcv, perceptual.qcv),
    _M("Qcb", True, "Chen-Blum perceptual contrast preservation", perceptual.qcb, perceptual.qcb),
)}
_BY_LOWER = {name.lower(): name for name in METRICS}


def _resolve(names) -> list[str]:
    if names is None:
        return list(METRICS)
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        canonical = _BY_LOWER.get(str(name).lower())
        if canonical is None:
            raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(METRICS)}")
        out.append(canonical)
    return out


def _check(ir, vis, fused) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = [np.asarray(x) for x in (ir, vis, fused)]
    for label, img in zip(("ir", "vis", "fused"), images):
        if img.dtype != np.uint8:
            raise ValueError(f"{label} must be uint8, got {img.dtype}")
        if not (img.ndim == 2 or img.ndim == 3 and img.shape[2] == 3):
            raise ValueError(f"{label} must be (H, W) or (H, W, 3), got {img.shape}")
    sizes = {img.shape[:2] for img in images}
    if len(sizes) != 1:
        raise ValueError(f"ir, vis and fused differ in size: {[img.shape for img in images]}")
    return images[0], images[1], images[2]


@shared
def _channel(img: np.ndarray, k: int) -> np.ndarray:
    """Channel ``k`` of a colour image (a gray image for every ``k``) as float64, once per scoring."""
    return (img if img.ndim == 2 else img[..., k]).astype(np.float64)


def _score_vifb(info: MetricInfo, ir, vis, fused) -> float:
    if fused.ndim == 2:  # VIFB's single-band path: each metric collapses colour sources itself
        rounded = not info.vifb_unrounded_gray
        return info.vifb(matlab_gray(ir, rounded), matlab_gray(vis, rounded), _channel(fused, 0))
    if info.vifb_whole_colour:
        return info.vifb(None, None, fused.astype(np.float64))
    return float(np.mean([info.vifb(_channel(ir, k), _channel(vis, k), _channel(fused, k)) for k in range(3)]))


def compute_metrics(ir, vis, fused, names=None, convention: str = DEFAULT_CONVENTION) -> dict[str, float]:
    """Score ``fused`` against the sources ``ir`` and ``vis``: {canonical name: value}.

    Images are uint8, (H, W) or (H, W, 3) RGB, all the same size. ``names`` (any case)
    defaults to every metric in ``METRICS``; ``convention`` is one of ``CONVENTIONS``:

    * ``mmif``: every image is reduced to CDDFuse's gray (OpenCV BGR2GRAY, rounded).
    * ``vifb``: a colour fused image is scored channel by channel against the matching
      source channels (a gray source is used for every channel) and the scores averaged;
      a gray fused image is scored against MATLAB-``rgb2gray`` sources, rounded to uint8
      or not exactly where the VIFB metric does so (PSNR, RMSE and Qabf convert doubles).
      Where VIFB itself fails (Qcv, Qcb with a colour source and a gray fusion; a colour
      fusion with a gray VIS) this is what it is extended to.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    selected = _resolve(names)
    ir, vis, fused = _check(ir, vis, fused)
    with sharing():  # intermediate results several metrics need are computed once (see _filters.shared)
        if convention == "mmif":
            a, b, f = cv2_gray(ir), cv2_gray(vis), cv2_gray(fused)
            return {name: float(METRICS[name].mmif(a, b, f)) for name in selected}
        return {name: float(_score_vifb(METRICS[name], ir, vis, fused)) for name in selected}
