"""Shared building blocks: windows, filtering, rounding and colour collapse as the references do them.

Filters run through OpenCV in double precision (several times faster than ``scipy.ndimage``
on one core); on the integer or dyadic data the metrics see, box sums and Sobel responses
are exact whatever the summation order. Work that several metrics (or one metric twice)
need is memoised for the length of one :func:`sharing` block: see :func:`shared`.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar

import cv2
import numpy as np

_WORK: ContextVar[dict | None] = ContextVar("metric_work", default=None)


@contextmanager
def sharing():
    """Inside this block, functions wrapped by :func:`shared` compute once per set of arguments."""
    token = _WORK.set({})
    try:
        yield
    finally:
        _WORK.reset(token)


def shared(fn):
    """Memoise ``fn`` inside :func:`sharing`, keyed by the identity of its array arguments.

    The arguments are kept with the result, so their ids cannot be reused by other arrays
    while the block lasts; array results are made read-only, since callers share them.
    Outside a :func:`sharing` block ``fn`` simply runs.
    """
    @functools.wraps(fn)
    def wrapper(*args):
        cache = _WORK.get()
        if cache is None:
            return fn(*args)
        key = (fn.__qualname__, *(id(a) if isinstance(a, np.ndarray) else a for a in args))
        if key not in cache:
            result = fn(*args)
            for item in result if isinstance(result, tuple) else (result,):
                if isinstance(item, np.ndarray):
                    item.flags.writeable = False
            cache[key] = (result, args)
        return cache[key][0]

    return wrapper

# MATLAB rgb2gray: first row of the inverse YIQ matrix, bit for bit as the reference runs' ``inv`` returns it
# (GNU Octave 7.3 / LAPACK). numpy's ``inv`` gives 0.58704307445112125 for the middle weight, and the exact
# inverse ends ...332 for the last; the last bits matter to VIFB's Qabf (see ``gradient.qabf_vifb``).
MATLAB_GRAY = np.array([0.29893602129377539, 0.58704307445112136, 0.11402090425510325])


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round`` / integer conversion: halves go away from zero (numpy's ``rint`` goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@shared
def cv2_gray(img: np.ndarray) -> np.ndarray:
    """The CDDFuse evaluator's gray: ``np.round(cv2.cvtColor(float32 BGR, BGR2GRAY))``, as float64."""
    if img.ndim == 2:
        return img.astype(np.float64)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR).astype(np.float32)  # the same floats as numpy's reversed copy, faster
    return np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).astype(np.float64)


@shared
def matlab_gray(img: np.ndarray, rounded: bool) -> np.ndarray:
    """MATLAB ``rgb2gray``: rounded to uint8 values for uint8 input, unrounded for double input."""
    if img.ndim == 2:
        return img.astype(np.float64)
    rgb = img.astype(np.float64)
    gray = MATLAB_GRAY[0] * rgb[..., 0] + MATLAB_GRAY[1] * rgb[..., 1] + MATLAB_GRAY[2] * rgb[..., 2]
    return np.clip(round_half_away(gray), 0, 255) if rounded else gray


@functools.lru_cache(maxsize=None)
def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer product)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    g /= g.sum()
    g.flags.writeable = False
    return g


def sep_filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(outer(g, g), img, 'same')``, zero padding (``conv2``'s border), in double precision."""
    return cv2.sepFilter2D(np.ascontiguousarray(img, dtype=np.float64), cv2.CV_64F, g, g,
                           borderType=cv2.BORDER_CONSTANT)


def filter_rows(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The rows of ``filter2(outer(g, g), img, 'valid')`` at the image's full width, for a symmetric separable ``g``.

    The first and last ``len(g) // 2`` columns hold the zero-padded 'same' values: element-wise
    work runs on these contiguous rows (several times faster than on column slices) and
    :func:`valid_sum` drops those columns at the end.
    """
    h = len(g) // 2
    return sep_filter(img, g)[h: img.shape[0] - h]


def filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(outer(g, g), img, 'valid')`` for a symmetric separable window ``g``."""
    if min(img.shape) < len(g):
        return np.zeros((max(img.shape[0] - len(g) + 1, 0), max(img.shape[1] - len(g) + 1, 0)))
    h = len(g) // 2
    return filter_rows(img, g)[:, h: img.shape[1] - h]


def box_sum_rows(img: np.ndarray, n: int) -> np.ndarray:
    """Sums over every full ``n``×``n`` window (exact for integer or dyadic data below 2**53), as rows at full width
    like :func:`filter_rows`."""
    out = cv2.boxFilter(np.ascontiguousarray(img, dtype=np.float64), cv2.CV_64F, (n, n), normalize=False,
                        borderType=cv2.BORDER_CONSTANT)
    return out[n // 2: img.shape[0] - n // 2]


def valid_sum(rows: np.ndarray, n: int) -> float:
    """The sum of a map computed on full-width rows (:func:`filter_rows`) over its 'valid' columns for an
    ``n``-wide window, added up as the 'valid' map itself would be (contiguous, numpy's pairwise order)."""
    h = n // 2
    return float(np.ascontiguousarray(rows[:, h: rows.shape[1] - h]).sum())


BLOCK_ELEMENTS = 1 << 15  # elements per row block of the element-wise work: its temporaries stay in the CPU cache


def row_blocks(shape: tuple[int, ...]):
    """Slices of consecutive rows covering ``shape[0]``, about :data:`BLOCK_ELEMENTS` elements each.

    Long chains of element-wise operations on whole images spend most of their time
    moving temporaries through memory; done one block of rows at a time they run
    several times faster, with the same results.
    """
    rows = max(1, BLOCK_ELEMENTS // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], rows):
        yield slice(start, min(start + rows, shape[0]))


def row_bands(shape: tuple[int, int], window: int):
    """Slices of the rows of an (H, W) image, for 'valid' filtering with a ``window``-row window band by band.

    Consecutive bands overlap by ``window − 1`` rows, so every output row comes from
    exactly one band; a band has about :data:`BLOCK_ELEMENTS` outputs (at least
    ``4 (window − 1)`` rows). A metric's dozen filtered maps of a band are small arrays
    that stay in the CPU cache and that the allocator reuses (whole-image maps were
    page-faulted in afresh, ~12600 faults per pair, when a metric ran alone). A pixel's
    value does not depend on the band it is computed in.
    """
    rows, cols = shape
    out_rows = rows - window + 1
    step = max(BLOCK_ELEMENTS // max(1, cols), 4 * (window - 1), 1)
    for start in range(0, out_rows, step):
        yield slice(start, min(start + step, out_rows) + window - 1)


def sobel(img: np.ndarray, dx: int, dy: int, border: int) -> np.ndarray:
    """Correlation with the 3×3 Sobel kernel ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (``dx``) or its transpose (``dy``).

    ``border`` is an OpenCV border: ``BORDER_CONSTANT`` (zeros, ``conv2``), ``BORDER_REPLICATE``
    (``'replicate'``) or ``BORDER_REFLECT_101`` (reflect without repeating the edge).
    ``img`` holds grey levels (integers): the responses are integers below 2**11, exact
    in the ``float32`` returned (several times faster than double).
    """
    return cv2.Sobel(as_float32(img), cv2.CV_32F, dx, dy, ksize=3, borderType=border)


@shared
def as_float32(img: np.ndarray) -> np.ndarray:
    """``img`` as contiguous float32, converted once per image inside :func:`sharing` (Sobel calls and SSIM need it)."""
    return np.ascontiguousarray(img, dtype=np.float32)


def block_sum(img: np.ndarray, size: int) -> np.ndarray:
    """MATLAB ``blkproc(img, [size size], @(b) sum(b(:)))``: zero-pad (H, W) to whole blocks and sum each,
    giving (⌈H/size⌉, ⌈W/size⌉); rows first, then along them (contiguous sums, several times faster)."""
    h, w = img.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(img, ((0, ph), (0, pw))) if ph or pw else img
    rows = padded.reshape((h + ph) // size, size, w + pw).sum(axis=1)
    return rows.reshape(rows.shape[0], (w + pw) // size, size).sum(axis=2)


@shared
def normalize_255(img: np.ndarray) -> np.ndarray:
    """Z. Liu's ``normalize1``: min–max stretch to 0..255, rounded. A constant image becomes zeros (the reference gives NaN).

    ``img`` holds grey levels (integers): one that already spans 0..255 is returned as
    it is (the stretch is the identity), so the work shared on it is shared here too.
    """
    lo, hi = img.min(), img.max()
    if hi == lo:
        return np.zeros_like(img, dtype=np.float64)
    if lo == 0 and hi == 255:
        return img
    levels = (img - lo) / (hi - lo) * 255
    levels += 0.5  # round_half_away of levels ≥ 0, in two passes instead of five
    return np.floor(levels, out=levels)


def centered_frequencies(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``freqspace(shape, 'meshgrid')`` rearranged by ``ifftshift`` into FFT order: (u along columns, v along rows)."""
    rows, cols = shape
    f1 = (np.arange(cols) - cols // 2) * (2.0 / cols)
    f2 = (np.arange(rows) - rows // 2) * (2.0 / rows)
    u, v = np.meshgrid(f1, f2)
    return np.fft.ifftshift(u), np.fft.ifftshift(v)


_INVERSE = cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE


@shared
def spectrum(img: np.ndarray) -> np.ndarray:
    """The 2-D DFT of a real image in OpenCV's packed (CCS) layout, which :func:`fft_filter` multiplies."""
    return cv2.dft(np.ascontiguousarray(img, dtype=np.float64))


def packed_response(response: np.ndarray) -> np.ndarray:
    """An even (point-symmetric) real frequency response in FFT order, in the packed layout of :func:`spectrum`."""
    return cv2.dft(np.ascontiguousarray(np.fft.ifft2(response).real))


def fft_filter(img_spectrum: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Real part of ``ifft2(fft2(img) .* response)``, from ``img_spectrum = spectrum(img)`` and
    ``packed = packed_response(response)``; the result has the image's shape."""
    return cv2.dft(cv2.mulSpectrums(img_spectrum, packed, 0), flags=_INVERSE)


def dot(x: np.ndarray, y: np.ndarray) -> float:
    """Inner product of two 1-D float64 arrays, summed by numpy itself.

    ``np.dot`` hands vectors this long to OpenBLAS, whose threads busy-wait for a core:
    on a loaded machine that cost more CPU time than any metric.
    """
    return float(np.einsum("i,i->", x, y))


def safe_divide(num, den, default: float):
    """``num / den`` with ``default`` where ``den`` is 0, without floating-point warnings."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.empty(np.broadcast(num, den).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=out)  # unmasked: vectorised
    np.copyto(out, default, where=den == 0)
    return out if out.ndim else float(out)

