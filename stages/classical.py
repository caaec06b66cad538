"""Classical fusion methods: no weights, deterministic, any device.

All act on luminance batches ``(B, 1, H, W)`` in [0, 1] and return the same
shape (see :mod:`stages.registry`). They are written in torch so they batch
and run on the GPU like the networks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import box_blur, gaussian_blur2d, guided_blur, laplacian
from kornia.geometry.transform import pyrdown, pyrup

from stages.registry import register_method

Tensor = torch.Tensor


def fuse_mean(ir: Tensor, vis: Tensor) -> Tensor:
    """Pixel-wise average ``(ir + vis) / 2``."""
    return (ir + vis) / 2


def fuse_max(ir: Tensor, vis: Tensor) -> Tensor:
    """Pixel-wise maximum (the "choose-max" rule)."""
    return torch.maximum(ir, vis)


def laplacian_pyramid(img: Tensor, levels: int) -> list[Tensor]:
    """Burt–Adelson Laplacian pyramid of ``(B, C, H, W)``: ``levels - 1`` band-pass images + the low-pass top."""
    bands, current = [], img
    for _ in range(levels - 1):
        down = pyrdown(current)
        up = pyrup(down)[..., : current.shape[-2], : current.shape[-1]]
        up = F.pad(up, (0, current.shape[-1] - up.shape[-1], 0, current.shape[-2] - up.shape[-2]), mode="replicate")
        bands.append(current - up)
        current = down
    bands.append(current)
    return bands


def collapse_pyramid(bands: list[Tensor]) -> Tensor:
    """Inverse of :func:`laplacian_pyramid`."""
    current = bands[-1]
    for band in reversed(bands[:-1]):
        up = pyrup(current)[..., : band.shape[-2], : band.shape[-1]]
        up = F.pad(up, (0, band.shape[-1] - up.shape[-1], 0, band.shape[-2] - up.shape[-2]), mode="replicate")
        current = band + up
    return current


def pyramid_levels(height: int, width: int, smallest: int = 8, most: int = 6) -> int:
    """As many levels as keep the top at least ``smallest`` pixels on its short side."""
    return max(1, min(most, int(math.log2(max(min(height, width), 1) / smallest)) + 1))


def fuse_laplacian(ir: Tensor, vis: Tensor, levels: int | None = None) -> Tensor:
    """Laplacian-pyramid fusion (Burt & Adelson 1983; rule of Burt & Kolczynski 1993).

    Band-pass levels take, per pixel, the coefficient of larger absolute value
    (choose-max of local activity); the low-pass top level is averaged.
    ``levels`` defaults to :func:`pyramid_levels` (up to 6).
    """
    levels = levels or pyramid_levels(*ir.shape[-2:])
    bands_ir, bands_vis = laplacian_pyramid(ir, levels), laplacian_pyramid(vis, levels)
    fused = [torch.where(a.abs() >= b.abs(), a, b) for a, b in zip(bands_ir[:-1], bands_vis[:-1])]
    fused.append((bands_ir[-1] + bands_vis[-1]) / 2)
    return collapse_pyramid(fused).clamp(0, 1)


def fuse_gff(
    ir: Tensor,
    vis: Tensor,
    base_size: int = 31,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
) -> Tensor:
    """Guided-filtering-based fusion, GFF (S. Li, X. Kang, J. Hu, IEEE TIP 22(7), 2013).

    1. Two-scale decomposition: base = 31×31 mean filter, detail = image − base.
    2. Saliency = Gaussian-smoothed (11×11, σ = 5) absolute Laplacian; binary
       weight maps pick the more salient source per pixel.
    3. The weight maps are refined with a guided filter guided by each source:
       radius r1 = 45, ε1 = 0.3 for the base layer, r2 = 7, ε2 = 1e-6 for the
       detail layer (the paper's parameters); weights normalised to sum to one.
    """
    sources = torch.cat([ir, vis], dim=1)  # (B, 2, H, W)
    base = box_blur(sources, (base_size, base_size), border_type="replicate", separable=True)
    detail = sources - base
    saliency = gaussian_blur2d(laplacian(sources, 3).abs(), (11, 11), (5.0, 5.0), border_type="replicate")
    winner = F.one_hot(saliency.argmax(dim=1), 2).permute(0, 3, 1, 2).to(sources.dtype)

    def refine(radius: int, eps: float) -> Tensor:
        # Each weight map is guided by its own source: fold the two maps into the batch.
        size = min(2 * radius + 1, 2 * ((min(ir.shape[-2:]) - 1) // 2) + 1)
        w = guided_blur(sources.reshape(-1, 1, *ir.shape[-2:]), winner.reshape(-1, 1, *ir.shape[-2:]), size, eps,
                        border_type="replicate", separable=True)
        w = w.reshape(sources.shape).clamp_min(0)
        return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)

    fused = (refine(r1, eps1) * base).sum(1, keepdim=True) + (refine(r2, eps2) * detail).sum(1, keepdim=True)
    return fused.clamp(0, 1)


def _classical(fn):
    """Factory for a weight-free method: ignores device/weights, returns ``fn``."""

    def factory(device: str = "cpu", weights=None, **options):
        if weights is not None:
            raise ValueError("classical methods take no --weights")
        return fn

    return factory


register_method("mean", kind="classical", summary="pixel-wise average of IR and VIS luminance")(_classical(fuse_mean))
register_method("max", kind="classical", summary="pixel-wise maximum (choose-max)")(_classical(fuse_max))
register_method(
    "laplacian",
    kind="classical",
    summary="Laplacian pyramid, max-abs detail, averaged base",
    reference="Burt & Adelson 1983; Burt & Kolczynski 1993",
)(_classical(fuse_laplacian))
register_method(
    "gff",
    kind="classical",
    summary="guided-filter fusion of base and detail layers",
    reference="Li, Kang & Hu, IEEE TIP 2013",
)(_classical(fuse_gff))
