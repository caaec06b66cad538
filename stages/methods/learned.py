"""The learned networks as fusion methods: ``refinefuse``, ``dfh-base`` and ``tard``; the loader and fuser of all.

* :func:`load_network` — rebuilds any network of :data:`stages.methods.specs.LEARNED` saved by
  :func:`stages.nets.checkpoint.save_weights` (one ``.safetensors`` file whose metadata holds
  the method name and the model's constructor arguments); the model card (``<name>.json``)
  sits beside it.
* :class:`NetworkFuser` — the callable a factory returns: pads to the network's
  multiple (reflect) and crops back, tiles large images with a smooth blending
  window, runs in eval mode under :func:`torch.inference_mode`, in half
  precision on CUDA. A network taking guidance subclasses it with a
  :meth:`~NetworkFuser.guidance` hook (:mod:`stages.methods.text`, :mod:`stages.methods.mgfusion`).
* ``tard`` fuses through its own closure: it registers on the whole image, and the
  untiled fusion warps IR features, not the IR image, so it does not fit the hook.

Weights are looked up as: the ``weights`` path given, else the shipped
``stages/weights/<name>.safetensors``; with neither, the factory raises
:class:`FileNotFoundError` saying to run ``fuse train -m <name>``.

>>> from stages.methods.registry import get_method       # doctest: +SKIP
>>> fuse = get_method("refinefuse").factory(device="cpu")  # doctest: +SKIP
>>> fuse(ir, vis).shape   # ir, vis: (B, 1, H, W) in [0, 1]  # doctest: +SKIP
torch.Size([1, 1, 480, 640])
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stages.methods.registry import WEIGHTS_DIR, register_factory
from stages.methods.specs import learned_method
from stages.nets.checkpoint import CHECKPOINT_FORMAT, check_method, config_of, load_checked
from stages.nets.inference import fold_batchnorm
from stages.nets.registration import warp
from stages.nets.tard import load_tard


def resolve_weights(method: str, weights: str | os.PathLike | None, no_weights_message: str | None = None) -> Path:
    """The checkpoint to load: ``weights`` if given, else the shipped file; ``FileNotFoundError`` otherwise.

    ``no_weights_message`` replaces the default advice when nothing is shipped.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"no weights for fusion method {method!r}: {path} does not exist")
        return path
    shipped = WEIGHTS_DIR / learned_method(method).weights
    if not shipped.is_file():
        raise FileNotFoundError(
            no_weights_message or f"no weights for fusion method {method!r} (looked for {shipped}): "
            f"run `fuse train -m {method}` to train them, or pass --weights PATH"
        )
    return shipped


def load_network(method: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build network ``method`` from a checkpoint (see :func:`resolve_weights`), in eval mode on ``device``.

    The file (:func:`stages.nets.checkpoint.save_weights`'s) is checked against the network before
    anything is allocated (:func:`stages.nets.checkpoint.load_checked`); a file that does not fit
    raises :class:`~stages.nets.checkpoint.WeightsError` (a ``ValueError``). A text-guided network's
    ``trained_fixed_text`` is the one text it was trained with (``fixed_text`` metadata, the
    fixed-text ablation), or ``None`` (trained on each pair's caption).
    """
    spec = learned_method(method)
    path = resolve_weights(method, weights)

    def build(metadata: dict[str, str]) -> nn.Module:
        check_method(path, method, metadata, CHECKPOINT_FORMAT)
        model = spec.model(**config_of(path, method, metadata))
        if "text" in spec.guidance:
            model.trained_fixed_text = metadata.get("fixed_text")
        return model

    return load_checked(path, method, build).to(device).eval()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right to multiples of ``multiple`` (reflect; replicate when too small)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, consecutive tiles overlapping ≥ ``overlap``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(size: int, overlap: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    """1-D blending weights: raised-cosine ramps over ``overlap`` px at tapered ends, 1 elsewhere.

    Ramps of neighbouring tiles sum to one over their shared ``overlap`` pixels.
    """
    weights = torch.ones(size)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)
    if taper_start:
        weights[:overlap] = ramp
    if taper_end:
        weights[size - overlap:] = torch.minimum(weights[size - overlap:], ramp.flip(0))
    return weights


def fuse_tiled(fuse: Callable[..., torch.Tensor], ir: torch.Tensor, vis: torch.Tensor, tile: int, overlap: int,
               *maps: torch.Tensor) -> torch.Tensor:
    """``fuse(ir, vis, *maps)`` over overlapping ``tile``-pixel tiles, blended with raised-cosine weights.

    ``ir``, ``vis``: ``(B, 1, H, W)``; ``maps``: per-pixel guidance ``(B, C, H, W)`` (a mask), tiled alike.
    """
    b, _, h, w = ir.shape
    fused = torch.zeros(b, 1, h, w, device=ir.device)
    total = torch.zeros(1, 1, h, w, device=ir.device)
    for y in _tile_starts(h, tile, overlap):
        for x in _tile_starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            window = torch.outer(_ramp(th, overlap, y > 0, y + th < h), _ramp(tw, overlap, x > 0, x + tw < w)).to(ir.device)
            part = fuse(*(t[..., y:y + th, x:x + tw] for t in (ir, vis, *maps))).float()
            fused[..., y:y + th, x:x + tw] += part * window
            total[..., y:y + th, x:x + tw] += window
    return fused / total


class NetworkFuser:
    """A loaded network as a fusion callable: ``fuser(ir, vis) -> fused``; pads, tiles, casts.

    ``ir`` and ``vis`` are ``(B, 1, H, W)`` float in [0, 1] of any ``H × W``; the
    result is ``(B, 1, H, W)`` float32 in [0, 1] on the input's device.

    Args:
        model: a network with ``forward(ir, vis)`` and a ``multiple`` attribute.
        device: where it runs.
        tile: images larger than ``tile`` px in either side are fused in
            ``tile × tile`` tiles; ``None`` never tiles.
        tile_overlap: pixels shared by neighbouring tiles, blended with
            raised-cosine weights so no seam shows.
        half: run in float16 when ``device`` is CUDA (ignored on CPU).

    Weights and inputs are channels-last (``memory_format``): on CPU dfh-base fuses a 640×480 pair in
    0.83 s instead of 1.36 s and refinefuse in 0.79 s instead of 0.83 s (one thread), outputs within
    1e-6 of the contiguous layout's (``python benchmarks/bench_nets.py`` compares the two).
    """

    memory_format = torch.channels_last

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", *, tile: int | None = 1024,
                 tile_overlap: int = 64, half: bool = True):
        self.device = torch.device(device)
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.multiple = int(getattr(model, "multiple", 1))
        if tile is not None and tile < max(self.multiple, 2 * tile_overlap, 1):
            raise ValueError(f"tile ({tile}) must be at least twice tile_overlap ({tile_overlap}) "
                             f"and at least the network's multiple ({self.multiple})")
        if tile_overlap < 0:
            raise ValueError(f"tile_overlap must be ≥ 0, got {tile_overlap}")
        self.tile, self.tile_overlap = tile, tile_overlap

    def guidance(self, ir: torch.Tensor, vis: torch.Tensor, **inputs) -> dict[str, torch.Tensor]:
        """The network's keyword inputs besides ``ir`` and ``vis``, for the whole image; none here.

        Called under inference mode with ``ir`` and ``vis`` ``(B, 1, H, W)`` on the fuser's device
        and dtype; ``inputs`` are the keyword arguments of the call. A fuser whose network takes
        guidance overrides it: a ``(B, C, H, W)`` tensor of the image's size is per-pixel (a mask:
        tiled and padded with the image); any other is shared by every tile (CLIP embeddings, text tokens).
        """
        if inputs:
            raise TypeError(f"{type(self.model).__name__} takes no {', '.join(sorted(inputs))}")
        return {}

    def _run(self, ir: torch.Tensor, vis: torch.Tensor, maps: dict[str, torch.Tensor],
             shared: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network on one tile (or the whole image): pads ``ir``, ``vis`` and the per-pixel ``maps``, crops back."""
        h, w = ir.shape[-2:]
        ir, vis, *padded = (pad_to_multiple(x, self.multiple).contiguous(memory_format=self.memory_format)
                            for x in (ir, vis, *maps.values()))
        return self.model(ir, vis, **shared, **dict(zip(maps, padded)))[..., :h, :w].float().contiguous()

    def __call__(self, ir: torch.Tensor, vis: torch.Tensor, **inputs) -> torch.Tensor:
        if ir.ndim != 4 or ir.shape[1] != 1 or ir.shape != vis.shape:
            raise ValueError(f"expected ir and vis of the same shape (B, 1, H, W), got "
                             f"{tuple(ir.shape)} and {tuple(vis.shape)}")
        source_device = ir.device
        ir = ir.to(self.device, self.dtype)
        vis = vis.to(self.device, self.dtype)
        with torch.inference_mode():
            guidance = self.guidance(ir, vis, **inputs)
            h, w = ir.shape[-2:]
            per_pixel = [k for k, v in guidance.items() if v.ndim == 4 and v.shape[-2:] == (h, w)]
            shared = {k: v for k, v in guidance.items() if k not in per_pixel}

            def run(ir: torch.Tensor, vis: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
                return self._run(ir, vis, dict(zip(per_pixel, maps)), shared)

            maps = [guidance[k] for k in per_pixel]
            if self.tile is not None and (h > self.tile or w > self.tile):
                fused = fuse_tiled(run, ir, vis, self.tile, self.tile_overlap, *maps)
            else:
                fused = run(ir, vis, *maps)
            fused = fused.clamp_(0.0, 1.0).to(source_device)
        return fused.clone()  # a normal tensor, usable outside inference mode


def load_fuser(method: str, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
               tile: int | None = 1024, tile_overlap: int = 64, half: bool = True) -> NetworkFuser:
    """Load network ``method`` (see :func:`resolve_weights`) as a :class:`NetworkFuser`."""
    model = fold_batchnorm(load_network(method, weights, device))
    return NetworkFuser(model, device, tile=tile, tile_overlap=tile_overlap, half=half)


@register_factory("refinefuse")
def refinefuse(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
               tile: int | None = 1024, tile_overlap: int = 64, half: bool = True) -> NetworkFuser:
    """RefineFuse as a fusion callable; options as :class:`NetworkFuser`."""
    return load_fuser("refinefuse", device, weights, tile=tile, tile_overlap=tile_overlap, half=half)


@register_factory("dfh-base")
def dfh_base(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
             tile: int | None = 1024, tile_overlap: int = 64, half: bool = True) -> NetworkFuser:
    """The Text-DFH base network as a fusion callable; options as :class:`NetworkFuser`."""
    return load_fuser("dfh-base", device, weights, tile=tile, tile_overlap=tile_overlap, half=half)


@register_factory("tard")
def tard_factory(device: str | torch.device = "cpu", weights: str | Path | None = None, register: bool = True,
                 tile: int | None = None, tile_overlap: int = 64, **options):
    """Fusion-method factory (see :mod:`stages.methods.registry`): returns ``fuse(ir, vis) -> fused``.

    ``ir``, ``vis``: ``(B, 1, H, W)`` float in [0, 1]; result ``(B, 1, H, W)`` in [0, 1].
    ``register=False`` skips the built-in registration (for pairs that are aligned
    already, e.g. the output of ``fuse register``). Images larger than ``tile`` px on
    a side are fused in tiles blended over ``tile_overlap`` px (:func:`fuse_tiled`):
    the IR is first warped onto the VIS grid with the whole image's field, then each
    tile is fused without registration (features of the warped IR, not warped features).
    """
    if options:
        raise ValueError(f"tard: unknown options {sorted(options)}; it takes 'register', 'tile', 'tile_overlap'")
    if tile is not None and (tile < 1 or tile < 2 * tile_overlap or tile_overlap < 0):
        raise ValueError(f"tard: tile ({tile}) must be positive and at least twice tile_overlap ({tile_overlap}) ≥ 0")
    net = fold_batchnorm(load_tard(weights, device))

    def fuse(ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        ir, vis = ir.to(device), vis.to(device)
        if tile is None or max(ir.shape[-2:]) <= tile:
            return net.fuse(ir, vis, register=register).clamp(0.0, 1.0)
        with torch.no_grad():
            if register:
                ir = warp(ir, net.registration.estimate_field(ir, vis))
            return fuse_tiled(lambda a, b: net.fuse(a, b, register=False), ir, vis, tile, tile_overlap).clamp(0.0, 1.0)

    return fuse
