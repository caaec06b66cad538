"""Structure-based metrics: SSIM (two definitions), MEF-MS-SSIM and the multi-scale pixel VIF.

Every function takes ``(a, b, f)``: IR, VIS and fused, 2-D float arrays on the 0..255 scale.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._filters import box_sum_valid, filter_valid, gaussian_1d, local_mean, product, shared


def _mean7(img: np.ndarray) -> np.ndarray:
    return ndimage.uniform_filter(img, size=7)


def _ssim_skimage(x: np.ndarray, ux: np.ndarray, uxx: np.ndarray, y: np.ndarray) -> float:
    """scikit-image 0.19 ``structural_similarity(x, y)`` defaults for float32 data, operation for operation.

    ``ux`` and ``uxx`` are the 7×7 means of ``x`` and ``x * x``, shared by the two calls of ``ssim_mmif``.
    scipy's running-sum uniform filter is kept: in flat windows the float32 variances are
    rounding noise that the near-zero constants amplify, so another filter moves the score.
    """
    y = y.astype(np.float32)
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # data_range = 2: the float dtype range, not the data's
    cov_norm = 49 / 48
    uy = _mean7(y)
    uyy, uxy = _mean7(y * y), _mean7(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean(dtype=np.float64))


def ssim_mmif(a, b, f) -> float:
    """SSIM(F, A) + SSIM(F, B) as CDDFuse computes it with scikit-image 0.19 on float32 0..255 images.

    Quirks kept: 7×7 uniform window, sample covariance (N/(N−1)), ``data_range = 2``
    (skimage's default for float dtypes), so C1 = 4e-4 and C2 = 3.6e-3 are near zero
    and flat regions score erratically; float32 arithmetic; mean over the map minus a
    3-pixel border. Identical images give 2. NaN when a side is below 7 pixels.
    """
    if min(f.shape) < 7:
        return float("nan")
    f = f.astype(np.float32)
    uf, uff = _mean7(f), _mean7(f * f)
    return _ssim_skimage(f, uf, uff, a) + _ssim_skimage(f, uf, uff, b)


_WANG = gaussian_1d(11, 1.5)


def _ssim_wang(x: np.ndarray, y: np.ndarray) -> float:
    if min(x.shape) < 11:
        return float("nan")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ux, uy = local_mean(x, _WANG), local_mean(y, _WANG)
    vx = local_mean(product(x, x), _WANG) - ux * ux
    vy = local_mean(product(y, y), _WANG) - uy * uy
    vxy = local_mean(product(x, y), _WANG) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim_vifb(a, b, f) -> float:
    """SSIM(VIS, F) + SSIM(IR, F) with Wang's window: 11×11 Gaussian σ 1.5, L = 255, 'valid' map (VIFB ``metricsSsim``).

    Identical images give 2; typical fusions 1.3–1.6. NaN when a side is below 11 pixels.
    """
    return _ssim_wang(b, f) + _ssim_wang(a, f)


def _mef_ssim(seq: list[np.ndarray], f: np.ndarray) -> float:
    """Ma et al.'s MEF-SSIM of ``f`` against the source sequence, one scale (Tang's ``mef_ssim.m`` vectorised).

    Window statistics of the sources are box sums, exact for grey levels and their 2×2
    averages, so a flat window is recognised exactly as the per-pixel loop does. The
    Gaussian window statistics of the first scale are shared with ``ssim_vifb``.
    """
    n, k = 11, len(seq)
    area = n * n
    s1 = [box_sum_valid(x, n) for x in seq]
    cov = {(i, j): (area * box_sum_valid(product(seq[i], seq[j]), n) - s1[i] * s1[j]) / area
           for i in range(k) for j in range(i, k)}
    spread = [np.sqrt(np.maximum(cov[i, i], 0)) for i in range(k)]  # norm of the window minus its mean
    ed = [s + 0.001 for s in spread]
    mu = [s / area for s in s1]
    total = sum(cov[i, j] * (1 if i == j else 2) for (i, j) in cov)
    eps = np.finfo(float).eps
    r = (np.sqrt(np.maximum(total, 0)) + eps) / (sum(spread) + eps)
    r = np.where(r > 1, 1 - eps, r)
    p = np.minimum(np.tan(np.pi / 2 * r), 10.0)
    w = [(e / n) ** p + eps for e in ed]
    wsum = sum(w)
    c = [wi / wsum / e for wi, e in zip(w, ed)]  # weight of each source's normalised patch
    max_ed = np.maximum.reduce(ed)

    g = _WANG
    gf, gff = local_mean(f, g), local_mean(product(f, f), g)
    gx = [local_mean(x, g) for x in seq]
    gxf = [local_mean(product(x, f), g) for x in seq]
    norm2 = sum(c[i] * c[j] * cov[i, j] * (1 if i == j else 2) for (i, j) in cov)
    scale = np.zeros_like(norm2)
    np.divide(max_ed, np.sqrt(norm2), out=scale, where=norm2 > 0)
    mu1 = scale * sum(c[i] * (gx[i] - mu[i]) for i in range(k))
    second = 0.0
    for (i, j) in cov:
        gxx = local_mean(product(seq[i], seq[j]), g)
        term = gxx - mu[j] * gx[i] - mu[i] * gx[j] + mu[i] * mu[j]
        second = second + c[i] * c[j] * term * (1 if i == j else 2)
    sigma1 = scale * scale * second - mu1 * mu1
    sigma2 = gff - gf * gf
    sigma12 = scale * sum(c[i] * (gxf[i] - mu[i] * gf) for i in range(k)) - mu1 * gf
    const = (0.03 * 255) ** 2
    return float(((2 * sigma12 + const) / (sigma1 + sigma2 + const)).mean())


def _halve(img: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric')`` then every second pixel: 2×2 means, the last row/column repeated."""
    padded = np.pad(img, ((0, 1), (0, 1)), mode="symmetric")
    return (padded[:-1:2, :-1:2] + padded[1::2, :-1:2] + padded[:-1:2, 1::2] + padded[1::2, 1::2]) / 4


_MS_WEIGHTS = np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001)


def ms_ssim(a, b, f) -> float:
    """Multi-scale MEF-SSIM (Ma, Zeng & Wang 2015) of F against the sequence (IR, VIS): Tang's ``analysis_ms_ssim``.

    3 scales, 2×2-mean downsampling, scale weights (0.0448, 0.2856, 0.3001) normalised,
    K = 0.03, 11×11 Gaussian σ 1.5; the ``mmif`` convention uses it because the CDDFuse
    evaluator has no MS-SSIM, and ``vifb`` because VIFB has none either. Identical
    sources and fusion give 1. NaN when the smaller side is below 44 pixels (Tang returns −Inf).
    """
    if min(f.shape) / 4 < 11:
        return float("nan")
    seq = [np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)]
    f = np.asarray(f, dtype=np.float64)
    scores = []
    for level in range(3):
        if level:
            seq, f = [_halve(x) for x in seq], _halve(f)
        scores.append(_mef_ssim(seq, f))
    return float(np.prod(np.asarray(scores) ** _MS_WEIGHTS))


_VIF_WINDOWS = tuple(gaussian_1d(n, n / 5.0) for n in (17, 9, 5, 3))


@shared
def _vif_pyramid(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """The image at VIF's four scales: from the second on, the previous one filtered 'valid' with
    this scale's window and decimated by 2 (the fused image's pyramid serves both VIF terms)."""
    levels = [np.asarray(img, dtype=np.float64)]
    for g in _VIF_WINDOWS[1:]:
        levels.append(np.ascontiguousarray(filter_valid(levels[-1], g)[::2, ::2]))
    return tuple(levels)


def _vif_single(ref: np.ndarray, dist: np.ndarray) -> float:
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for ref, dist, g in zip(_vif_pyramid(ref), _vif_pyramid(dist), _VIF_WINDOWS):
        if min(ref.shape) < len(g):
            break
        mu1, mu2 = filter_valid(ref, g), local_mean(dist, g)
        s1 = np.maximum(filter_valid(ref * ref, g) - mu1 * mu1, 0)
        s2 = np.maximum(local_mean(product(dist, dist), g) - mu2 * mu2, 0)
        s12 = filter_valid(ref * dist, g) - mu1 * mu2
        gain = s12 / (s1 + eps)
        sv = s2 - gain * s12
        flat1, flat2 = s1 < eps, s2 < eps
        gain[flat1] = 0
        sv[flat1] = s2[flat1]
        s1 = np.where(flat1, 0, s1)
        gain[flat2] = 0
        sv[flat2] = 0
        neg = gain < 0
        sv[neg] = s2[neg]
        gain[neg] = 0
        sv = np.maximum(sv, eps)
        # The references sum log10 terms; their ratio is the same in natural logarithms.
        num += np.log1p(gain * gain * s1 / (sv + sigma_nsq)).sum()
        den += np.log1p(s1 / sigma_nsq).sum()
    return float(num / den) if den > 0 else 1.0


def vif(a, b, f) -> float:
    """VIFF as the field uses it: LIVE's pixel-domain multi-scale VIF, VIF(A, F) + VIF(B, F).

    4 scales, Gaussian windows N = 17, 9, 5, 3 with σ = N/5, 'valid' filtering and
    2× decimation, σn² = 2, computed on doubles (CDDFuse's ``compare_viff``). A flat
    reference (0/0) scores 1 per term, as the evaluator's NaN fallback does. VIFB has no
    VIF; its convention uses this definition too.
    """
    return _vif_single(a, f) + _vif_single(b, f)
