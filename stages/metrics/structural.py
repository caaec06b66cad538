"""Structure-based metrics: SSIM (two definitions), MEF-MS-SSIM and the multi-scale pixel VIF.

Every function takes ``(a, b, f)``: IR, VIS and fused, 2-D float arrays on the 0..255 scale.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._filters import box_sum_valid, filter_valid, gaussian_1d, local_mean, product, row_blocks, shared


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

    Tang's patch model, per window: source patches x_i with box means μ_i and box
    covariances C_ij weigh in with c_i = w_i / ‖x_i − μ_i‖ (w_i the exposure weights),
    and the desired patch is ``s · Σ c_i (x_i − μ_i)`` rescaled to the largest source
    contrast (``s`` = max‖x_i − μ_i‖ / ‖Σ c_i (x_i − μ_i)‖). Its Gaussian statistics
    against ``f`` reduce to the Gaussian covariances V of the sources and ``f``:
    σ1² = Σ t_i t_j V_ij, σ12 = Σ t_i V_if with t_i = s·c_i (the box means cancel),
    and a common factor of the c_i (Tang divides by Σ w) cancels in ``t``.
    """
    n, k = 11, len(seq)
    area = n * n
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    s1 = [box_sum_valid(x, n) for x in seq]
    s2 = {(i, j): box_sum_valid(product(seq[i], seq[j]), n) for (i, j) in pairs}
    g = _WANG
    gf, gff = local_mean(f, g), local_mean(product(f, f), g)
    gx = [local_mean(x, g) for x in seq]
    gxf = [local_mean(product(x, f), g) for x in seq]
    gxx = {(i, j): local_mean(product(seq[i], seq[j]), g) for (i, j) in pairs}
    eps = np.finfo(float).eps
    const = (0.03 * 255) ** 2
    total = 0.0
    for rows in row_blocks(gf.shape):
        cov = {(i, j): (area * s2[i, j][rows] - s1[i][rows] * s1[j][rows]) / area for (i, j) in pairs}
        spread = [np.sqrt(np.maximum(cov[i, i], 0)) for i in range(k)]  # norm of the window minus its mean
        ed = [s + 0.001 for s in spread]
        both = sum(cov[i, j] * (1 if i == j else 2) for (i, j) in pairs)
        r = (np.sqrt(np.maximum(both, 0)) + eps) / (sum(spread) + eps)
        r[r > 1] = 1 - eps
        p = np.minimum(np.tan(np.pi / 2 * r), 10.0)
        c = [((e / n) ** p + eps) / e for e in ed]
        norm2 = sum(c[i] * c[j] * cov[i, j] * (1 if i == j else 2) for (i, j) in pairs)
        scale = np.zeros_like(norm2)
        np.divide(np.maximum.reduce(ed), np.sqrt(norm2), out=scale, where=norm2 > 0)
        t = [ci * scale for ci in c]
        g_f = gf[rows]
        sigma1 = sum(t[i] * t[j] * (gxx[i, j][rows] - gx[i][rows] * gx[j][rows]) * (1 if i == j else 2)
                     for (i, j) in pairs)
        sigma2 = gff[rows] - g_f * g_f
        sigma12 = sum(t[i] * (gxf[i][rows] - gx[i][rows] * g_f) for i in range(k))
        total += ((2 * sigma12 + const) / (sigma1 + sigma2 + const)).sum()
    return float(total / gf.size)


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
    """VIF(ref, dist). The reference's fix-ups, per pixel: where σ1² < ε (flat reference) the pixel
    adds nothing to either sum; where σ2² < ε or the gain is negative it adds only to the
    denominator; elsewhere σv² = σ2² − g·σ12 is clamped below at ε."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for ref, dist, g in zip(_vif_pyramid(ref), _vif_pyramid(dist), _VIF_WINDOWS):
        if min(ref.shape) < len(g):
            break
        mu1, mu2 = filter_valid(ref, g), local_mean(dist, g)
        e11, e22 = filter_valid(product(ref, ref), g), local_mean(product(dist, dist), g)
        e12 = filter_valid(product(ref, dist), g)
        for rows in row_blocks(mu1.shape):
            m1, m2 = mu1[rows], mu2[rows]
            s1 = np.maximum(e11[rows] - m1 * m1, 0)
            s2 = np.maximum(e22[rows] - m2 * m2, 0)
            s12 = e12[rows] - m1 * m2
            gain = s12 / (s1 + eps)
            sv = np.maximum(s2 - gain * s12, eps)
            textured = s1 >= eps
            ok = textured & (s2 >= eps) & (gain > 0)
            # The references sum log10 terms; their ratio is the same in natural logarithms.
            num += np.log1p(np.where(ok, gain * gain * s1 / (sv + sigma_nsq), 0)).sum()
            den += np.log1p(np.where(textured, s1, 0) / sigma_nsq).sum()
    return float(num / den) if den > 0 else 1.0


def vif(a, b, f) -> float:
    """VIFF as the field uses it: LIVE's pixel-domain multi-scale VIF, VIF(A, F) + VIF(B, F).

    4 scales, Gaussian windows N = 17, 9, 5, 3 with σ = N/5, 'valid' filtering and
    2× decimation, σn² = 2, computed on doubles (CDDFuse's ``compare_viff``). A flat
    reference (0/0) scores 1 per term, as the evaluator's NaN fallback does. VIFB has no
    VIF; its convention uses this definition too.
    """
    return _vif_single(a, f) + _vif_single(b, f)
