"""MGFusion (:mod:`stages.nets.mgfusion`) as the fusion method ``mgfusion``.

:func:`load_mgfusion` rebuilds the network from its weights (given, or shipped) with the
CLIP it was trained with; :class:`MGFusionFuser` takes the CLIP embeddings from
``fuse encode`` files named in the records, or computes them, and tiles large images.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from stages.methods.learned import NetworkFuser, resolve_weights
from stages.methods.registry import register_factory
from stages.nets.checkpoint import config_of, invalid, load_checked
from stages.nets.clip import ClipImageEncoder, embedding_metadata, load_embeddings, parse_pretrained, pretrained_label
from stages.nets.inference import fold_batchnorm
from stages.nets.mgfusion import METHOD, MGFusion, checkpoint_clip

NO_WEIGHTS_MESSAGE = (
    "no trained weights for fusion method 'mgfusion': train them with "
    "`fuse train -m mgfusion --pretrained openai --ir DIR --vis DIR -o runs/`, "
    "then run `fuse fuse -m mgfusion --weights runs/mgfusion.safetensors`."
)


def load_mgfusion(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                  clip_model: str | None = None, pretrained: str | None = None,
                  clip: ClipImageEncoder | None = None) -> MGFusion:
    """Rebuild MGFusion from a checkpoint with the CLIP it was trained with, in eval mode on ``device``.

    Args:
        clip_model: must equal the checkpoint's (``None``: take it from the checkpoint).
        pretrained: ``None`` takes the checkpoint's tag; a local file stands in
            for the recorded tag (a machine without internet); a different tag is an error.
        clip: an already built :class:`ClipImageEncoder` (must match too).
    """
    path = resolve_weights(METHOD, weights, NO_WEIGHTS_MESSAGE)
    saved_model, saved_pretrained = checkpoint_clip(path)
    if clip_model is not None and clip_model != saved_model:
        raise ValueError(f"{path} was trained with CLIP {saved_model}, not {clip_model}")
    pretrained = parse_pretrained(pretrained)
    if pretrained is not None and not Path(pretrained).is_file() and pretrained != saved_pretrained:
        raise ValueError(f"{path} was trained with CLIP weights {pretrained_label(saved_pretrained)!r}, "
                         f"not {pretrained!r} (a local checkpoint file of those weights may be given instead)")
    use_pretrained = pretrained if pretrained is not None else saved_pretrained
    if clip is None:
        clip = ClipImageEncoder.load(saved_model, use_pretrained, device)
    elif clip.model_name and clip.model_name != saved_model:
        raise ValueError(f"{path} was trained with CLIP {saved_model}, not {clip.model_name}")

    def build(metadata: dict[str, str]) -> MGFusion:
        config = config_of(path, METHOD, metadata)
        if clip.embed_dim != config.pop("embed_dim", clip.embed_dim):
            raise invalid(path, METHOD, f"CLIP embedding width {clip.embed_dim} differs from the checkpoint's")
        return MGFusion(**config, clip=clip)

    return load_checked(path, METHOD, build, unsaved="clip.").to(device).eval()


class MGFusionFuser(NetworkFuser):
    """MGFusion as a fusion callable: ``fuser(ir, vis, *, vis_rgb=None, records=None, embeddings=None)``.

    ``ir``, ``vis``: ``(B, 1, H, W)`` in [0, 1], any ``H × W``; result ``(B, 1, H, W)``
    float32 in [0, 1] on the input's device. The CLIP embeddings are, per item:
    ``embeddings`` (``{"ir": (B, E), "vis": (B, E)}``) when given; else the
    ``fuse encode`` file named by ``records[b]["embedding"]`` when it holds ``ir`` and ``vis``
    made with this checkpoint's CLIP; else computed here on the whole image
    (``vis_rgb`` ``(B, 3, H, W)`` for the visible one when given). Large images
    are fused in tiles (``tile`` px, raised-cosine blending over ``tile_overlap``),
    all tiles sharing the whole image's embeddings. float16 on CUDA with ``half``.
    """

    uses_records = True  # the fuse stage passes the pairs' records (for "embedding") and vis_rgb

    def __init__(self, model: MGFusion, device: str | torch.device = "cpu", *, tile: int | None = 1024,
                 tile_overlap: int = 64, half: bool = True):
        super().__init__(model, device, tile=tile, tile_overlap=tile_overlap, half=half)
        clip = model.clip
        self.clip_model = clip.model_name if clip is not None else ""
        self.clip_pretrained = pretrained_label(clip.pretrained) if clip is not None else ""

    def _stored(self, path: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(ir, vis)`` embeddings from a ``fuse encode`` file, or ``None`` when made with another CLIP."""
        if not path:
            return None
        try:
            meta = embedding_metadata(path)
            stored = load_embeddings(path)
        except FileNotFoundError:
            raise ValueError(f"embedding file {path} does not exist") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"embedding file {path} is unreadable ({exc})") from None
        if meta.get("model") != self.clip_model or meta.get("pretrained") != self.clip_pretrained:
            return None
        if "ir" not in stored or "vis" not in stored:
            return None
        return stored["ir"], stored["vis"]

    def embeddings_for(self, ir: torch.Tensor, vis: torch.Tensor, vis_rgb: torch.Tensor | None = None,
                       embedding_paths: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item CLIP embeddings ``(B, E)`` each, from files where usable, else computed in one batch."""
        b = ir.shape[0]
        if embedding_paths is not None and len(embedding_paths) != b:
            raise ValueError(f"{len(embedding_paths)} embedding paths for a batch of {b}")
        stored = [self._stored(p) for p in (embedding_paths or [None] * b)]
        todo = [i for i, s in enumerate(stored) if s is None]
        e_ir: list = [s[0] if s else None for s in stored]
        e_vis: list = [s[1] if s else None for s in stored]
        if todo:
            vis_clip = vis if vis_rgb is None else vis_rgb
            computed_ir, computed_vis = self.model.clip_embeddings(ir[todo], vis_clip[todo].to(ir.device, ir.dtype))
            for j, i in enumerate(todo):
                e_ir[i], e_vis[i] = computed_ir[j], computed_vis[j]
        return (torch.stack([t.to(self.device, self.dtype) for t in e_ir]),
                torch.stack([t.to(self.device, self.dtype) for t in e_vis]))

    def guidance(self, ir: torch.Tensor, vis: torch.Tensor, *, vis_rgb: torch.Tensor | None = None,
                 records: list[dict] | None = None, embeddings: dict | None = None) -> dict[str, torch.Tensor]:
        """The whole image's CLIP embeddings ``clip_ir``, ``clip_vis`` ``(B, E)``, shared by every tile."""
        if embeddings is not None:
            return {"clip_ir": embeddings["ir"].to(self.device, self.dtype),
                    "clip_vis": embeddings["vis"].to(self.device, self.dtype)}
        if vis_rgb is not None:
            vis_rgb = vis_rgb.to(self.device, self.dtype)
        paths = [record.get("embedding") for record in records] if records is not None else None
        e_ir, e_vis = self.embeddings_for(ir, vis, vis_rgb, paths)
        return {"clip_ir": e_ir, "clip_vis": e_vis}


@register_factory("mgfusion")
def mgfusion_factory(device: str | torch.device = "cpu", weights: str | os.PathLike | None = None, *,
                     clip_model: str | None = None, pretrained: str | None = None, tile: int | None = 1024,
                     tile_overlap: int = 64, half: bool = True) -> MGFusionFuser:
    """The registry factory: MGFusion from ``weights`` (or the shipped file) with the CLIP it was trained with.

    ``clip_model`` / ``pretrained`` default to the checkpoint's (see :func:`load_mgfusion`).
    Without trained weights, :class:`FileNotFoundError` says what to run.
    """
    model = fold_batchnorm(load_mgfusion(weights, device, clip_model=clip_model, pretrained=pretrained))
    return MGFusionFuser(model, device, tile=tile, tile_overlap=tile_overlap, half=half)
