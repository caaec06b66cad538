"""Classical fusion methods: no weights, deterministic, any device.

All act on luminance batches ``(B, 1, H, W)`` in [0, 1] and return the same
shape (see :mod:`stages.methods.registry`): float32 numpy arrays, which is how
:mod:`stages.fuse` calls them (so fusing classically imports no torch), or torch
tensors on any device, returned on that device. They compute with numpy and
OpenCV on the CPU (one core filters a 640×480 image faster than torch's conv on
several).
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from stages.methods.registry import register_factory

_BURT_ADELSON = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16  # the 5-tap generating kernel


def _arrays_or_tensors(fn):
    """Let ``fn`` on float32 numpy batches take torch tensors too, returning a tensor on their device."""

    @functools.wraps(fn)
    def fused(ir, vis, **options):
        if isinstance(ir, np.ndarray):
            return fn(ir, vis, **options)
        import torch

        out = fn(ir.detach().float().cpu().numpy(), vis.detach().float().cpu().numpy(), **options)
        return torch.from_numpy(out).to(device=ir.device, dtype=ir.dtype)

    return fused


def _per_image(fn):
    """Lift ``fn(ir, vis)`` on 2-D float32 images to ``(B, 1, H, W)`` batches (arrays or tensors)."""

    @_arrays_or_tensors
    @functools.wraps(fn)
    def fused(ir: np.ndarray, vis: np.ndarray, **options) -> np.ndarray:
        return np.stack([fn(a[0], b[0], **options) for a, b in zip(ir, vis)])[:, None]

    return fused


@_arrays_or_tensors
def fuse_mean(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Pixel-wise average ``(ir + vis) / 2``."""
    return (ir + vis) / 2


@_arrays_or_tensors
def fuse_max(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum (the "choose-max" rule)."""
    return np.maximum(ir, vis)


def _blur5(img: np.ndarray) -> np.ndarray:
    return cv2.sepFilter2D(img, -1, _BURT_ADELSON, _BURT_ADELSON, borderType=cv2.BORDER_REFLECT_101)


def _down(img: np.ndarray) -> np.ndarray:
    """Blur with the 5-tap kernel, then bilinear to half size (``int(side / 2)``), as kornia's ``pyrdown``."""
    h, w = img.shape
    return cv2.resize(_blur5(img), (w // 2, h // 2), interpolation=cv2.INTER_LINEAR)


def _up(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear to double size, blur (kornia's ``pyrup``), then crop or repeat the edge to ``shape``."""
    h, w = img.shape
    up = _blur5(cv2.resize(img, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR))[: shape[0], : shape[1]]
    if up.shape == shape:
        return up
    return np.pad(up, ((0, shape[0] - up.shape[0]), (0, shape[1] - up.shape[1])), mode="edge")


def laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Burt–Adelson Laplacian pyramid of a 2-D image: ``levels - 1`` band-pass images + the low-pass top."""
    bands, current = [], img
    for _ in range(levels - 1):
        down = _down(current)
        bands.append(current - _up(down, current.shape))
        current = down
    bands.append(current)
    return bands


def collapse_pyramid(bands: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid`."""
    current = bands[-1]
    for band in reversed(bands[:-1]):
        current = band + _up(current, band.shape)
    return current


def pyramid_levels(height: int, width: int, smallest: int = 8, most: int = 6) -> int:
    """As many levels as keep the top at least ``smallest`` pixels on its short side."""
    return max(1, min(most, int(math.log2(max(min(height, width), 1) / smallest)) + 1))


def _larger_magnitude(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, the value of ``a`` or ``b`` (2-D float32) of larger absolute value, ``a`` on ties."""
    return cv2.copyTo(a, cv2.compare(np.abs(a), np.abs(b), cv2.CMP_GE), b.copy())  # np.where's result, 3x faster


@_per_image
def fuse_laplacian(ir: np.ndarray, vis: np.ndarray, levels: int | None = None) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson 1983; rule of Burt & Kolczynski 1993).

    Band-pass levels take, per pixel, the coefficient of larger absolute value
    (choose-max of local activity); the low-pass top level is averaged.
    ``levels`` defaults to :func:`pyramid_levels` (up to 6).
    """
    levels = levels or pyramid_levels(*ir.shape)
    bands_ir, bands_vis = laplacian_pyramid(ir, levels), laplacian_pyramid(vis, levels)
    fused = [_larger_magnitude(a, b) for a, b in zip(bands_ir[:-1], bands_vis[:-1])]
    fused.append((bands_ir[-1] + bands_vis[-1]) / 2)
    return np.clip(collapse_pyramid(fused), 0, 1)


def _box(img: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size``×``size`` window, replicated border (running sums: any size costs the same)."""
    return cv2.blur(img, (size, size), borderType=cv2.BORDER_REPLICATE)


def guided_filter(guide: np.ndarray, src: np.ndarray, size: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by ``guide`` (2-D, same shape), ``size``×``size`` box windows, regulariser ``eps``."""
    mean_i, mean_p = _box(guide, size), _box(src, size)
    var_i = _box(guide * guide, size)
    var_i -= mean_i * mean_i
    a = _box(guide * src, size)
    a -= mean_i * mean_p  # cov(I, p)
    var_i += eps
    a /= var_i
    b = mean_p
    b -= a * mean_i
    out = _box(a, size)  # in place where it can be: the same operations, fewer full-size temporaries
    out *= guide
    out += _box(b, size)
    return out


_LAPLACIAN_3 = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=np.float32) / 16  # kornia's, normalised


@_per_image
def fuse_gff(
    ir: np.ndarray,
    vis: np.ndarray,
    base_size: int = 31,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
) -> np.ndarray:
    """Guided-filtering-based fusion, GFF (S. Li, X. Kang, J. Hu, IEEE TIP 22(7), 2013).

    1. Two-scale decomposition: base = 31×31 mean filter, detail = image − base.
    2. Saliency = Gaussian-smoothed (11×11, σ = 5) absolute Laplacian; binary
       weight maps pick the more salient source per pixel (IR on ties).
    3. The weight maps are refined with a guided filter guided by each source:
       radius r1 = 45, ε1 = 0.3 for the base layer, r2 = 7, ε2 = 1e-6 for the
       detail layer (the paper's parameters); weights normalised to sum to one.
    """
    sources = (ir, vis)
    base = [_box(x, base_size) for x in sources]
    detail = [x - bx for x, bx in zip(sources, base)]
    saliency = [cv2.GaussianBlur(np.abs(cv2.filter2D(x, -1, _LAPLACIAN_3, borderType=cv2.BORDER_REFLECT_101)),
                                 (11, 11), 5.0, borderType=cv2.BORDER_REPLICATE) for x in sources]
    ir_wins = (saliency[0] >= saliency[1]).astype(np.float32)
    winner = (ir_wins, 1 - ir_wins)

    def refine(radius: int, eps: float) -> list[np.ndarray]:
        size = min(2 * radius + 1, 2 * ((min(ir.shape) - 1) // 2) + 1)
        w = [np.maximum(guided_filter(x, p, size, eps), 0) for x, p in zip(sources, winner)]
        total = np.maximum(w[0] + w[1], 1e-12)
        return [wk / total for wk in w]

    w_base, w_detail = refine(r1, eps1), refine(r2, eps2)
    fused = sum(w * x for w, x in zip(w_base, base)) + sum(w * x for w, x in zip(w_detail, detail))
    return np.clip(fused, 0, 1)


def _classical(fn):
    """Factory for a weight-free method: ignores device/weights, returns ``fn``."""

    def factory(device: str = "cpu", weights=None, **options):
        if weights is not None:
            raise ValueError("classical methods take no --weights")
        return fn

    return factory


register_factory("mean")(_classical(fuse_mean))
register_factory("max")(_classical(fuse_max))
register_factory("laplacian")(_classical(fuse_laplacian))
register_factory("gff")(_classical(fuse_gff))
