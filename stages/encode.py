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

Image preprocessing (:func:`stages.nets.clip.clip_input`, shared with MGFusion so that stored and
on-the-fly embeddings agree): gray images are repeated to 3 channels, the whole
image is resized to the model's square input (bicubic, antialiased; open_clip's
``squash`` mode, so nothing is cropped away and the token grid covers the whole
image), then normalised with the model's mean and standard deviation.

>>> stage = EncodeStage(Path("emb"), model="ViT-B-32", pretrained=None)   # doctest: +SKIP
>>> stage.process([{"id": "a", "ir": "ir/a.png", "vis": "vis/a.png"}])     # doctest: +SKIP
[{'embedding': 'emb/a.safetensors'}]
>>> stages.nets.clip.load_embeddings("emb/a.safetensors")["ir"].shape                       # doctest: +SKIP
torch.Size([512])
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from stages.core.images import ImageError, atomic_file, read_image
from stages.core.provenance import RECIPE_KEY, recipe_text
from stages.core.stage import Stage, StageError, record_path
from stages.nets.clip import (DEFAULT_MODEL, DEFAULT_PRETRAINED, EMBEDDING_FORMAT, ClipImageEncoder, clip_input, load_clip,
                              pretrained_label)

IMAGE_KEYS = ("ir", "vis", "fused")


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
