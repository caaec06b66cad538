"""fuse from Python: fuse two images and score the result, on arrays rather than files.

    >>> import numpy as np, fuse_api
    >>> ir = np.zeros((64, 64), np.uint8); vis = np.full((64, 64, 3), (200, 120, 40), np.uint8)
    >>> fused = fuse_api.fuse(ir, vis, method="laplacian")
    >>> fused.shape, fused.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> sorted(fuse_api.score(ir, vis, fused, metrics=["EN", "SSIM"]))
    ['EN', 'SSIM']

Images are numpy arrays or torch tensors: ``(H, W)`` gray or ``(H, W, 3)`` RGB
(tensors also ``(1, H, W)`` or ``(3, H, W)``). ``uint8`` is read as ``value / 255``
and 16-bit as the command line reads 16-bit files (``value / 65535``, or a
percentile stretch for narrow radiometric IR); floats must lie in [0, 1].
The rules are those of ``fuse fuse``: RGB VIS gives RGB output (the luminance
is fused, the visible chroma kept), an RGB IR is reduced to its luminance.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.extras import MissingExtra

if TYPE_CHECKING:
    import torch

__all__ = ["MissingExtra", "fuse", "score", "methods", "metrics"]


def methods() -> list[str]:
    """The fusion methods ``fuse`` accepts (``fuse fuse --list-methods`` says what each needs)."""
    from stages.methods.registry import list_methods

    return [info.name for info in list_methods()]


def metrics() -> list[str]:
    """The metric names ``score`` accepts."""
    from stages.metrics import METRICS

    return list(METRICS)


def _is_tensor(value) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (a tensor means it is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _as_float(image, name: str) -> np.ndarray:
    """``image`` as float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``; ``ValueError`` saying what was expected."""
    from stages.core.images import _channels, _normalise

    if _is_tensor(image):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"{name}: expected one image (H, W) or (H, W, 3), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: NaN or infinite pixel values")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: float images must lie in [0, 1] (got {array.min():g} to {array.max():g}); "
                             "divide 8-bit values by 255")
        return _channels(array.astype(np.float32), Path(name))
    return _normalise(_channels(array, Path(name)), Path(name))


def _like(fused: np.ndarray, template) -> np.ndarray | torch.Tensor:
    """``fused`` (float [0, 1]) in the type of ``template``: its integer dtype, or a ``(C, H, W)`` tensor."""
    if _is_tensor(template):
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(fused))
        return tensor.permute(2, 0, 1) if tensor.ndim == 3 and template.ndim == 3 and template.shape[0] == 3 else tensor
    dtype = np.asarray(template).dtype
    if dtype == np.uint8:
        return np.clip(np.rint(fused * 255.0), 0, 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.clip(np.rint(fused * 65535.0), 0, 65535).astype(np.uint16)
    return fused.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _stage(method: str, device: str, weights: str | None, options: tuple):
    from stages.extras import require_extra
    from stages.fuse import FuseStage
    from stages.methods.registry import get_method

    require_extra(get_method(method).extra, f"fusion method {method!r}")
    return FuseStage(Path("."), method, device, Path(weights) if weights else None, method_options=dict(options))


def fuse(ir, vis, method: str = "refinefuse", *, weights: str | Path | None = None, device: str = "auto",
         **options) -> np.ndarray | torch.Tensor:
    """Fuse one infrared (or MRI) image with one visible (or CT/PET) image of the same size.

    Args:
        ir, vis: the two images (see the module docstring for types and shapes).
        method: a name of :func:`methods`; ``KeyError`` (with the closest name) otherwise.
        weights: a ``.safetensors`` file instead of the shipped weights (learned methods).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        options: the method's options, e.g. ``tile=512`` for learned methods.

    Returns:
        The fused image in ``vis``'s type: the same numpy dtype (float32 for float
        input), or a float tensor, ``(3, H, W)`` when ``vis`` was a ``(3, H, W)`` tensor.
        The network is loaded once and kept for the next call.

    Raises:
        ValueError: sizes differ, a shape or value range that is not an image.
        MissingExtra: the method needs an extra that is not installed (an ``ImportError``).
    """
    ir_float, vis_float = _as_float(ir, "ir"), _as_float(vis, "vis")
    if ir_float.shape[:2] != vis_float.shape[:2]:
        raise ValueError(f"sizes differ: ir is {ir_float.shape[1]}x{ir_float.shape[0]}, "
                         f"vis is {vis_float.shape[1]}x{vis_float.shape[0]}")
    from stages.core.images import luminance
    from stages.methods.registry import get_method

    if device == "auto" and get_method(method).kind == "classical":
        device = "cpu"  # arrays only: no need to import torch to look for CUDA
    elif device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    stage = _stage(method, device, str(weights) if weights else None, tuple(sorted(options.items())))
    fused = stage.fuse_images([luminance(ir_float)], [vis_float])[0]
    return _like(fused, vis)


def score(ir, vis, fused, metrics: list[str] | None = None, *, convention: str = "mmif") -> dict[str, float]:
    """The fusion metrics of ``fused`` against its sources, as ``fuse score`` computes them.

    Args:
        ir, vis, fused: images of one size (types as :func:`fuse` takes); each is
            scored as 8-bit, as the reference implementations read files.
        metrics: names from :func:`metrics` (default: all of them).
        convention: ``mmif`` or ``vifb``, the reference implementation to reproduce
            (``fuse score --help`` explains the difference).

    Returns:
        ``{metric name: value}`` in the order asked.
    """
    from stages.core.images import to_uint8
    from stages.metrics import CONVENTIONS, compute_metrics
    from stages.score import parse_metric_names

    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
    names = parse_metric_names(",".join(metrics) if metrics else None)
    images = [to_uint8(_as_float(image, key)) for key, image in (("ir", ir), ("vis", vis), ("fused", fused))]
    if len({image.shape[:2] for image in images}) != 1:
        raise ValueError("sizes differ: " + ", ".join(f"{key} {image.shape[1]}x{image.shape[0]}"
                                                       for key, image in zip(("ir", "vis", "fused"), images)))
    return compute_metrics(*images, names=names, convention=convention)
