"""Structure-based metrics: SSIM (two definitions), MEF-MS-SSIM and the multi-scale pixel VIF.

Every function takes ``(a, b, f)``: IR, VIS and fused, 2-D float arrays on the 0..255 scale.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ._filters import (as_float32, box_sum_rows, filter_rows, filter_valid, gaussian_1d, row_bands, row_blocks,
                       valid_sum)


def _mean7(img: np.ndarray) -> np.ndarray:
    """scipy's ``uniform_filter(img, 7)`` (reflect border) of an (H, W) float32 image of integers up to 65025, bit for bit.

    scipy takes a running mean in double down the columns, then along the rows, rounding
    to float32 after each pass. Here the column sums of 7 integers are exact in OpenCV's
    float32 box sum, and their float32 quotient by 7 is the rounding of scipy's double
    (an integer /7 is never within its running-sum error of a float32 tie); the row pass stays scipy's.
    """
    cols = cv2.boxFilter(img, -1, (1, 7), normalize=False, borderType=cv2.BORDER_REFLECT)
    cols /= np.float32(7)
    return ndimage.uniform_filter1d(cols, 7, axis=1)


def ssim_mmif(a, b, f) -> float:
    """SSIM(F, A) + SSIM(F, B) as CDDFuse computes it with scikit-image 0.19 on float32 0..255 images.

    Quirks kept: 7×7 uniform window, sample covariance (N/(N−1)), ``data_range = 2``
    (skimage's default for float dtypes), so C1 = 4e-4 and C2 = 3.6e-3 are near zero
    and flat regions score erratically; float32 arithmetic; mean over the map minus a
    3-pixel border. Identical images give 2. NaN when a side is below 7 pixels.

    scikit-image's ``structural_similarity(F, Y)`` operation for operation, for Y = A and B in one
    pass (the terms of F computed once). The means are scipy's to the bit (``_mean7``): in flat windows
    the float32 variances are rounding noise that the near-zero constants amplify, so another filter
    moves the score.
    """
    if min(f.shape) < 7:
        return float("nan")
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # data_range = 2: the float dtype range, not the data's
    cov_norm = 49 / 48
    x = as_float32(f)
    ux, uxx = _mean7(x), _mean7(x * x)
    sources = [(_mean7(y), _mean7(y * y), _mean7(x * y)) for y in (as_float32(a), as_float32(b))]
    h, w = x.shape
    totals = [0.0, 0.0]
    # The map minus its 3-pixel border, a block of rows at a time; the work runs on whole (contiguous) rows,
    # faster than on the column slice, which is summed at the end.
    for block in row_blocks((h - 6, w)):
        rows = slice(block.start + 3, block.stop + 3)
        mx = ux[rows]
        vx = cov_norm * (uxx[rows] - mx * mx)
        mx2, mx_sq = 2 * mx, mx ** 2
        for k, (uy, uyy, uxy) in enumerate(sources):
            my = uy[rows]
            vy = cov_norm * (uyy[rows] - my * my)
            vxy = cov_norm * (uxy[rows] - mx * my)
            s = ((mx2 * my + c1) * (2 * vxy + c2)) / ((mx_sq + my ** 2 + c1) * (vx + vy + c2))
            totals[k] += np.ascontiguousarray(s[:, 3: w - 3]).sum(dtype=np.float64)
    n = (h - 6) * (w - 6)
    return float(totals[0] / n) + float(totals[1] / n)


_WANG = gaussian_1d(11, 1.5)


def _ssim_wang(x: np.ndarray, y: np.ndarray) -> float:
    if min(x.shape) < 11:
        return float("nan")
    total = sum(_ssim_wang_sum(x[band], y[band]) for band in row_bands(x.shape, 11))
    return float(total / ((x.shape[0] - 10) * (x.shape[1] - 10)))


def _ssim_wang_sum(x: np.ndarray, y: np.ndarray) -> float:
    """The sum of Wang's SSIM map over one band of rows (its 'valid' part)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ux, uy = filter_rows(x, _WANG), filter_rows(y, _WANG)  # full-width rows: see filter_rows
    vx, vy, vxy = filter_rows(x * x, _WANG), filter_rows(y * y, _WANG), filter_rows(x * y, _WANG)
    vx -= ux * ux
    vy -= uy * uy
    vxy -= ux * uy
    return valid_sum(((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2)), 11)


def ssim_vifb(a, b, f) -> float:
    """SSIM(VIS, F) + SSIM(IR, F) with Wang's window: 11×11 Gaussian σ 1.5, L = 255, 'valid' map (VIFB ``metricsSsim``).

    Identical images give 2; typical fusions 1.3–1.6. NaN when a side is below 11 pixels.
    """
    return _ssim_wang(b, f) + _ssim_wang(a, f)


def _mef_ssim(x0: np.ndarray, x1: np.ndarray, f: np.ndarray) -> float:
    """Ma et al.'s MEF-SSIM of ``f`` against the two sources, one scale (Tang's ``mef_ssim.m`` vectorised).

    Window statistics of the sources are box sums, exact for grey levels and their 2×2
    averages, so a flat window is recognised exactly as the per-pixel loop does. The
    maps are computed band by band (``row_bands``), where their dozen statistics stay in cache.

    Tang's patch model, per window: source patches x_i with box means μ_i and box
    covariances C_ij weigh in with c_i = w_i / ‖x_i − μ_i‖ (w_i the exposure weights),
    and the desired patch is ``s · Σ c_i (x_i − μ_i)`` rescaled to the largest source
    contrast (``s`` = max‖x_i − μ_i‖ / ‖Σ c_i (x_i − μ_i)‖). Its Gaussian statistics
    against ``f`` reduce to the Gaussian covariances V of the sources and ``f`` (the
    box means cancel) and depend on the c_i only through u = c_1 / c_0: with
    N = C00 + 2u·C01 + u²·C11, σ1² = max‖·‖² (V00 + 2u·V01 + u²·V11) / N and
    σ12 = max‖·‖ (V0f + u·V1f) / √N (both 0 where N ≤ 0).
    """
    n = 11
    total = sum(_mef_ssim_sum(x0[band], x1[band], f[band]) for band in row_bands(f.shape, n))
    return float(total / ((f.shape[0] - n + 1) * (f.shape[1] - n + 1)))


def _box_covariance(x: np.ndarray, y: np.ndarray, bx: np.ndarray, by: np.ndarray, n: int) -> np.ndarray:
    """``(n²·Σxy − Σx·Σy) / n²`` over every n×n window, from the box sums ``bx``, ``by`` (rows, see ``box_sum_rows``)."""
    c = box_sum_rows(x * y, n)
    c *= n * n
    c -= bx * by
    c /= n * n
    return c


def _mef_ssim_sum(x0: np.ndarray, x1: np.ndarray, f: np.ndarray) -> float:
    """The sum of the MEF-SSIM map of one band of rows (its 'valid' part): see :func:`_mef_ssim`.

    The formulas there, operation for operation in their order, in place on full-width rows
    (``filter_rows``): the same roundings, several times faster than on the 'valid' column slices.
    """
    n = 11
    eps = np.finfo(float).eps
    r_cap = 0.95  # tan(π/2 · r) > 10 from r ≈ 0.9366 on, so p = 10 there, as for Tang's r > 1 → 1 − eps
    const = (0.03 * 255) ** 2
    b0, b1 = box_sum_rows(x0, n), box_sum_rows(x1, n)
    # Exact numerators (grey levels and their dyadic means): c00 and c11 are ≥ 0, also in the border columns.
    c00, c11 = _box_covariance(x0, x0, b0, b0, n), _box_covariance(x1, x1, b1, b1, n)
    c01x2 = _box_covariance(x0, x1, b0, b1, n)
    c01x2 *= 2
    ed0, ed1 = np.sqrt(c00), np.sqrt(c11)  # ‖x_i − μ_i‖ (+ 0.001 below)
    r = c00 + c11
    r += c01x2
    np.maximum(r, 0, out=r)
    np.sqrt(r, out=r)
    r += eps
    spread = ed0 + ed1
    spread += eps
    r /= spread
    p = np.minimum(r, r_cap, out=r)
    p *= np.pi / 2
    np.tan(p, out=p)
    np.minimum(p, 10.0, out=p)
    ed0 += 0.001
    ed1 += 0.001
    u = ed1 / n  # c_1 / c_0 = ((ed1/n)^p + eps)·ed0 / (((ed0/n)^p + eps)·ed1)
    np.power(u, p, out=u)
    u += eps
    u *= ed0
    den = np.divide(ed0, n, out=spread)
    np.power(den, p, out=den)
    den += eps
    den *= ed1
    u /= den
    norm2 = np.multiply(u, c11, out=c11)  # c00 + u·(2·c01 + u·c11)
    norm2 += c01x2
    norm2 *= u
    norm2 += c00
    ok = norm2 > 0
    np.maximum(norm2, 0, out=norm2)
    np.sqrt(norm2, out=norm2)
    top = np.divide(np.maximum(ed0, ed1, out=ed0), norm2, out=np.zeros_like(norm2), where=ok)  # the scale times c_0
    g = _WANG
    m0, m1, mf = filter_rows(x0, g), filter_rows(x1, g), filter_rows(f, g)
    sigma1 = filter_rows(x1 * x1, g)  # σ1² = top²·(v00 + u·(2·v01 + u·v11))
    sigma1 -= m1 * m1
    sigma1 *= u
    v01x2 = filter_rows(x0 * x1, g)
    v01x2 -= m0 * m1
    v01x2 *= 2
    sigma1 += v01x2
    sigma1 *= u
    v00 = filter_rows(x0 * x0, g)
    v00 -= m0 * m0
    sigma1 += v00
    sigma1 *= np.square(top, out=v00)
    sigma12 = filter_rows(x1 * f, g)  # σ12 = top·(v0f + u·v1f)
    sigma12 -= m1 * mf
    sigma12 *= u
    v0f = filter_rows(x0 * f, g)
    v0f -= m0 * mf
    sigma12 += v0f
    sigma12 *= top
    sigma12 *= 2
    sigma12 += const
    sigma2 = filter_rows(f * f, g)
    sigma2 -= mf * mf
    sigma1 += sigma2
    sigma1 += const
    sigma12 /= sigma1
    return valid_sum(sigma12, n)


def _halve(img: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric')`` then every second pixel: 2×2 means, the last row/column repeated
    where the size is odd. OpenCV's area resize sums each 2×2 block and scales it by 1/4: exact, like any
    order of the sum, on the grey levels and their dyadic means that MS-SSIM halves."""
    h, w = img.shape
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2)), mode="edge")
    return cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)


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
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    scores = []
    for level in range(3):
        if level:
            a, b, f = _halve(a), _halve(b), _halve(f)
        scores.append(_mef_ssim(a, b, f))
    return float(np.prod(np.asarray(scores) ** _MS_WEIGHTS))


_VIF_WINDOWS = tuple(gaussian_1d(n, n / 5.0) for n in (17, 9, 5, 3))


def _vif_pyramid(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """The image at VIF's four scales: from the second on, the previous one filtered 'valid' with
    this scale's window and decimated by 2."""
    levels = [np.asarray(img, dtype=np.float64)]
    for g in _VIF_WINDOWS[1:]:
        levels.append(np.ascontiguousarray(filter_valid(levels[-1], g)[::2, ::2]))
    return tuple(levels)


def _vif_band(ref: np.ndarray, dist: np.ndarray, g: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """VIF's (numerator, denominator) sums over one band of rows of one scale: ``mu2`` and ``s2`` are the
    distorted band's local mean and variance σ2² (clamped at 0), which both terms share.

    The reference's fix-ups, per pixel: where σ1² < ε (flat reference) the pixel adds nothing
    to either sum; where σ2² < ε or the gain is negative it adds only to the denominator;
    elsewhere σv² = σ2² − g·σ12 is clamped below at ε.
    """
    sigma_nsq, eps = 2.0, 1e-10
    mu1 = filter_rows(ref, g)  # full-width rows, in place: see filter_rows
    s1 = filter_rows(ref * ref, g)
    s1 -= mu1 * mu1
    np.maximum(s1, 0, out=s1)
    s12 = filter_rows(ref * dist, g)
    s12 -= mu1 * mu2
    gain = s1 + eps
    np.divide(s12, gain, out=gain)
    sv = gain * s12
    np.subtract(s2, sv, out=sv)
    np.maximum(sv, eps, out=sv)
    textured = s1 >= eps
    ok = s2 >= eps
    ok &= textured
    ok &= gain > 0
    # The references sum log10 terms; their ratio is the same in natural logarithms. The terms are ≥ 0 and
    # finite everywhere: zeroed where they do not count (log1p(0) = 0), they are summed unmasked.
    info = gain * gain
    info *= s1
    sv += sigma_nsq
    info /= sv
    info *= ok
    base = np.divide(s1, sigma_nsq, out=mu1)
    base *= textured
    return np.array([valid_sum(np.log1p(info, out=info), len(g)), valid_sum(np.log1p(base, out=base), len(g))])


def vif(a, b, f) -> float:
    """VIFF as the field uses it: LIVE's pixel-domain multi-scale VIF, VIF(A, F) + VIF(B, F).

    4 scales, Gaussian windows N = 17, 9, 5, 3 with σ = N/5, 'valid' filtering and
    2× decimation, σn² = 2, computed on doubles (CDDFuse's ``compare_viff``). A flat
    reference (0/0) scores 1 per term, as the evaluator's NaN fallback does. VIFB has no
    VIF; its convention uses this definition too.
    """
    sources, fused = [_vif_pyramid(a), _vif_pyramid(b)], _vif_pyramid(f)
    sums = np.zeros((2, 2))  # (VIF(A, F), VIF(B, F)) × (numerator, denominator)
    for level, g in enumerate(_VIF_WINDOWS):
        if min(fused[level].shape) < len(g):
            break
        for band in row_bands(fused[level].shape, len(g)):  # the band's maps stay in cache (see row_bands)
            dist = fused[level][band]
            mu2, s2 = filter_rows(dist, g), filter_rows(dist * dist, g)
            s2 -= mu2 * mu2
            np.maximum(s2, 0, out=s2)
            for term, pyramid in enumerate(sources):
                sums[term] += _vif_band(pyramid[level][band], dist, g, mu2, s2)
    return float(sum(num / den if den > 0 else 1.0 for num, den in sums))
