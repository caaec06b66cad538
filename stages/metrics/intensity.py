"""Statistics of grey levels, gradients and histograms: EN, SD, SF, AG, EI, MI, CE, MSE, RMSE, PSNR, CC, SCD.

Every function takes ``(a, b, f)``: IR, VIS and fused as 2-D float arrays on the 0..255 scale
(the convention layer in ``stages.metrics`` collapses colour first) and returns a float.
"""
from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

from ._filters import dot, normalize_255, shared, sobel

PSNR_RANGE_DB = (0.0, 100.0)  # degenerate images (zero error, all-black fusion) are clipped here instead of ±inf


@shared
def _levels(img: np.ndarray) -> np.ndarray:
    """The grey levels of ``img`` (integers 0..255) as uint8, the type OpenCV's histograms count fastest."""
    return img.astype(np.uint8)


@shared
def _histogram(img: np.ndarray) -> np.ndarray:
    """The fraction of the pixels at each grey level 0..255 (exact counts)."""
    return cv2.calcHist([_levels(img)], [0], None, [256], [0, 256]).ravel().astype(np.float64) / img.size


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def en_mmif(a, b, f) -> float:
    """Shannon entropy of the fused grey-level histogram, bits (256 bins of ``uint8(round(F))``)."""
    return _entropy_bits(_histogram(np.round(f)))


def en_vifb(a, b, f) -> float:
    """Shannon entropy in bits of the fused histogram, 256 bins of ``floor(F)`` (VIFB ``metricsEntropy``)."""
    return _entropy_bits(_histogram(np.floor(f)))


def sd(a, b, f) -> float:
    """Population standard deviation of the fused image (both conventions; VIFB calls it ``metricsVariance``)."""
    return float(np.std(f))


def sf_mmif(a, b, f) -> float:
    """Spatial frequency: ``sqrt(mean(dx²) + mean(dy²))``, each mean over the differences that exist."""
    return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def sf_vifb(a, b, f) -> float:
    """Spatial frequency with both sums divided by rows·cols (VIFB).

    VIFB indexes a colour image as a 2-D matrix, so a colour fused image is scored as
    its three channels placed side by side (differences across the seams included);
    ``f`` of shape (H, W, 3) reproduces that.
    """
    if f.ndim == 3:
        f = np.concatenate([f[..., k] for k in range(f.shape[2])], axis=1)
    n = f.size
    return float(np.sqrt((np.diff(f, axis=1) ** 2).sum() / n + (np.diff(f, axis=0) ** 2).sum() / n))


_CENTRAL = np.array([[-0.5, 0.0, 0.5]])


def _gradient_magnitude(f: np.ndarray) -> np.ndarray:
    """``sqrt((gx² + gy²)/2)`` of MATLAB's ``gradient`` (numpy's): central differences, one-sided at the edges.

    OpenCV correlates with (−½, 0, ½), bit for bit ``(f[i+1] − f[i−1]) / 2`` (halving is exact) and
    several times faster than numpy's slices across the rows; the edge columns and rows are then set.
    """
    if min(f.shape) < 2:
        return np.zeros_like(f)
    gx = cv2.filter2D(f, cv2.CV_64F, _CENTRAL, borderType=cv2.BORDER_REPLICATE)
    gx[:, 0], gx[:, -1] = f[:, 1] - f[:, 0], f[:, -1] - f[:, -2]
    gy = cv2.filter2D(f, cv2.CV_64F, _CENTRAL.T, borderType=cv2.BORDER_REPLICATE)
    gy[0], gy[-1] = f[1] - f[0], f[-1] - f[-2]
    return np.sqrt((gx ** 2 + gy ** 2) / 2)


def ag_mmif(a, b, f) -> float:
    """Average gradient: mean of ``sqrt((gx² + gy²)/2)`` with MATLAB-``gradient`` differences, divided by rows·cols."""
    return float(_gradient_magnitude(f).mean())


def ag_vifb(a, b, f) -> float:
    """Average gradient as VIFB: the same sum divided by (rows−1)(cols−1) (≈0.4 % above MMIF's)."""
    r, c = f.shape
    return float(_gradient_magnitude(f).sum() / max((r - 1) * (c - 1), 1))


def ei(a, b, f) -> float:
    """Edge intensity: mean Sobel magnitude of F, ``imfilter(F, fspecial('sobel'), 'replicate')`` (VIFB).

    The CDDFuse evaluator and Tang's code have no EI; the ``mmif`` convention applies
    VIFB's definition to the MMIF gray image.
    """
    # fspecial('sobel') is minus OpenCV's dy kernel; the sign does not reach the magnitude.
    gx = sobel(f, 0, 1, cv2.BORDER_REPLICATE)
    gy = sobel(f, 1, 0, cv2.BORDER_REPLICATE)
    return float(np.sqrt((gx * gx + gy * gy).astype(np.float64)).mean())


def _mutual_information_nats(x: np.ndarray, y: np.ndarray) -> float:
    """MI of two integer-valued 0..255 images from their joint histogram, natural log."""
    joint = cv2.calcHist([_levels(x), _levels(y)], [0, 1], None, [256, 256], [0, 256, 0, 256])
    p = joint.astype(np.float64) / x.size
    px, py = p.sum(1), p.sum(0)
    nz = p > 0
    return float(max((p[nz] * np.log(p[nz] / np.outer(px, py)[nz])).sum(), 0.0))


def mi_mmif(a, b, f) -> float:
    """MI(F, A) + MI(F, B) in nats (scikit-learn ``mutual_info_score`` on the grey levels, as CDDFuse)."""
    return _mutual_information_nats(f, a) + _mutual_information_nats(f, b)


def mi_vifb(a, b, f) -> float:
    """MI(VIS, F) + MI(IR, F) in nats after min–max stretching each image to 0..255 and rounding (VIFB ``metricsMutinf``)."""
    fl = normalize_255(f)
    return _mutual_information_nats(normalize_255(b), fl) + _mutual_information_nats(normalize_255(a), fl)


def _cross_entropy_bits(src: np.ndarray, f: np.ndarray) -> float:
    p1, p2 = _histogram(src), _histogram(f)
    nz = (p1 > 0) & (p2 > 0)
    return float((p1[nz] * np.log2(p1[nz] / p2[nz])).sum())


def ce(a, b, f) -> float:
    """Cross entropy, bits: mean of KL(hist(VIS) ‖ hist(F)) and KL(hist(IR) ‖ hist(F)); bins empty in either are skipped (VIFB).

    Lower is better. The CDDFuse evaluator and Tang's code have no CE; the ``mmif``
    convention applies VIFB's definition to the MMIF gray images.
    """
    return (_cross_entropy_bits(b, f) + _cross_entropy_bits(a, f)) / 2


@shared
def _squared_error(x: np.ndarray, f: np.ndarray) -> float:
    """``sum((x − f)²)``, once per pair of images (MSE, RMSE and PSNR share it); a dot product, no second temporary."""
    d = (x - f).ravel()
    return dot(d, d)


def mse(a, b, f) -> float:
    """Mean squared error, averaged over the two sources: ``(MSE(A,F) + MSE(B,F)) / 2``, grey levels² (0..255 scale)."""
    return (_squared_error(a, f) / a.size + _squared_error(b, f) / b.size) / 2


def rmse_mmif(a, b, f) -> float:
    """``sqrt`` of the MMIF MSE, grey levels. Neither CDDFuse nor Tang defines RMSE; this is the textbook one."""
    return float(np.sqrt(mse(a, b, f)))


def _vifb_error(x: np.ndarray, f: np.ndarray) -> float:
    return float(np.sqrt(_squared_error(x, f)) / x.size)


def rmse_vifb(a, b, f) -> float:
    """VIFB "RMSE": mean over the two sources of ``sqrt(sum((X−F)²)) / (rows·cols)`` — not a true RMSE (no square root of the mean)."""
    return (_vifb_error(b, f) + _vifb_error(a, f)) / 2


def _clip_psnr(value: float) -> float:
    return float(np.clip(value, *PSNR_RANGE_DB))


def psnr_mmif(a, b, f) -> float:
    """PSNR in dB with peak ``max(F)``: ``10·log10(max(F)² / MSE)`` (CDDFuse), clipped to 0..100 dB."""
    err = mse(a, b, f)
    peak = float(f.max()) ** 2
    if err == 0 or peak == 0:
        return PSNR_RANGE_DB[1] if err == 0 else PSNR_RANGE_DB[0]
    return _clip_psnr(10 * np.log10(peak / err))


def psnr_vifb(a, b, f) -> float:
    """VIFB PSNR: ``20·log10(255 / sqrt(E))`` with E its "RMSE" above (so values land near 60 dB), clipped to 0..100 dB."""
    err = rmse_vifb(a, b, f)
    if err == 0:
        return PSNR_RANGE_DB[1]
    return _clip_psnr(20 * np.log10(255 / np.sqrt(err)))


@shared
def _sums(x: np.ndarray) -> tuple[Fraction, Fraction]:
    """Σx and Σx², exact for grey levels (integer sums below 2**53 are exact in any order)."""
    v = x.ravel()
    return Fraction(float(v.sum())), Fraction(dot(v, v))


@shared
def _cross_sum(x: np.ndarray, y: np.ndarray) -> Fraction:
    """Σxy, exact for grey levels."""
    return Fraction(dot(x.ravel(), y.ravel()))


def _comoment(x: np.ndarray, y: np.ndarray) -> Fraction:
    """N·Σxy − Σx·Σy (N² times the covariance), exactly from the sums: CC and SCD share every sum."""
    cross = _sums(x)[1] if x is y else _cross_sum(x, y)
    return x.size * cross - _sums(x)[0] * _sums(y)[0]


def _correlation(xy: Fraction, xx: Fraction, yy: Fraction) -> float:
    """The correlation coefficient from the comoments of x and y; 0 when either is constant."""
    den = float(xx) * float(yy)
    return float(xy) / math.sqrt(den) if den > 0 else 0.0


def cc(a, b, f) -> float:
    """Correlation coefficient ``(r(A,F) + r(B,F)) / 2``; a constant image gives r = 0 (the references give NaN)."""
    ff = _comoment(f, f)
    return (_correlation(_comoment(a, f), _comoment(a, a), ff) + _correlation(_comoment(b, f), _comoment(b, b), ff)) / 2


def scd(a, b, f) -> float:
    """Sum of the correlations of differences: ``r(A, F−B) + r(B, F−A)``; a constant term gives 0 (the references give NaN).

    The comoments of F − B and F − A follow from those of A, B and F, exactly (no difference image is formed).
    """
    aa, bb, ff, ab, af, bf = (_comoment(x, y) for x, y in ((a, a), (b, b), (f, f), (a, b), (a, f), (b, f)))
    return _correlation(af - ab, aa, ff - 2 * bf + bb) + _correlation(bf - ab, bb, ff - 2 * af + aa)
