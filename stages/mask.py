"""The ``mask`` stage: a binary target mask per pair, ``OUT/<id>.png`` (0/255), record key ``mask``.

Backends (``MaskStage(backend=...)``):

``salient`` — RefineFuse's rule (loss section of ``refinefuse-multiscale``): the
    salient targets of the infrared image plus the positions where the infrared
    image has high local contrast, with no learned model
    (:func:`stages.methods.guidance.salient_mask`). RefineFuse takes its salient objects from
    segmentation labels; here they are estimated as *warm targets*
    (:func:`~stages.methods.guidance.warm_targets`). The thresholds, all in
    :data:`~stages.methods.guidance.SALIENT_DEFAULTS`:

    * the IR luminance is smoothed (Gaussian σ = 1.5 px) and the local
      background removed with a Gaussian of σ = ``background`` × the shorter
      side (0.06); the residual is the local warmth;
    * a pixel is warm when its residual exceeds ``k_local`` (3.0) robust
      standard deviations (1.4826 × MAD of the residual) **and** its smoothed
      intensity exceeds the image's ``k_global`` (1.0) standard deviations above
      the mean, so neither a cold scene's noise nor a hot uniform area qualify;
    * warm pixels are closed (3×3) and grouped into 8-connected components;
      components smaller than ``min_area`` (0.0001 of the image, at least 6 px)
      or larger than ``max_area`` (0.08) are dropped (specks; sky, roads and
      walls warmed by the sun).
    * High local contrast (:func:`~stages.methods.guidance.contrast_mask`): RefineFuse's local contrast,
      the squared difference between a pixel and the mean of its 9×9
      neighbourhood, averaged over the same window
      (:func:`stages.nets.losses.local_contrast`). A pixel is kept when the IR
      contrast is at least ``contrast_ratio`` (4) times the visible contrast
      and above the ``contrast_quantile`` (0.98) of the IR contrast image, and
      only in components touching a warm target's neighbourhood (dilated by
      ``contrast_reach`` = 2 % of the shorter side) — the edges of a warm body
      that the VIS camera does not see, not every texture of the scene.
      ``contrast=False`` gives the warm targets alone.

    Thresholds were chosen on LLVIP's labelled pairs (training data), not on
    the TNO masks or MSRS labels that ``benchmarks/bench_masks.py`` measures.

``text`` — a text-driven mask for a target word (``keyword``). TeSG derives it
    from a diffusion model's noise difference under the caption with and
    without the keyword (Eq. 2), then takes ``M = M_vis ∪ M_ir`` (Eq. 3).
    A diffusion model cannot run here, so :class:`ClipDenseMasker` gives the
    same kind of map by CLIP dense similarity: the patch tokens of an open_clip
    ViT (projected into the joint space) against the keyword's text embedding
    (``"a photo of a {keyword}"``) minus the caption-without-keyword's, upsampled
    bilinearly to the image and thresholded at ``mean + 1.5 σ`` of the map. It is
    computed on the VIS image and on the IR image and the union taken. Any
    object with ``masks(image, keyword, caption, caption_without) -> bool (H, W)``
    can stand in (the diffusion backend's interface): pass it as ``text_masker``.

``boxes`` — filled rectangles of the record's detections (``detections``: a
    list of ``{"xyxy": [x0, y0, x1, y1], "class": name, "score": s}`` or a path
    to a JSON file holding that list or ``{"detections": [...]}``), optionally
    limited to ``classes`` and ``min_score``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from stages.core.images import ImageError, luminance, read_image, write_image
from stages.core.stage import Stage, StageError, record_path
from stages.methods.guidance import SALIENT_DEFAULTS, salient_mask

BACKENDS = ("salient", "text", "boxes")


# ---------------------------------------------------------------- boxes


def boxes_mask(detections: list[dict], shape: tuple[int, int], classes: set[str] | None = None,
               min_score: float = 0.0) -> np.ndarray:
    """Filled rectangles of ``detections`` (``{"xyxy": [...], "class": ..., "score": ...}``) as bool ``(H, W)``."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for det in detections:
        if classes and str(det.get("class", "")) not in classes:
            continue
        if float(det.get("score", 1.0)) < min_score:
            continue
        x0, y0, x1, y1 = (float(v) for v in det["xyxy"])
        x0, x1 = int(np.floor(max(0, min(x0, x1)))), int(np.ceil(min(w, max(x0, x1))))
        y0, y1 = int(np.floor(max(0, min(y0, y1)))), int(np.ceil(min(h, max(y0, y1))))
        mask[y0:y1, x0:x1] = True
    return mask


def read_detections(value, pair: str) -> list[dict]:
    """The record's ``detections``: a list, or a path to a JSON file with a list or ``{"detections": [...]}``."""
    if isinstance(value, str):
        try:
            value = json.loads(Path(value).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StageError(f"pair {pair}: cannot read detections {value}: {exc}") from None
    if isinstance(value, dict):
        value = value.get("detections")
    if not isinstance(value, list) or not all(isinstance(d, dict) and "xyxy" in d for d in value):
        raise StageError(f"pair {pair}: 'detections' must be a list of {{\"xyxy\": [...], ...}} (or a JSON file of one)")
    return value


# ---------------------------------------------------------------- text (CLIP dense similarity)


class ClipDenseMasker:
    """Keyword masks by CLIP dense similarity (open_clip ViT), a stand-in for TeSG's diffusion noise difference.

    For an image it computes the projected patch tokens of the vision tower,
    their cosine similarity to the text embedding of ``"a photo of a {keyword}"``
    minus the similarity to the caption without the keyword (or to
    ``"a photo"`` when no caption is given), upsamples the map to the image,
    normalises it and thresholds it at ``mean + threshold_sigma × std``.

    Args:
        model: open_clip architecture (a ViT), e.g. ``ViT-B-32``.
        pretrained: open_clip tag or local checkpoint; ``None`` builds a randomly
            initialised model (only useful for tests).
        model_obj: an already built open_clip model (tests).
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu", *,
                 threshold_sigma: float = 1.5, model_obj=None):
        import open_clip
        import torch

        self.torch, self.device, self.threshold_sigma = torch, torch.device(device), threshold_sigma
        if model_obj is None:
            model_obj = open_clip.create_model(model, pretrained=pretrained, device=self.device)
        self.model = model_obj.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(model)
        visual = self.model.visual
        self.size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def patch_features(self, image: np.ndarray):
        """``(H, W)`` or ``(H, W, 3)`` in [0, 1] → normalised patch embeddings ``(gh, gw, D)``."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        x = x[None, None].expand(1, 3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).to(self.device)
        visual = self.model.visual
        previous = getattr(visual, "output_tokens", False)
        visual.output_tokens = True
        try:
            with torch.no_grad():
                _, tokens = visual(x)
        finally:
            visual.output_tokens = previous
        if tokens.shape[-1] != self.model.text_projection.shape[-1] and getattr(visual, "proj", None) is not None:
            with torch.no_grad():
                tokens = tokens @ visual.proj
        grid = int(round(tokens.shape[1] ** 0.5))
        tokens = torch.nn.functional.normalize(tokens.float(), dim=-1)
        return tokens[0].reshape(grid, grid, -1)

    def text_features(self, texts: list[str]):
        torch = self.torch
        with torch.no_grad():
            feats = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
        return torch.nn.functional.normalize(feats, dim=-1)

    def similarity(self, image: np.ndarray, keyword: str, caption_without: str | None = None) -> np.ndarray:
        """The keyword relevance map ``(H, W)`` float32 (before thresholding)."""
        torch = self.torch
        with torch.no_grad():
            patches = self.patch_features(image)
            text = self.text_features([f"a photo of a {keyword}", caption_without or "a photo"])
            sim = patches @ text.T  # (gh, gw, 2)
            diff = (sim[..., 0] - sim[..., 1])[None, None]
            h, w = image.shape[:2]
            up = torch.nn.functional.interpolate(diff, size=(h, w), mode="bilinear", align_corners=False)
        return up[0, 0].cpu().numpy()

    def masks(self, image: np.ndarray, keyword: str, caption: str | None = None,
              caption_without: str | None = None) -> np.ndarray:
        sim = self.similarity(image, keyword, caption_without)
        return sim > sim.mean() + self.threshold_sigma * sim.std()


def text_mask(ir: np.ndarray, vis: np.ndarray, keyword: str, masker, caption: str | None = None,
              caption_without: str | None = None) -> np.ndarray:
    """TeSG Eq. 3: ``M = M_vis ∪ M_ir``, each from ``masker.masks(image, keyword, caption, caption_without)``."""
    return masker.masks(vis, keyword, caption, caption_without) | masker.masks(ir, keyword, caption, caption_without)


# ---------------------------------------------------------------- the stage


class MaskStage(Stage):
    """Writes ``OUT/<id>.png`` (0 background, 255 target) and adds ``mask`` to the record.

    Args:
        out_dir: output folder.
        backend: ``salient``, ``text`` or ``boxes``.
        keyword: the target word for ``text`` (e.g. ``person``).
        contrast: ``salient`` with the high-contrast part (RefineFuse's full rule) or warm targets only.
        classes, min_score: filters for ``boxes``.
        text_masker: the ``text`` backend's masker (default :class:`ClipDenseMasker` built from
            ``clip_model``/``pretrained`` on ``device``).
        params: overrides of :data:`SALIENT_DEFAULTS`.
    """

    name = "mask"
    output_key, output_suffix = "mask", ".png"

    def __init__(self, out_dir: Path, backend: str = "salient", *, keyword: str | None = None, contrast: bool = True,
                 classes: set[str] | None = None, min_score: float = 0.0, text_masker=None,
                 clip_model: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu", **params):
        if backend not in BACKENDS:
            raise ValueError(f"mask backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "text" and not keyword:
            raise ValueError("the text mask backend needs a keyword (--keyword person)")
        unknown = set(params) - set(SALIENT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown salient-mask parameters: {', '.join(sorted(unknown))}")
        self.out_dir, self.backend, self.keyword = Path(out_dir), backend, keyword
        self.contrast, self.classes, self.min_score, self.params = contrast, classes, min_score, params
        self.masker = text_masker
        if backend == "text" and self.masker is None:
            self.masker = ClipDenseMasker(clip_model, pretrained, device)
        self.settings = {"method": backend, "keyword": keyword, "contrast": contrast, "min_score": min_score,
                         "classes": sorted(classes) if classes else None, **params}
        if backend == "text":
            self.settings.update(clip_model=clip_model, pretrained=str(pretrained))
        self.input_keys = {"boxes": ("ir", "vis", "detections"),
                           "text": ("ir", "vis", "caption", "caption_without_keyword")}.get(backend, ("ir", "vis"))

    def _read(self, record: dict, key: str) -> np.ndarray:
        path = record_path(record, key)
        try:
            return read_image(path)
        except ImageError as exc:
            raise StageError(f"pair {record.get('id', '?')}: {exc}") from None

    def compute(self, record: dict) -> np.ndarray:
        """The bool ``(H, W)`` mask of one record (no file written)."""
        pair = record.get("id", "?")
        if self.backend == "boxes":
            if "detections" not in record:
                raise StageError(f"pair {pair}: record has no 'detections' (run fuse detect first)")
            shape = self._read(record, "vis" if "vis" in record else "ir").shape[:2]
            return boxes_mask(read_detections(record["detections"], pair), shape, self.classes, self.min_score)
        ir, vis = luminance(self._read(record, "ir")), self._read(record, "vis")
        if ir.shape != vis.shape[:2]:
            raise StageError(f"pair {pair}: sizes differ: IR {ir.shape[1]}x{ir.shape[0]}, "
                             f"VIS {vis.shape[1]}x{vis.shape[0]} (register or resize first)")
        if self.backend == "salient":
            return salient_mask(ir, luminance(vis), contrast=self.contrast, **self.params)
        caption = record.get("caption") if isinstance(record.get("caption"), str) else None
        without = record.get("caption_without_keyword") if isinstance(record.get("caption_without_keyword"), str) else None
        if caption and not without:
            from stages.caption import remove_keyword

            without = remove_keyword(caption, self.keyword)
        return text_mask(ir, vis, self.keyword, self.masker, caption, without)

    def process_one(self, record: dict) -> dict:
        mask = self.compute(record)
        path = self.output_path(record)
        try:
            write_image(path, mask.astype(np.float32), recipe=self.recipe(record))
        except (ImageError, OSError) as exc:
            raise StageError(f"pair {record.get('id', '?')}: cannot write {path}: {exc}") from None
        return {"mask": str(path)}
