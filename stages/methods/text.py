"""The text-guided networks as fusion methods: ``tesg`` (:mod:`stages.nets.tesg`), ``textdfh`` (:mod:`stages.nets.textdfh`).

* the networks load with :func:`stages.methods.learned.load_network` (their ``fixed_text``
  metadata, written by ``save_weights(..., extra={"fixed_text": ...})``, becomes ``trained_fixed_text``).
* :func:`prepare_guidance` — what the fusion callables do with a record's extra
  inputs: a mask tensor/array/path (or, when absent, the ``salient`` mask of
  :mod:`stages.methods.guidance` computed on the fly) and the text (a caption, a list of
  captions, precomputed features, or, when absent, the ``advisor`` caption
  computed on the fly); the networks receive both as tensors.
* :class:`TextFuser` — :class:`~stages.methods.learned.NetworkFuser` (pads, tiles, casts) with that
  guidance as its hook.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stages.methods.guidance import advise, read_mask, salient_mask
from stages.methods.learned import NetworkFuser, load_network
from stages.methods.registry import register_factory
from stages.nets.inference import fold_batchnorm
from stages.nets.text_features import as_text_tokens


def _mask_tensor(mask, ir: torch.Tensor) -> torch.Tensor:
    b, _, h, w = ir.shape
    if isinstance(mask, (str, os.PathLike)) or (isinstance(mask, (list, tuple)) and mask and
                                                 isinstance(mask[0], (str, os.PathLike))):
        paths = [mask] * b if isinstance(mask, (str, os.PathLike)) else list(mask)
        mask = np.stack([read_mask(p, (h, w)) for p in paths])[:, None].astype(np.float32)
    m = torch.as_tensor(mask, dtype=ir.dtype, device=ir.device)
    while m.ndim < 4:
        m = m[None]
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m.float(), size=(h, w), mode="nearest").to(ir.dtype)
    return (m > 0.5).to(ir.dtype).expand(b, 1, h, w)


def prepare_guidance(ir: torch.Tensor, vis: torch.Tensor, mask=None, text=None, *, need_mask: bool = True,
                     text_dim: int, backend: str = "minilm") -> tuple[torch.Tensor | None, torch.Tensor]:
    """The mask ``(B, 1, H, W)`` in {0, 1} and text tokens ``(B, L, D)`` for a batch.

    ``mask``: ``None`` (compute :func:`~stages.methods.guidance.salient_mask` per image), a
    tensor/array broadcastable to ``(B, 1, H, W)``, a mask PNG path, or a list of paths.
    ``text``: ``None`` (compute :func:`~stages.methods.guidance.advise` per image), or anything
    :func:`stages.nets.text_features.as_text_tokens` accepts (caption(s), feature tensors).
    """
    b = ir.shape[0]
    need_numpy = (need_mask and mask is None) or text is None
    if need_numpy:
        irs = ir.detach().float().cpu().numpy()[:, 0]
        viss = vis.detach().float().cpu().numpy()[:, 0]
    m = None
    if need_mask:
        if mask is None:
            mask = np.stack([salient_mask(a, v) for a, v in zip(irs, viss)])[:, None].astype(np.float32)
        m = _mask_tensor(mask, ir)
    if text is None:
        text = [advise(a, v) for a, v in zip(irs, viss)]
    tokens = as_text_tokens(text, b, dim=text_dim, device=ir.device, backend=backend)
    return m, tokens.to(ir.dtype)


class TextFuser(NetworkFuser):
    """A text-guided network as a fusion callable: ``fuser(ir, vis, *, mask=None, text=None, records=None)``.

    ``ir``, ``vis``: ``(B, 1, H, W)`` in [0, 1]; result ``(B, 1, H, W)`` float32 in [0, 1] on the
    input's device. ``records`` (from the fuse stage) supply ``caption`` and ``mask`` per pair when
    every record has them (``fuse caption`` / ``fuse mask`` ran before); missing guidance is
    computed on the whole image (:func:`prepare_guidance`). Padding, tiling and the channels-last
    layout are :class:`NetworkFuser`'s (on a quiet machine textdfh fuses a 640×480 pair in 1.29 s
    channels-last against 1.90 s contiguous, tesg 5.17 against 5.29 s; ``bench_nets.py``): the mask
    ``(B, 1, H, W)`` is tiled with the image, the text tokens ``(B, L, D)`` are shared by every tile.
    Untiled (``tile=None``) and float32 by default, as it fused before it could tile.
    """

    uses_records = True  # the fuse stage passes the pairs' records: their "caption" and "mask" guide the fusion

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", *, fixed_text: str | None = None,
                 tile: int | None = None, tile_overlap: int = 64, half: bool = False):
        super().__init__(model, device, tile=tile, tile_overlap=tile_overlap, half=half)
        self.uses_mask = bool(getattr(model, "mask_guidance", False))  # TeSG's MGCA; Text-DFH takes no mask
        # the fixed-text ablation: the given text, else the one the weights were trained with, if any
        self.fixed_text = fixed_text if fixed_text is not None else getattr(model, "trained_fixed_text", None)
        self.text_dim = int(model.config["text_dim"])
        self.backend = model.config.get("text_backend", "minilm")

    def guidance(self, ir: torch.Tensor, vis: torch.Tensor, *, mask=None, text=None, records=None,
                 vis_rgb=None) -> dict[str, torch.Tensor]:
        """``text`` tokens ``(B, L, D)`` and, when the network uses it, the ``mask`` ``(B, 1, H, W)`` in {0, 1}."""
        if self.fixed_text is not None:  # the fixed-text ablation: one text replaces every caption
            text = self.fixed_text
        if records is not None:
            if text is None and all(isinstance(r.get("caption"), str) for r in records):
                text = [r["caption"] for r in records]
            if mask is None and all(isinstance(r.get("mask"), str) for r in records):
                mask = [r["mask"] for r in records]
        m, tokens = prepare_guidance(ir, vis, mask, text, need_mask=self.uses_mask, text_dim=self.text_dim,
                                     backend=self.backend)
        return {"text": tokens} if m is None else {"text": tokens, "mask": m}


@register_factory("tesg")
def tesg_factory(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
                 fixed_text: str | None = None, tile: int | None = None, tile_overlap: int = 64) -> TextFuser:
    """TeSG as a fusion callable ``fuse(ir, vis, *, mask=None, text=None)`` on ``(B, 1, H, W)`` in [0, 1].

    ``mask``: the record's mask (a path, list of paths, or tensor); ``None`` computes
    the ``salient`` mask. ``text``: the record's caption(s) (or precomputed text
    features of the trained width); ``None`` computes the ``advisor`` caption.
    ``fixed_text`` replaces every caption (ablation); by default, weights trained with
    ``--fixed-text`` use their text. Weights: ``weights`` or the shipped
    ``stages/weights/tesg.safetensors``. ``tile``, ``tile_overlap``: as :class:`TextFuser`.
    """
    model = fold_batchnorm(load_network("tesg", weights, device))
    return TextFuser(model, device, fixed_text=fixed_text, tile=tile, tile_overlap=tile_overlap)


@register_factory("textdfh")
def textdfh_factory(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
                    fixed_text: str | None = None, tile: int | None = None, tile_overlap: int = 64) -> TextFuser:
    """Text-DFH as a fusion callable ``fuse(ir, vis, *, mask=None, text=None)`` on ``(B, 1, H, W)``.

    ``text``: the record's caption(s) — the advisor's answer to the paper's
    question — or precomputed text features; ``None`` computes the ``advisor``
    caption on the pair. ``mask`` is not used at inference (accepted and ignored).
    ``fixed_text`` replaces every caption (the ablation "fixed text"); by default,
    weights trained with ``--fixed-text`` use their text. ``tile``, ``tile_overlap``: as :class:`TextFuser`.
    """
    model = fold_batchnorm(load_network("textdfh", weights, device))
    return TextFuser(model, device, fixed_text=fixed_text, tile=tile, tile_overlap=tile_overlap)
