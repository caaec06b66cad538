"""Human-visual-system metrics from Z. Liu's toolbox as VIFB ships them: Chen–Varshney Qcv and Chen–Blum Qcb.

Every function takes ``(a, b, f)``: IR, VIS and fused, 2-D float arrays on the 0..255 scale.
Neither the CDDFuse evaluator nor Tang's code has these; both conventions use VIFB's.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from ._filters import (block_sum, centered_frequencies, fft_filter, normalize_255,
                       packed_response, row_blocks, safe_divide, sep_filter, sobel, spectrum)


def _sobel_strength_5(img: np.ndarray) -> np.ndarray:
    """(Sobel magnitude)⁵ with zero padding."""
    gx = sobel(img, 1, 0, cv2.BORDER_CONSTANT)
    gy = sobel(img, 0, 1, cv2.BORDER_CONSTANT)
    g2 = (gx * gx + gy * gy).astype(np.float64)  # exact in float32; the fifth power is not
    return g2 * g2 * np.sqrt(g2)


@functools.lru_cache(maxsize=4)
def _csf_qcv(shape: tuple[int, int]) -> np.ndarray:
    """Mannos–Sakrison CSF over the FFT grid of ``shape``, frequencies scaled by cols/8 and rows/8, packed (once per size)."""
    rows, cols = shape
    u, v = centered_frequencies(shape)
    r = np.hypot(u * cols / 8, v * rows / 8)
    csf = packed_response(2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1)))
    csf.flags.writeable = False
    return csf


@functools.lru_cache(maxsize=4)
def _csf_qcb(shape: tuple[int, int]) -> np.ndarray:
    """The DoG CSF of Qcb over the FFT grid of ``shape``, frequencies scaled by cols/30 and rows/30, packed (once per size)."""
    rows, cols = shape
    u, v = centered_frequencies(shape)
    r = np.hypot(u * cols / 30, v * rows / 30)
    csf = packed_response(np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2)))
    csf.flags.writeable = False
    return csf


def qcv(a, b, f) -> float:
    """Chen–Varshney Q_CV, lower is better (VIFB ``metricsQcv``, from Liu's ``metricChen.m``).

    Images min–max normalised to 0..255 and rounded; saliency = Σ (Sobel magnitude)^α,
    α = 5, over 16×16 blocks (zero-padded at the right/bottom edge); the differences
    VIS−F and IR−F are filtered by the Mannos–Sakrison CSF with frequencies scaled by
    cols/8 and rows/8, and their block mean square (over the padded 256 pixels) is
    weighted by the saliencies. 0 when neither source has an edge (the reference gives NaN).
    """
    a, b, f = normalize_255(a), normalize_255(b), normalize_255(f)
    csf = _csf_qcv(f.shape)
    num = den = 0.0
    for src in (b, a):
        saliency = block_sum(_sobel_strength_5(src), 16)
        # FFT(src − F) = FFT(src) − FFT(F): the spectra are shared with Qcb.
        distortion = block_sum(fft_filter(spectrum(src) - spectrum(f), csf) ** 2, 16) / 256
        num += (saliency * distortion).sum()
        den += saliency.sum()
    return safe_divide(num, den, 0.0)


def _gaussian_31(sigma: float) -> np.ndarray:
    """Liu's unnormalised 31×31 Gaussian ``exp(-r²/2σ²) / (2πσ²)``, as the 1-D factor of its outer product."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


_G1, _G2 = _gaussian_31(2.0), _gaussian_31(4.0)


def _blurs(img: np.ndarray, csf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G1∗I`` and ``G2∗I`` of the CSF-filtered image ``I`` (``filter2``, zero padding)."""
    filtered = fft_filter(spectrum(img), csf)
    return sep_filter(filtered, _G1), sep_filter(filtered, _G2)


def _masked_contrast(blur1: np.ndarray, blur2: np.ndarray) -> np.ndarray:
    """C³/(C² + 1e-4) of the local contrast ``C = |G1∗I / G2∗I − 1|``."""
    contrast = np.abs(safe_divide(blur1, blur2, 1.0) - 1)
    c2 = contrast * contrast
    return c2 * contrast / (c2 + 1e-4)


def qcb(a, b, f) -> float:
    """Chen–Blum Q_CB, 0..1, higher is better (VIFB ``metricsQcb``, from Liu's ``metricChenBlum.m``).

    Images min–max normalised to 0..255 and rounded; DoG CSF exp(−(r/15.387)²) −
    0.7622·exp(−(r/1.3456)²) with frequencies scaled by cols/30 and rows/30; local
    contrast G1∗I / G2∗I − 1 with unnormalised 31×31 Gaussians σ 2 and 4 (zero padding);
    masked contrast C³/(C² + 1e-4); preservation = min/max ratio, weighted by the
    sources' squared masked contrasts. Where the reference divides 0 by 0 (flat images)
    the ratio counts as 1 and the two weights as ½ each.
    """
    a, b, f = normalize_255(a), normalize_255(b), normalize_255(f)
    csf = _csf_qcb(f.shape)
    blurs = [_blurs(x, csf) for x in (b, a, f)]
    total = 0.0
    for rows in row_blocks(f.shape):
        ca, cb, cf = (_masked_contrast(blur1[rows], blur2[rows]) for blur1, blur2 in blurs)

        def preserved(c):
            return safe_divide(np.minimum(c, cf), np.maximum(c, cf), 1.0)

        ca2, cb2 = ca * ca, cb * cb
        wa = safe_divide(ca2, ca2 + cb2, 0.5)
        total += (wa * preserved(ca) + (1 - wa) * preserved(cb)).sum()
    return float(total / f.size)
