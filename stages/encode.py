"""The ``encode`` stage: CLIP image and text embeddings of each record, one file per pair.

``EncodeStage`` loads an open_clip model once (``model`` e.g. ``ViT-B-32``;
``pretrained`` an open_clip tag such as ``openai`` or ``laion2b_s34b_b79k``,
which open_clip downloads on a machine with internet, or a local checkpoint
path, or ``None`` for a randomly initialised model, drawn from a fixed seed so
every process builds the same one), embeds the record's images named in
``images`` (``ir``, ``vis``, ``fused``) and, when the record has a non-empty
``caption``, the caption text, and writes ``OUT/<id>.safetensors`` atomically.
The record gains ``"embedding": "OUT/<id>.safetensors"``.

File format (``safetensors``; E is the model's embedding width, e.g. 512 for
ViT-B-32; D its vision transformer width, e.g. 768; Gh × Gw the patch grid,
e.g. 7 × 7 at 224 px with 32 px patches), all ``float32`` on CPU:

==================  ============  =====================================================
tensor              shape         what
==================  ============  =====================================================
``ir``              ``(E,)``      image embedding of the IR image (``encode_image``)
``vis``             ``(E,)``      image embedding of the visible image (RGB if it is)
``fused``           ``(E,)``      image embedding of the fused image
``text``            ``(E,)``      text embedding of ``caption`` (only if the record has one)
``<image>_tokens``  ``(Gh,Gw,D)`` patch tokens (after ``ln_post``, before the projection),
                                  only with ``tokens=True`` (``--tokens``), ViT models only
==================  ============  =====================================================

Embeddings are *not* L2-normalised (normalise them for cosine similarity).
The metadata (strings) records ``format`` (``fuse-embedding-1``), ``model``,
``pretrained`` (``none`` for random init), ``image_size``, ``images`` (comma
list), ``normalized`` (``false``) and ``id``.

Image preprocessing (:func:`clip_input`, shared with MGFusion so that stored and
on-the-fly embeddings agree): gray images are repeated to 3 channels, the whole
image is resized to the model's square input (bicubic, antialiased; open_clip's
``squash`` mode, so nothing is cropped away and the token grid covers the whole
image), then normalised with the model's mean and standard deviation.

>>> stage = EncodeStage(Path("emb"), model="ViT-B-32", pretrained=None)   # doctest: +SKIP
>>> stage.process([{"id": "a", "ir": "ir/a.png", "vis": "vis/a.png"}])     # doctest: +SKIP
[{'embedding': 'emb/a.safetensors'}]
>>> load_embeddings("emb/a.safetensors")["ir"].shape                       # doctest: +SKIP
torch.Size([512])
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from stages.core.images import ImageError, atomic_file, read_image
from stages.core.provenance import RECIPE_KEY, recipe_text
from stages.core.stage import Stage, StageError, record_path

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
EMBEDDING_FORMAT = "fuse-embedding-1"
IMAGE_KEYS = ("ir", "vis", "fused")
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


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` → ``(1|3, H, W)``."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


class EncodeStage(Stage):
    """CLIP embeddings of each record's images (and caption) → ``OUT/<id>.safetensors``.

    Args:
        out_dir: folder for the files.
        model, pretrained: the open_clip model (see :func:`load_clip`).
        images: which record images to embed, any of ``ir``, ``vis``, ``fused``.
        tokens: also store the patch-token maps ``<image>_tokens``.
        device: where CLIP runs; float16 on CUDA (the files hold float32).
        batch_size: images per CLIP forward pass (the runner's batches are split into chunks of this size).
        clip: an already built open_clip model (tests, sharing one model).
    """

    name = "encode"
    output_key, output_suffix = "embedding", ".safetensors"

    def __init__(self, out_dir: Path, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 images: tuple[str, ...] | list[str] = ("ir", "vis"), tokens: bool = False,
                 device: str | torch.device = "cpu", batch_size: int = 32, clip: nn.Module | None = None):
        import open_clip

        bad = [key for key in images if key not in IMAGE_KEYS]
        if bad or not images:
            raise ValueError(f"images {','.join(images) or '(none)'}: choose from {', '.join(IMAGE_KEYS)}")
        self.out_dir, self.images, self.tokens = Path(out_dir), tuple(dict.fromkeys(images)), tokens
        self.model_name, self.pretrained = model, pretrained
        self.device = torch.device(device)
        self.batch_size = batch_size
        clip = clip if clip is not None else load_clip(model, pretrained, self.device)
        self.half = self.device.type == "cuda"
        self.clip = clip.to(self.device, torch.float16 if self.half else torch.float32).eval()
        self.encoder = ClipImageEncoder(self.clip.visual, model, pretrained)
        if tokens:
            if not hasattr(self.clip.visual, "grid_size") or not hasattr(self.clip.visual, "output_tokens"):
                raise ValueError(f"--tokens needs a ViT CLIP model; {model} has no patch tokens")
            self.clip.visual.output_tokens = True  # set once, never toggled: process() may run in several threads
        self.tokenizer = open_clip.get_tokenizer(model)
        self.settings = {"method": model, "pretrained": pretrained_label(pretrained), "images": list(self.images),
                         "tokens": tokens}
        self.input_keys = (*self.images, "caption")

    def _read(self, record: dict, key: str) -> torch.Tensor:
        pair = record.get("id", "?")
        path = record_path(record, key, pair)
        try:
            return _to_tensor(read_image(path))
        except ImageError as exc:
            raise StageError(f"pair {pair}: {exc}") from None

    @torch.inference_mode()
    def embed_images(self, images: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Embed ``(1|3, H, W)`` images of any sizes in batches: ``(E,)`` each, and ``(Gh, Gw, D)`` tokens or ``None``."""
        embeds, tokens = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = torch.stack([
                clip_input(img[None].to(self.device), self.encoder.image_size, self.encoder.mean, self.encoder.std)[0]
                for img in chunk
            ])
            x = batch.to(self.encoder.dtype)  # resized per image (sizes differ), one forward pass per chunk
            out = self.clip.visual(x)
            pooled, patch = out if isinstance(out, tuple) else (out, None)
            if self.tokens:
                gh, gw = self.clip.visual.grid_size
                patch = patch.float().reshape(patch.shape[0], gh, gw, patch.shape[-1]).cpu()
                tokens.extend(patch.unbind(0))
            else:
                tokens.extend([None] * len(chunk))
            embeds.extend(pooled.float().cpu().unbind(0))
        return embeds, tokens

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Embed captions in batches: ``(E,)`` each."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self.device)
            out.extend(self.clip.encode_text(tokens).float().cpu().unbind(0))
        return out

    def process(self, records: list[dict]) -> list[dict | Exception]:
        results: list[dict | Exception | None] = [None] * len(records)
        images, owners = [], []  # owners[k] = (record index, image key)
        texts, text_owners = [], []
        for i, record in enumerate(records):
            try:
                loaded = [(key, self._read(record, key)) for key in self.images]
            except StageError as exc:
                results[i] = exc
                continue
            for key, img in loaded:
                images.append(img)
                owners.append((i, key))
            caption = record.get("caption")
            if isinstance(caption, str) and caption.strip():
                texts.append(caption)
                text_owners.append(i)
        tensors: dict[int, dict[str, torch.Tensor]] = {i: {} for i, r in enumerate(results) if r is None}
        try:
            embeds, tokens = self.embed_images(images)
            text_embeds = self.embed_texts(texts)
        except (RuntimeError, ValueError) as exc:
            for i in tensors:
                results[i] = StageError(f"pair {records[i].get('id', '?')}: CLIP failed: {exc}")
            return results
        for (i, key), embed, token_map in zip(owners, embeds, tokens):
            tensors[i][key] = embed.contiguous()
            if token_map is not None:
                tensors[i][f"{key}_tokens"] = token_map.contiguous()
        for i, embed in zip(text_owners, text_embeds):
            tensors[i]["text"] = embed.contiguous()
        for i, named in tensors.items():
            path = self.output_path(records[i])
            metadata = {
                "format": EMBEDDING_FORMAT, "model": self.model_name, "pretrained": pretrained_label(self.pretrained),
                "image_size": str(self.encoder.image_size), "images": ",".join(self.images),
                "normalized": "false", "id": str(records[i].get("id", "")),
            }
            try:
                metadata[RECIPE_KEY] = recipe_text(self.recipe(records[i]))
                with atomic_file(path) as tmp:
                    save_file(named, str(tmp), metadata=metadata)
                    os.chmod(tmp, 0o644)
                results[i] = {"embedding": str(path)}
            except OSError as exc:
                results[i] = StageError(f"pair {records[i].get('id', '?')}: cannot write {path}: {exc}")
        return results  # type: ignore[return-value]
