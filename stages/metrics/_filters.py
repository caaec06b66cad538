"""Shared building blocks: windows, filtering, rounding and colour collapse as the references do them."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

# MATLAB rgb2gray: first row of the inverse YIQ matrix, bit for bit as the reference runs' ``inv`` returns it
# (GNU Octave 7.3 / LAPACK). numpy's ``inv`` gives 0.58704307445112125 for the middle weight, and the exact
# inverse ends ...332 for the last; the last bits matter to VIFB's Qabf (see ``gradient.qabf_vifb``).
MATLAB_GRAY = np.array([0.29893602129377539, 0.58704307445112136, 0.11402090425510325])


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round`` / integer conversion: halves go away from zero (numpy's ``rint`` goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def cv2_gray(img: np.ndarray) -> np.ndarray:
    """The CDDFuse evaluator's gray: ``np.round(cv2.cvtColor(float32 BGR, BGR2GRAY))``, as float64."""
    if img.ndim == 2:
        return img.astype(np.float64)
    bgr = np.ascontiguousarray(img[..., ::-1], dtype=np.float32)
    return np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).astype(np.float64)


def matlab_gray(img: np.ndarray, rounded: bool) -> np.ndarray:
    """MATLAB ``rgb2gray``: rounded to uint8 values for uint8 input, unrounded for double input."""
    if img.ndim == 2:
        return img.astype(np.float64)
    rgb = img.astype(np.float64)
    gray = MATLAB_GRAY[0] * rgb[..., 0] + MATLAB_GRAY[1] * rgb[..., 1] + MATLAB_GRAY[2] * rgb[..., 2]
    return np.clip(round_half_away(gray), 0, 255) if rounded else gray


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer product)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(outer(g, g), img, 'valid')`` for a symmetric separable window ``g``."""
    out = ndimage.correlate1d(img, g, axis=0, mode="constant")
    out = ndimage.correlate1d(out, g, axis=1, mode="constant")
    h = len(g) // 2
    return out[h: img.shape[0] - h, h: img.shape[1] - h]


def box_sum_valid(img: np.ndarray, n: int) -> np.ndarray:
    """Sum over every full ``n``×``n`` window (exact for integer or dyadic data below 2**53)."""
    c = np.zeros((img.shape[0] + 1, img.shape[1] + 1))
    c[1:, 1:] = img.cumsum(0).cumsum(1)
    return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]


def block_reduce(img: np.ndarray, size: int, reduce) -> np.ndarray:
    """MATLAB ``blkproc(img, [size size], fun)``: zero-pad to whole blocks, ``reduce`` each block."""
    h, w = img.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(img, ((0, ph), (0, pw)))
    blocks = padded.reshape((h + ph) // size, size, (w + pw) // size, size)
    return reduce(blocks, axis=(1, 3))


def normalize_255(img: np.ndarray) -> np.ndarray:
    """Z. Liu's ``normalize1``: min–max stretch to 0..255, rounded. A constant image becomes zeros (the reference gives NaN)."""
    lo, hi = img.min(), img.max()
    if hi == lo:
        return np.zeros_like(img, dtype=np.float64)
    return round_half_away((img - lo) / (hi - lo) * 255)


def centered_frequencies(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``freqspace(shape, 'meshgrid')`` rearranged by ``ifftshift`` into FFT order: (u along columns, v along rows)."""
    rows, cols = shape
    f1 = (np.arange(cols) - cols // 2) * (2.0 / cols)
    f2 = (np.arange(rows) - rows // 2) * (2.0 / rows)
    u, v = np.meshgrid(f1, f2)
    return np.fft.ifftshift(u), np.fft.ifftshift(v)


def fft_filter(img: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Real part of ``ifft2(fft2(img) .* response)`` for an even (point-symmetric) ``response`` in FFT order."""
    half = img.shape[1] // 2 + 1
    return np.fft.irfft2(np.fft.rfft2(img) * response[:, :half], s=img.shape)


def safe_divide(num, den, default: float):
    """``num / den`` with ``default`` where ``den`` is 0, without floating-point warnings."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = den != 0
    out = np.full(np.broadcast(num, den).shape, float(default))
    np.divide(num, den, out=out, where=ok)
    return out if out.ndim else float(out)

