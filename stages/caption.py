"""The ``caption`` stage: describe each pair in words; ``OUT/<id>.txt`` and record key ``caption``.

Backends (``CaptionStage(backend=...)``):

``advisor`` (default; offline, no weights, deterministic) — :func:`stages.methods.guidance.advise`.
    It measures what the MLLM-guided paper's LLaVA suggestions talk about and
    writes short, specific, task-oriented advice. See :func:`~stages.methods.guidance.advise` for every
    measurement and threshold.

``blip`` — BLIP through ``transformers``: ``BlipForConditionalGeneration``
    captions the visible image (TeSG's Eq. 1, ``T = BLIP(I_vis)``); with
    ``ask`` a ``BlipForQuestionAnswering`` model answers the prompt.
    ``model`` is a local folder or a hub name (default
    ``Salesforce/blip-image-captioning-base``, or ``Salesforce/blip-vqa-base``
    with ``ask``; the hub download needs internet).

``coca`` — open_clip's CoCa (``coca_ViT-B-32``), ``pretrained`` an open_clip
    tag (``mscoco_finetuned_laion2b_s13b_b90k``) or a local checkpoint path;
    generation uses open_clip's ``generate`` (its beam search needs
    ``transformers``). CoCa does not answer prompts: ``ask`` is refused.

``keyword`` (all backends): TeSG's ``T̂`` — the caption with the target word
removed (:func:`remove_keyword`) — is added as ``caption_without_keyword``, for
``fuse mask --backend text``. With ``advisor`` the keyword is also the noun the
advice uses for the warm targets ("two persons are invisible in VIS").
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from stages.core.images import ImageError, atomic_file, luminance, read_image
from stages.core.stage import Stage, StageError, record_path
from stages.methods.guidance import advise

BACKENDS = ("advisor", "blip", "coca")
DEFAULT_ASK = "To improve the accuracy of pedestrian detection, how can the quality of this image be enhanced?"

# ---------------------------------------------------------------- keyword removal (TeSG's T̂)

_ARTICLES = r"(?:\b(?:a|an|the|one|two|three|four|five|several|many|some)\s+)?"


def _forms(word: str) -> str:
    word = re.escape(word.strip())
    irregular = {"person": "people|persons", "man": "men", "woman": "women", "child": "children"}
    extra = irregular.get(word.lower(), "")
    return rf"{word}(?:s|es)?" + (f"|{extra}" if extra else "")


def remove_keyword(text: str, keyword: str) -> str:
    """TeSG's ``T̂``: ``text`` without ``keyword`` (its plural and a leading article or number too).

    >>> remove_keyword("a man and a car on the road, two cars parked", "car")
    'a man and on the road, parked'
    >>> remove_keyword("three people walk", "person")
    'walk'
    """
    if not keyword or not keyword.strip():
        return text
    pattern = re.compile(rf"{_ARTICLES}\b(?:{_forms(keyword)})\b", re.IGNORECASE)
    out = pattern.sub("", text)
    out = re.sub(r"\s+([,;.])", r"\1", out)
    out = re.sub(r"\s{2,}", " ", out).strip()
    out = re.sub(r"^[,;.]\s*", "", out)
    return out


# ---------------------------------------------------------------- the advisor


def _task_from_prompt(prompt: str | None) -> tuple[str, str | None]:
    """("pedestrian detection", "person") from a prompt such as the paper's question."""
    if not prompt:
        return "detection", None
    text = prompt.lower()
    for word, target in (("pedestrian", "person"), ("person", "person"), ("people", "person"), ("car", "car"),
                         ("vehicle", "car")):
        if word in text:
            task = "segmentation" if "segment" in text else "detection"
            return f"{word} {task}" if word in ("pedestrian", "vehicle") else task, target
    return ("segmentation" if "segment" in text else "detection"), None


# ---------------------------------------------------------------- model backends


class BlipCaptioner:
    """BLIP through ``transformers`` (caption, or answer ``ask`` with a VQA model)."""

    def __init__(self, model: str | None, device: str = "cpu", ask: str | None = None, max_new_tokens: int = 40,
                 model_obj=None, processor=None):
        import os

        import torch

        try:
            from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor
        except ImportError as exc:
            raise ImportError("the blip backend needs transformers: pip install transformers") from exc
        self.torch, self.device, self.ask, self.max_new_tokens = torch, torch.device(device), ask, max_new_tokens
        if model_obj is None:
            name = model or ("Salesforce/blip-vqa-base" if ask else "Salesforce/blip-image-captioning-base")
            local = Path(name).exists()
            kwargs = {"local_files_only": True} if local or os.environ.get("HF_HUB_OFFLINE") == "1" else {}
            cls = BlipForQuestionAnswering if ask else BlipForConditionalGeneration
            try:
                processor = BlipProcessor.from_pretrained(name, **kwargs)
                model_obj = cls.from_pretrained(name, **kwargs)
            except OSError as exc:
                raise FileNotFoundError(f"cannot load BLIP model {name!r} ({exc.__class__.__name__}); give --model PATH "
                                        f"to a local copy (this machine may have no internet)") from None
        self.model, self.processor = model_obj.to(self.device).eval(), processor

    def __call__(self, rgb: np.ndarray) -> str:
        from PIL import Image

        image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        inputs = self.processor(images=image, text=self.ask, return_tensors="pt").to(self.device)
        with self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return self.processor.decode(out[0], skip_special_tokens=True).strip()


class CocaCaptioner:
    """open_clip CoCa captioning (``coca_ViT-B-32``)."""

    def __init__(self, model: str = "coca_ViT-B-32", pretrained: str | None = "mscoco_finetuned_laion2b_s13b_b90k",
                 device: str = "cpu", model_obj=None, max_length: int = 30):
        import open_clip
        import torch

        self.torch, self.device, self.open_clip, self.max_length = torch, torch.device(device), open_clip, max_length
        if model_obj is None:
            try:
                model_obj, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=self.device)
            except RuntimeError as exc:
                raise FileNotFoundError(f"cannot load CoCa {model} weights {pretrained!r}: {exc}; give --pretrained "
                                        f"PATH to a local checkpoint (this machine may have no internet)") from None
        self.model = model_obj.to(self.device).eval()
        size = self.model.visual.image_size
        self.size = size if isinstance(size, tuple) else (size, size)
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def __call__(self, rgb: np.ndarray) -> str:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        x = ((x.clamp(0, 1) - self.mean) / self.std).to(self.device)
        with torch.no_grad():
            tokens = self.model.generate(x, seq_len=self.max_length)
        text = self.open_clip.decode(tokens[0])
        return text.split("<end_of_text>")[0].replace("<start_of_text>", "").strip(" .")


# ---------------------------------------------------------------- the stage


class CaptionStage(Stage):
    """Writes ``OUT/<id>.txt`` and adds ``caption`` (and ``caption_without_keyword``) to the record.

    Args:
        out_dir: output folder.
        backend: ``advisor``, ``blip`` or ``coca``.
        image: which image the model backends describe: ``vis`` (TeSG), ``fused``
            (the MLLM-guided paper asks about the unmodulated fused image) or ``ir``.
        ask: a prompt for backends that answer prompts (``blip``; ``advisor``
            reads the task and target from it).
        keyword: TeSG's target word; adds ``caption_without_keyword``.
        model, pretrained: model location for ``blip`` (``model``) and ``coca`` (``pretrained``).
        captioner: an already built callable ``rgb (H, W, 3) -> str`` (tests, other backends).
    """

    name = "caption"
    output_key, output_suffix = "caption", ".txt"

    def __init__(self, out_dir: Path, backend: str = "advisor", *, image: str = "vis", ask: str | None = None,
                 keyword: str | None = None, model: str | None = None, pretrained: str | None = None,
                 device: str = "cpu", captioner=None):
        if backend not in BACKENDS:
            raise ValueError(f"caption backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "coca" and ask:
            raise ValueError("coca captions but does not answer prompts; use --backend blip or advisor with --ask")
        if image not in ("vis", "ir", "fused"):
            raise ValueError(f"image {image!r}: choose vis, ir or fused")
        self.out_dir, self.backend, self.image, self.ask, self.keyword = Path(out_dir), backend, image, ask, keyword
        self.captioner = captioner
        if captioner is None and backend == "blip":
            self.captioner = BlipCaptioner(model or pretrained, device, ask)
        elif captioner is None and backend == "coca":
            self.captioner = CocaCaptioner(model or "coca_ViT-B-32", pretrained or "mscoco_finetuned_laion2b_s13b_b90k",
                                           device)
        self.settings = {"method": backend, "image": image, "ask": ask, "keyword": keyword, "model": model,
                         "pretrained": pretrained}
        self.input_keys = ("ir", "fused" if image == "fused" else "vis") if backend == "advisor" else (image,)

    def outputs(self, record: dict) -> list[Path]:
        """``<id>.recipe.json`` (what made the caption: a text file cannot carry it), then ``<id>.txt``."""
        return [self.out_dir / f"{record['id']}.recipe.json", self.output_path(record)]

    def _fields(self, caption: str) -> dict:
        fields = {"caption": caption}
        if self.keyword:
            fields["caption_without_keyword"] = remove_keyword(caption, self.keyword)
        return fields

    def skip_update(self, record: dict) -> dict:
        path = self.output_path(record)
        try:
            return self._fields(path.read_text(encoding="utf-8").strip())
        except OSError:
            return {}

    def _read(self, record: dict, key: str) -> np.ndarray:
        try:
            return read_image(record_path(record, key))
        except ImageError as exc:
            raise StageError(f"pair {record.get('id', '?')}: {exc}") from None

    def describe(self, record: dict) -> str:
        pair = record.get("id", "?")
        if self.backend == "advisor":
            ir = luminance(self._read(record, "ir"))
            vis = luminance(self._read(record, "fused" if self.image == "fused" else "vis"))
            if ir.shape != vis.shape:
                raise StageError(f"pair {pair}: sizes differ: IR {ir.shape[1]}x{ir.shape[0]}, "
                                 f"VIS {vis.shape[1]}x{vis.shape[0]} (register or resize first)")
            task, target = _task_from_prompt(self.ask)
            return advise(ir, vis, target=self.keyword or target, task=task)
        image = self._read(record, self.image)
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        try:
            return self.captioner(rgb)
        except (RuntimeError, ValueError) as exc:
            raise StageError(f"pair {pair}: {self.backend} failed: {exc}") from None

    def process_one(self, record: dict) -> dict:
        """Write the caption, then its recipe (last: it vouches for the caption)."""
        caption = self.describe(record)
        path = self.output_path(record)
        recipe_path = self.outputs(record)[0]
        try:
            with atomic_file(path) as tmp:
                tmp.write_text(caption + "\n", encoding="utf-8")
            with atomic_file(recipe_path) as tmp:
                tmp.write_text(json.dumps({"recipe": self.recipe(record)}, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise StageError(f"pair {record.get('id', '?')}: cannot write {path}: {exc}") from None
        return self._fields(caption)
