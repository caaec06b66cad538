"""The ``caption`` stage: describe each pair in words; ``OUT/<id>.txt`` and record key ``caption``.

Backends (``CaptionStage(backend=...)``):

``advisor`` (default; offline, no weights, deterministic) — :func:`advise`.
    It measures what the MLLM-guided paper's LLaVA suggestions talk about and
    writes short, specific, task-oriented advice. See :func:`advise` for every
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
from scipy import ndimage

from stages.core.images import ImageError, atomic_file, luminance, read_image
from stages.core.stage import Stage, StageError, record_path

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

# Thresholds (luminance in [0, 1]); see advise().
DARK, VERY_DARK, BRIGHT = 0.25, 0.12, 0.72
LOW_CONTRAST = 0.10
UNDER, OVER = 0.03, 0.97
CLIPPED_FRACTION = 0.15
NOISE_SIGMA = 0.02
BLUR_RELATIVE = 0.05
HAZE_BRIGHT, HAZE_CONTRAST = 0.55, 0.12
INVISIBLE, FAINT = 0.6, 1.2
TARGET_MIN_AREA, TARGET_MIN_IR = 5e-4, 2.0
MAX_PLACES = 4

_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _count(n: int, noun: str) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    plural = noun if n == 1 else ("people" if noun == "person" else noun + ("es" if noun.endswith("s") else "s"))
    return f"{word} {plural}"


def noise_sigma(y: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996): σ from the image convolved with a Laplacian-difference kernel."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    h, w = y.shape
    if h < 3 or w < 3:  # no pixel has a full 3x3 neighbourhood: nothing to measure
        return 0.0
    response = np.abs(ndimage.convolve(y.astype(np.float32), kernel, mode="reflect"))[1:-1, 1:-1]
    # Edges inflate the estimate; measure on the calmer 80 % of pixels (by gradient).
    grad = ndimage.gaussian_gradient_magnitude(y.astype(np.float32), 1.0)[1:-1, 1:-1]
    calm = grad <= np.quantile(grad, 0.8)
    return float(np.sqrt(np.pi / 2) * response[calm].mean() / 6.0) if calm.any() else 0.0


def sharpness(y: np.ndarray) -> float:
    """Mean gradient magnitude of the image after light denoising (σ = 1): low means blurred or featureless."""
    return float(ndimage.gaussian_gradient_magnitude(y.astype(np.float32), 1.0).mean())


def _where(ys: float, xs: float) -> str:
    """A position (fractions of height and width) in words."""
    row = "upper" if ys < 1 / 3 else "lower" if ys > 2 / 3 else "middle"
    col = "left" if xs < 1 / 3 else "right" if xs > 2 / 3 else "centre"
    return "centre" if row == "middle" and col == "centre" else f"{row} {col}" if row != "middle" else f"middle {col}"


def _region_names(h: int, w: int) -> dict[str, tuple[slice, slice]]:
    return {
        "upper half": (slice(0, h // 2), slice(None)),
        "lower half": (slice(h // 2, h), slice(None)),
        "left half": (slice(None), slice(0, w // 2)),
        "right half": (slice(None), slice(w // 2, w)),
    }


def _visibility(y: np.ndarray, component: np.ndarray) -> float:
    """How much a region stands out from its surroundings in ``y``: |mean_in − mean_ring| / (std_ring + 0.02)."""
    size = max(3, int(np.sqrt(component.sum())))
    ring = ndimage.binary_dilation(component, np.ones((3, 3), bool), iterations=size) & ~component
    if not ring.any():
        return 0.0
    inside, around = y[component], y[ring]
    return float(abs(inside.mean() - around.mean()) / (around.std() + 0.02))


def measure(ir: np.ndarray, vis: np.ndarray) -> dict:
    """Everything :func:`advise` looks at, as numbers (``ir``, ``vis``: ``(H, W)`` luminance in [0, 1])."""
    from stages.mask import warm_targets

    h, w = vis.shape
    stats = {
        "brightness": float(vis.mean()), "contrast": float(vis.std()),
        "under": float((vis < UNDER).mean()), "over": float((vis > OVER).mean()),
        "noise": noise_sigma(vis), "sharpness": sharpness(vis), "regions": {}, "targets": [],
    }
    for name, (rows, cols) in _region_names(h, w).items():
        part = vis[rows, cols]
        stats["regions"][name] = {"brightness": float(part.mean()), "contrast": float(part.std()),
                                  "over": float((part > OVER).mean()), "under": float((part < UNDER).mean()),
                                  "sharpness": sharpness(part) / (float(part.std()) + 0.02)}
    labels, count = ndimage.label(warm_targets(ir), np.ones((3, 3), bool))
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        component = labels == index
        if component.mean() < TARGET_MIN_AREA:
            continue
        ys, xs = ndimage.center_of_mass(component)
        ir_visibility = _visibility(ir, component)
        if ir_visibility < TARGET_MIN_IR:
            continue
        stats["targets"].append({
            "where": _where(ys / h, xs / w), "area": float(component.mean()),
            "vis_visibility": _visibility(vis, component), "ir_visibility": ir_visibility,
            "box": [int(box[1].start), int(box[0].start), int(box[1].stop), int(box[0].stop)],
        })
    return stats


def advise(ir: np.ndarray, vis: np.ndarray, *, target: str | None = None, task: str = "detection") -> str:
    """Short, specific, task-oriented advice on fusing a pair, from measurements alone.

    Deterministic; no model. ``ir`` and ``vis`` are ``(H, W)`` luminance in [0, 1]
    (an RGB VIS is reduced to BT.601 luma). What it measures on the visible
    image (the one whose weaknesses fusion must make up for) and when it speaks:

    * **brightness** — the mean luminance: ``dark`` below 0.25 ("night scene"
      below 0.12), ``bright`` above 0.72; also per half (upper/lower/left/right)
      so the advice names where to act ("brighten the lower half").
    * **contrast** — the RMS contrast (standard deviation of luminance): low
      below 0.10 globally or in a half ("raise contrast in the lower half").
    * **over- and under-exposure** — the fraction of pixels above 0.97 or below
      0.03; more than 15 % clipped is reported with the half it sits in.
    * **haze or smoke** — a half that is bright (mean > 0.55), flat (std < 0.12)
      and soft (relative sharpness below 0.05, see blur).
    * **noise** — Immerkær's σ estimate (:func:`noise_sigma`) above 0.02
      (≈ 5 grey levels): "suppress noise".
    * **blur** — the relative sharpness, mean gradient magnitude (:func:`sharpness`)
      over (RMS contrast + 0.02), below 0.05 while the image is not dark: "sharpen edges".
    * **warm targets** — the IR image's warm targets (:func:`stages.mask.warm_targets`,
      the ``salient`` mask's targets) covering at least 0.05 % of the image and
      standing out in IR by at least 2 (same measure). For each, its visibility in VIS is the
      difference between its mean and the mean of a surrounding ring, in units
      of the ring's spread (:func:`_visibility`): below 0.6 the target is
      *invisible in VIS*, below 1.2 *faint*. The advice counts them and says
      where they are, at most four places ("two persons are invisible in VIS
      (lower left, centre); keep their IR intensity").

    ``target`` names the targets (TeSG's keyword, e.g. ``person``; default
    "warm targets"); ``task`` is the downstream task the advice serves.

    >>> from fuse_cli.synthetic import make_pair
    >>> ir, vis = make_pair(1, night=True)
    >>> advise(ir, vis.mean(-1)).startswith("night scene")
    True
    """
    if ir.shape != vis.shape:
        raise ValueError(f"IR {ir.shape} and VIS {vis.shape} differ in size")
    s = measure(ir, vis)
    noun = target.strip() if target else "warm target"
    parts: list[str] = []
    b = s["brightness"]
    if b < VERY_DARK:
        parts.append(f"night scene, the visible image is very dark (mean {b:.2f}); brighten it strongly")
    elif b < DARK:
        parts.append(f"the visible image is dark (mean {b:.2f}); raise brightness")
    elif b > BRIGHT:
        parts.append(f"the visible image is bright (mean {b:.2f}); lower the exposure")
    regions = s["regions"]
    for name, r in regions.items():
        if name in ("left half", "right half"):
            continue  # upper/lower first; left/right only when they differ markedly (below)
        if DARK <= b and r["brightness"] < DARK:
            parts.append(f"brighten the {name}")
        if r["brightness"] > HAZE_BRIGHT and r["contrast"] < HAZE_CONTRAST and r["sharpness"] < BLUR_RELATIVE:
            parts.append(f"haze or smoke in the {name} hides detail; take it from IR")
        elif r["contrast"] < LOW_CONTRAST:
            parts.append(f"raise contrast in the {name}")
    left, right = regions["left half"]["brightness"], regions["right half"]["brightness"]
    if abs(left - right) > 0.2:
        darker = "left half" if left < right else "right half"
        parts.append(f"even out the lighting, the {darker} is darker")
    over_where = max(regions, key=lambda k: regions[k]["over"])
    under_where = max(regions, key=lambda k: regions[k]["under"])
    if s["over"] > CLIPPED_FRACTION:
        parts.append(f"{s['over']:.0%} over-exposed, mostly in the {over_where}; recover it from IR")
    if s["under"] > CLIPPED_FRACTION:
        parts.append(f"{s['under']:.0%} under-exposed, mostly in the {under_where}")
    if s["noise"] > NOISE_SIGMA:
        parts.append("suppress noise")
    if s["sharpness"] / (s["contrast"] + 0.02) < BLUR_RELATIVE and b >= DARK:
        parts.append("sharpen edges, the visible image is blurred")
    targets = s["targets"]
    invisible = [t for t in targets if t["vis_visibility"] < INVISIBLE]
    faint = [t for t in targets if INVISIBLE <= t["vis_visibility"] < FAINT]
    if invisible:
        where = ", ".join(list(dict.fromkeys(t["where"] for t in invisible))[:MAX_PLACES])
        verb = "is" if len(invisible) == 1 else "are"
        its = "its" if len(invisible) == 1 else "their"
        parts.append(f"{_count(len(invisible), noun)} {verb} invisible in VIS ({where}); keep {its} IR intensity")
    if faint:
        where = ", ".join(list(dict.fromkeys(t["where"] for t in faint))[:MAX_PLACES])
        verb = "is" if len(faint) == 1 else "are"
        its = "its" if len(faint) == 1 else "their"
        parts.append(f"{_count(len(faint), noun)} {verb} faint in VIS ({where}); enhance {its} contrast")
    seen = len(targets) - len(invisible) - len(faint)
    if seen:
        parts.append(f"{_count(seen, noun)} {'is' if seen == 1 else 'are'} visible in both images; "
                     f"keep {'its' if seen == 1 else 'their'} edges")
    if not targets:
        parts.append(f"no {noun} stands out in IR; keep the visible texture for {task}")
    if not parts:
        parts.append("well exposed and sharp; keep the visible texture and add IR targets")
    return "; ".join(parts)


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
