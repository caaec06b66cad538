"""CLIP below the networks that use it: open_clip loading, the image tower, the embedding files.

* :func:`load_clip` — an open_clip model, frozen, in eval mode (``pretrained`` an
  open_clip tag, a local checkpoint, or ``None`` for a random model drawn from
  :data:`RANDOM_INIT_SEED`); :func:`parse_pretrained` / :func:`pretrained_label`
  read and write the tag.
* :class:`ClipImageEncoder` — the frozen image tower with its preprocessing
  (:func:`clip_input`), used by ``fuse encode`` (:mod:`stages.encode`) and MGFusion
  (:mod:`stages.nets.mgfusion`), so stored and on-the-fly embeddings agree.
* :func:`load_embeddings` / :func:`embedding_metadata` — read the files
  ``fuse encode`` writes (their format is described in :mod:`stages.encode`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
EMBEDDING_FORMAT = "fuse-embedding-1"
RANDOM_INIT_SEED = 0  # random (pretrained=None) CLIP models are drawn from this seed: reproducible across processes


def parse_pretrained(value: str | None) -> str | None:
    """``"none"``/``""``/``None`` → ``None`` (random init); anything else is an open_clip tag or a path."""
    if value is None or str(value).strip().lower() in ("", "none", "random"):
        return None
    return str(value)


def pretrained_label(pretrained: str | None) -> str:
    """How ``pretrained`` is written into files and model cards (``"none"`` for random init)."""
    return "none" if pretrained is None else str(pretrained)


@contextlib.contextmanager
def _quiet_logs(level: int = logging.ERROR):
    """Silence open_clip's root-logger messages (random-init warning, download errors) and
    huggingface_hub's retry warnings while a model loads: :func:`load_clip` raises one clear error instead."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous):
            logger.setLevel(old)


def load_clip(model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | torch.device = "cpu") -> nn.Module:
    """Build an open_clip model, frozen (``requires_grad=False``) and in eval mode, on ``device``.

    Args:
        model: an open_clip architecture name (``open_clip.list_models()``).
        pretrained: an open_clip tag for ``model`` (downloaded by open_clip, or
            found in its cache), a local checkpoint file, or ``None`` for a
            random model drawn from :data:`RANDOM_INIT_SEED` (tests, offline demos).

    Raises:
        ValueError: unknown model or tag.
        RuntimeError: the weights could not be downloaded (the message says what to do).
    """
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model!r}; see open_clip.list_models(), e.g. ViT-B-32, ViT-L-14")
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            hint = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none"
            raise ValueError(f"CLIP pretrained {pretrained!r} is neither a file nor an open_clip tag for "
                             f"{model} (tags: {hint})")
    if pretrained is None:
        with torch.random.fork_rng(devices=[]), _quiet_logs():
            torch.manual_seed(RANDOM_INIT_SEED)
            clip = open_clip.create_model(model, pretrained=None)
    else:
        try:
            with _quiet_logs(logging.CRITICAL):
                clip = open_clip.create_model(model, pretrained=pretrained)
        except RuntimeError as exc:
            reason = str(exc).split(". ")[0]
            raise RuntimeError(
                f"cannot load CLIP {model} weights {pretrained!r} ({reason}); on a machine without internet "
                f"pass a local checkpoint file as --pretrained PATH, or --pretrained none for a random "
                f"(untrained) CLIP"
            ) from None
    clip = clip.to(device).eval()
    for param in clip.parameters():
        param.requires_grad_(False)
    return clip


def _preprocess_cfg(visual: nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    import open_clip

    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return int(size), tuple(mean), tuple(std)


def clip_input(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """``(B, 1|3, H, W)`` in [0, 1] → ``(B, 3, size, size)`` normalised CLIP input (whole image, squashed).

    >>> clip_input(torch.rand(2, 1, 48, 80), 224, (0.5,) * 3, (0.25,) * 3).shape
    torch.Size([2, 3, 224, 224])
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class ClipImageEncoder(nn.Module):
    """A frozen CLIP image tower with its preprocessing: ``(B, 1|3, H, W)`` [0, 1] → ``(B, E)``.

    It stays in eval mode and without gradients even inside a module put in
    training mode, and its parameters never require gradients.

    Args:
        visual: ``open_clip`` model ``.visual``.
        model, pretrained: recorded names (for checkpoints and checks).
    """

    def __init__(self, visual: nn.Module, model: str = "", pretrained: str | None = None):
        super().__init__()
        self.visual = visual
        self.model_name, self.pretrained = model, pretrained
        self.image_size, self.mean, self.std = _preprocess_cfg(visual)
        self.embed_dim = int(visual.output_dim)
        for param in self.visual.parameters():
            param.requires_grad_(False)
        self.train(False)

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
             device: str | torch.device = "cpu") -> ClipImageEncoder:
        return cls(load_clip(model, pretrained, device).visual, model, pretrained)

    def train(self, mode: bool = True) -> ClipImageEncoder:  # always eval: the CLIP is frozen
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, E)`` float32 of ``(B, 1|3, H, W)`` images in [0, 1] (gray is repeated to RGB)."""
        with torch.no_grad():
            x = clip_input(images, self.image_size, self.mean, self.std).to(self.dtype)
            out = self.visual(x)
            return (out[0] if isinstance(out, tuple) else out).float()


def load_embeddings(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an embedding file written by :class:`EncodeStage` (see the table above)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such embedding file")
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def embedding_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an embedding file: ``model``, ``pretrained``, ``image_size``, ``images``, ..."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
