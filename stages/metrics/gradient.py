"""Edge-preservation metrics of Petrovic and Xydeas: Qabf and the (modified) artifact measure Nabf.

Every function takes ``(a, b, f)``: IR, VIS and fused, 2-D float arrays on the 0..255 scale.
"""
from __future__ import annotations

import cv2
import numpy as np

from ._filters import safe_divide, sobel

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _orientation(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``atan(num / den)`` in float32: ±π/2 where ``den`` is 0 (by the sign of ``num``), NaN where both are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.arctan(np.divide(num, den, dtype=np.float32))


def _qabf_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strength and orientation from ``conv2(img, sobel, 'same')`` (zero padding); orientation π/2 where the x response is 0."""
    # conv2 flips its kernel: conv2 with _SOBEL_X is minus OpenCV's dx correlation, with _SOBEL_Y its dy correlation.
    sx = -sobel(img, 1, 0, cv2.BORDER_CONSTANT)
    sy = sobel(img, 0, 1, cv2.BORDER_CONSTANT)
    return np.sqrt(sx * sx + sy * sy), np.where(sx == 0, np.float32(np.pi / 2), _orientation(sy, sx))


def _qabf_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    """Edge preservation per pixel, float32 (the strengths' tie test in their own precision)."""
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    # The reference's tie branch: where strengths are equal the "ratio" is the strength itself, not 1
    # (which also replaces the 0/0 of two zero strengths).
    with np.errstate(invalid="ignore"):
        ratio = np.minimum(g_src, g_f) / np.maximum(g_src, g_f)
    ratio = np.where(g_src == g_f, g_f, ratio).astype(np.float32, copy=False)  # VIFB's double strengths too
    align = np.abs(a_src - a_f, dtype=np.float32)
    align *= np.float32(-1 / (np.pi / 2))
    align += np.float32(1 - da)  # align − Da
    qg = np.exp(np.float32(kg) * (ratio - np.float32(dg)))
    qa = np.exp(np.float32(ka) * align)
    qg += 1
    qa += 1
    qg *= qa
    return np.float32(tg * ta) / qg


def _qabf_score(ga, aa, gb, ab, gf, af) -> float:
    num = (_qabf_preservation(ga, aa, gf, af) * ga).sum(dtype=np.float64) + \
        (_qabf_preservation(gb, ab, gf, af) * gb).sum(dtype=np.float64)
    return safe_divide(num, ga.sum(dtype=np.float64) + gb.sum(dtype=np.float64), 0.0)


def qabf(a, b, f) -> float:
    """Xydeas–Petrovic Q^AB/F (``mmif``): gradient-weighted edge preservation, 0..1.

    Sobel via true 2-D convolution with zero padding; Tg 0.9994, kg −15, Dg 0.5,
    Ta 0.9879, ka −22, Da 0.8; orientation ``atan(Sy/Sx)`` (π/2 where Sx = 0). Kept quirk:
    where the source and fused strengths tie exactly, the strength ratio is set to the
    fused strength instead of 1, which makes the score depend on the data scale (here
    0..255). The orientation is not wrapped, so near-horizontal edges flip between ±π/2
    with the sign of a near-zero Sx; on the integer gray images of this convention Sx is
    exact, so nothing flips. 0 when neither source has an edge (the references give NaN).
    """
    return _qabf_score(*_qabf_edges(a), *_qabf_edges(b), *_qabf_edges(f))


def _conv2_octave(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``conv2(img, kernel, 'same')`` summed in the order of Octave's ``dconv2o``, rounding step for rounding step.

    Octave adds ``kernel(i, j) * img`` column of ``img`` by column, kernel column by kernel
    column, kernel row by kernel row; for one output pixel that is kernel column 3, 2, 1
    (left source column first) and within each kernel row 1, 2, 3. The products by the
    Sobel weights (0, ±1, ±2) are exact, so only the order of the additions matters.
    """
    m, n = img.shape
    kh, kw = kernel.shape
    full = np.zeros((m + kh - 1, n + kw - 1))
    for j in range(kw - 1, -1, -1):
        for i in range(kh):
            if kernel[i, j] != 0:
                full[i:i + m, j:j + n] += kernel[i, j] * img
    return full[kh // 2:kh // 2 + m, kw // 2:kw // 2 + n]


def _qabf_edges_octave(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = _conv2_octave(img, _SOBEL_X)
    sy = _conv2_octave(img, _SOBEL_Y)
    return np.sqrt(sx * sx + sy * sy), np.where(sx == 0, np.float32(np.pi / 2), _orientation(sy, sx))


def qabf_vifb(a, b, f) -> float:
    """Q^AB/F as VIFB's ``metricsQabf.m`` computes it, to the last bit that changes the score.

    The same definition and constants as ``qabf``, with VIFB's arithmetic: every image is
    ``255*im2double(double(x))`` (``im2double`` leaves doubles alone, so the data run
    0..65025 and the tie quirk sees that scale), a colour source enters a gray fusion as
    the unrounded MATLAB ``rgb2gray`` of the doubles (``_filters.MATLAB_GRAY``, bit-exact
    weights), and ``conv2`` sums in Octave's order (``_conv2_octave``). The bits matter:
    on a colour VIS whose channels are (nearly) equal, Sx of the unrounded gray is
    ±1e-11 instead of 0 over whole flat or horizontal-edge areas, and its sign flips
    that pixel's orientation between +π/2 and −π/2 (``atan`` of a huge ratio, not
    wrapped). Other weight bits or another summation order moved the score by up to
    3 % on RoadScene; so reproduced, it matches the Octave runs to ~1e-12. On integer
    images (TNO, gray VIS) none of this changes anything but the tie scale.
    """
    return _qabf_score(*_qabf_edges_octave(255 * a), *_qabf_edges_octave(255 * b), *_qabf_edges_octave(255 * f))


def _nabf_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shreyamsha Kumar's ``sobel_fn``: Sobel/8 correlation over a reflect-101 border; strength and orientation (float32)."""
    gv = sobel(img, 1, 0, cv2.BORDER_REFLECT_101)
    gh = sobel(img, 0, 1, cv2.BORDER_REFLECT_101)
    angle = _orientation(gv, gh)  # atan(±x/0) = ±π/2
    np.copyto(angle, np.float32(0), where=np.isnan(angle))  # and 0 where both are 0
    strength = np.sqrt(gh * gh + gv * gv)
    strength *= np.float32(1 / 8)  # exact: the /8 of the reference's kernel
    return strength, angle


def nabf(a, b, f) -> float:
    """Modified fusion-artifact measure N^AB/F of Shreyamsha Kumar (2013), lower is better — corrected definition.

    Tang's ``analysis_nabf(F, A, B)`` on 0..255 data: Td 2, wt_min 0.001, Lg 1.5,
    Nrg 0.9999, kg 19, σg 0.5, Nra 0.9995, ka 22, σa 0.5; artifacts counted where the
    fused gradient exceeds both sources'. Corrected: Tang's 2023 script passes (IR, VIS, F)
    into the (F, A, B) slots, and the 2022 one works on [0, 1] data where the Td = 2
    edge threshold is never reached; both are fixed here, in both conventions.
    """
    ga, aa = _nabf_edges(a)
    gb, ab = _nabf_edges(b)
    gf, af = _nabf_edges(f)

    artifact = (gf > ga) & (gf > gb)
    g_f, a_f = gf[artifact], af[artifact]

    def lost(g_src, a_src):
        """1 − sqrt(Qg·Qa) on the artifact pixels, as (D − k) / (D + sqrt(k·D)): no cancellation in float32."""
        g_src, a_src = g_src[artifact], a_src[artifact]
        strength = np.divide(np.minimum(g_src, g_f), np.maximum(g_src, g_f), out=np.zeros(g_src.shape, np.float32),
                             where=g_src > 0)
        align = np.abs(np.abs(a_src - a_f) - np.float32(np.pi / 2))
        # Qg = Nrg / (1 + eg), Qa = Nra / (1 + ea); D = (1 + eg)(1 + ea), k = Nrg·Nra, D − k = (1 − k) + eg + ea + eg·ea.
        eg = np.exp(np.float32(-19.0) * (strength - np.float32(0.5)))
        ea = np.exp(np.float32(-22.0 * 2 / np.pi) * align + np.float32(11.0))  # −22 (align·2/π − 0.5)
        k = 0.9999 * 0.9995
        d = (1 + eg) * (1 + ea)
        return (np.float32(1 - k) + eg + ea + eg * ea) / (d + np.sqrt(np.float32(k) * d))

    wa = np.where(ga >= 2, ga * np.sqrt(ga), np.float32(0.001))  # ga ** 1.5
    wb = np.where(gb >= 2, gb * np.sqrt(gb), np.float32(0.001))
    loss = (lost(ga, aa) * wa[artifact]).sum(dtype=np.float64) + (lost(gb, ab) * wb[artifact]).sum(dtype=np.float64)
    return float(loss / (wa.sum(dtype=np.float64) + wb.sum(dtype=np.float64)))
