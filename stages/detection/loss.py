"""A YOLO detector's training loss on fused images, for detection-driven fusion training.

The papers that train fusion "for detection" add a frozen detector's loss on
the fused image to the fusion loss, so the gradient reaches the fusion network
only. :func:`detection_loss_fn` builds that loss from an ultralytics YOLO
detector (``v8DetectionLoss``: box IoU + classification BCE + DFL, with
ultralytics' gains 7.5 / 0.5 / 1.5) and labels in any format
:mod:`stages.detection.evaluation` reads::

    det_loss = detection_loss_fn("runs/detect/msrs/weights/best.pt", "msrs/labels", "cpu")
    loss = fusion_loss + det_weight * det_loss(fused, ids, affines)
    loss.backward()                     # detector parameters get no gradient

Training crops, flips and rotates patches, so boxes must follow them:
``affines[b]`` is a 2×3 matrix taking *normalised* coordinates of the full
labelled image ``(x/W, y/H)`` to *pixel* coordinates of sample ``b`` of the
fused batch; :func:`patch_affine` builds it for ``stages.training.loop.random_crop_batch``'s
crop / flip / quarter-turn. Without ``affines`` each sample is taken to be the
whole image (resized or not: boxes are normalised).

The same loss trains a detector that looks at feature maps instead of images (the
``tard`` detection head, :mod:`stages.nets.tard_detection`): :class:`DetectionLoss`
takes any input the model takes, and freezes nothing itself.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages.detection.evaluation import Boxes, GroundTruth, load_ground_truth

MIN_VISIBLE = 0.25  # a box cut by the crop is kept when at least this fraction of it stays in the patch
MIN_SIDE = 2.0  # pixels


def patch_affine(full_size: tuple[int, int], x: int, y: int, crop: int, hflip: bool = False, vflip: bool = False,
                 rot90: int = 0) -> np.ndarray:
    """2×3 matrix: normalised full-image ``(u, v)`` → pixel ``(x', y')`` in a ``crop × crop`` patch.

    Mirrors ``random_crop_batch``: crop at column ``x``, row ``y``; then
    ``hflip`` (``patch[:, :, ::-1]``), ``vflip`` (``patch[:, ::-1, :]``), then
    ``np.rot90(patch, k=rot90, axes=(1, 2))``.

    >>> (patch_affine((640, 480), 100, 50, 64) @ [0.25, 0.25, 1]).round(6).tolist()
    [60.0, 70.0]
    """
    w, h = full_size
    m = np.array([[w, 0.0, -x], [0.0, h, -y], [0, 0, 1]])  # normalised → patch pixels
    if hflip:
        m = np.array([[-1.0, 0, crop], [0, 1, 0], [0, 0, 1]]) @ m
    if vflip:
        m = np.array([[1.0, 0, 0], [0, -1, crop], [0, 0, 1]]) @ m
    quarter = np.array([[0.0, 1, 0], [-1, 0, crop], [0, 0, 1]])  # np.rot90 k=1 on (rows, cols): x' = y, y' = crop - x
    for _ in range(rot90 % 4):
        m = quarter @ m
    return m[:2]


class DetectionLoss:
    """Callable ``(x (B, C, H, W), ids, affines=None) → scalar``: ultralytics' training loss of ``model`` on ``x``.

    ``x`` is what the model takes (``C`` its input channels): fused images in [0, 1]
    (gray ``C = 1`` is repeated when the model takes RGB) or feature maps. The value
    is the ultralytics training loss per image (box·7.5 + cls·0.5 + dfl·1.5, averaged
    over the batch). Samples whose id has no label count as images without objects
    (the classification term still acts). Gradients reach whatever of ``model`` and
    ``x`` requires them; :func:`detection_loss_fn` freezes the detector.
    """

    def __init__(self, model: torch.nn.Module, labels: dict[str, Boxes], class_index: dict[str, int], device: str,
                 dropped: dict[str, int], scale: float = 1.0, source: dict | None = None):
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.utils import IterableSimpleNamespace

        self.model, self.labels, self.class_index, self.device = model, labels, class_index, torch.device(device)
        self.in_channels = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
        args = getattr(model, "args", None) or {}  # a dict (YOLO files), a namespace, or none (a bare DetectionModel)
        model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **(args if isinstance(args, dict) else vars(args))})
        self.scale = scale  # resize factor applied to the fused batch before the detector
        self.dropped = dropped  # label class name → boxes the detector has no class for
        # where the detector and labels came from (recorded in model cards by stages.training.loop)
        self.source = {"model": None, "labels": None, "scale": scale, **(source or {})}
        self.stride = int(max(model.stride.max().item(), 32))
        head = model.model[-1]
        if getattr(head, "one2one_cv2", None) is not None or getattr(head, "end2end", False):
            self.criterion = model.init_criterion()
        else:
            from ultralytics.utils.loss import v8DetectionLoss

            self.criterion = v8DetectionLoss(model)

    def targets(self, ids: Sequence[str], sizes: tuple[int, int], fraction: tuple[float, float],
                affines: Sequence[np.ndarray] | None) -> dict[str, torch.Tensor]:
        """The ultralytics batch dict (``batch_idx``, ``cls``, normalised ``bboxes`` xywh) for the padded batch.

        ``sizes`` is the ``(H, W)`` of the batch as given; ``fraction`` the share
        ``(H/H', W/W')`` of the padded input the detector sees that it covers.
        """
        (h, w), (fh, fw) = sizes, fraction
        hp, wp = h / fh, w / fw
        batch_idx, classes, boxes = [], [], []
        for b, pair in enumerate(ids):
            gt = self.labels.get(str(pair))
            if gt is None or not len(gt):
                continue
            keep = [i for i, n in enumerate(gt.names) if n in self.class_index and not gt.ignore[i]]
            if not keep:
                continue
            xyxy = gt.xyxy[keep]
            if affines is None:
                pix = xyxy * [w, h, w, h]
            else:
                m = np.asarray(affines[b], dtype=np.float64).reshape(2, 3)
                corners = np.stack([xyxy[:, [0, 1]], xyxy[:, [2, 1]], xyxy[:, [0, 3]], xyxy[:, [2, 3]]], axis=1)  # (N, 4, 2)
                mapped = corners @ m[:, :2].T + m[:, 2]
                pix = np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)
            area = (pix[:, 2] - pix[:, 0]) * (pix[:, 3] - pix[:, 1])
            clipped = np.clip(pix, 0, [w, h, w, h])
            cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            visible = (cw >= MIN_SIDE) & (ch >= MIN_SIDE) & (cw * ch >= MIN_VISIBLE * np.maximum(area, 1e-9))
            for i in np.flatnonzero(visible):
                x1, y1, x2, y2 = clipped[i]
                batch_idx.append(b)
                classes.append(self.class_index[gt.names[keep[i]]])
                boxes.append([(x1 + x2) / 2 / wp, (y1 + y2) / 2 / hp, (x2 - x1) / wp, (y2 - y1) / hp])
        return {"batch_idx": torch.tensor(batch_idx, dtype=torch.float32, device=self.device),
                "cls": torch.tensor(classes, dtype=torch.float32, device=self.device).view(-1, 1),
                "bboxes": torch.tensor(boxes, dtype=torch.float32, device=self.device).view(-1, 4)}

    def __call__(self, x: torch.Tensor, ids: Sequence[str], affines: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        gray_for_rgb = self.in_channels == 3 and x.ndim == 4 and x.shape[1] == 1
        if x.ndim != 4 or (x.shape[1] != self.in_channels and not gray_for_rgb):
            shown = "1|3" if self.in_channels == 3 else str(self.in_channels)
            raise ValueError(f"the detector takes (B, {shown}, H, W), got {tuple(x.shape)}")
        if len(ids) != x.shape[0] or (affines is not None and len(affines) != x.shape[0]):
            raise ValueError(f"{x.shape[0]} images but {len(ids)} ids" + ("" if affines is None else f" and {len(affines)} affines"))
        x = x.to(self.device, torch.float32)
        if gray_for_rgb:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if self.scale != 1.0:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False, antialias=self.scale < 1)
        hs, ws = x.shape[-2:]
        hp, wp = math.ceil(hs / self.stride) * self.stride, math.ceil(ws / self.stride) * self.stride
        if (hp, wp) != (hs, ws):
            x = F.pad(x, (0, wp - ws, 0, hp - hs), value=114 / 255)  # ultralytics' letterbox grey
        batch = self.targets(ids, (h, w), (hs / hp, ws / wp), affines)
        loss, _ = self.criterion(self.model(x), batch)
        return loss.sum() / x.shape[0]


def detection_loss_fn(det_model: str | Path | torch.nn.Module, labels_dir: str | Path, device: str = "cpu", *,
                      classes_file: str | Path | None = None, class_map: dict[str, str] | None = None,
                      scale: float = 1.0) -> DetectionLoss:
    """A frozen YOLO detector's training loss on fused batches: ``loss(fused, ids, affines=None) -> scalar``.

    Args:
        det_model: ultralytics weights (``.pt``), a model YAML (random init, for
            tests), or an ultralytics ``DetectionModel`` / ``YOLO``.
        labels_dir: YOLO txt (+ ``classes.txt`` beside it or ``classes_file``),
            VOC xml, or a COCO json; ids are file stems.
        device: where the detector runs (the fused batch is moved there).
        scale: resize factor for the fused batch before the detector, so objects
            appear at the size the detector was trained at (a detector trained
            at ``imgsz`` 320 on 640-wide images: 0.5). Boxes follow.

    Label classes map to the detector's classes by name (after ``class_map``),
    else by the classes-file index when the detector's names are bare numbers
    (a YAML model). Boxes of other classes are dropped (counted in ``.dropped``).

    >>> det_loss = detection_loss_fn("yolov8n.yaml", "msrs/labels", "cpu")   # doctest: +SKIP
    >>> det_loss(fused, ["00537D", "00004N"]).backward()                    # doctest: +SKIP
    """
    from ultralytics.nn.tasks import BaseModel

    if isinstance(det_model, (str, Path)):
        from stages.nets.yolo import load_yolo

        model = load_yolo(det_model).model
    else:
        model = det_model if isinstance(det_model, BaseModel) else det_model.model  # a DetectionModel or a YOLO
    model = model.to(device).float().eval()
    model.requires_grad_(False)
    gt = load_ground_truth(labels_dir, classes_file=classes_file, class_map=class_map)
    labels, class_index, dropped = match_classes(gt, model.names)
    source = {"model": str(det_model) if isinstance(det_model, (str, Path)) else type(model).__name__,
              "labels": str(labels_dir), "classes_file": None if classes_file is None else str(classes_file),
              "class_map": dict(class_map or {}), "scale": scale, "classes": dict(sorted(class_index.items()))}
    return DetectionLoss(model, labels, class_index, device, dropped, scale, source)


def match_classes(gt: GroundTruth, names: dict[int, str]) -> tuple[dict[str, Boxes], dict[str, int], dict[str, int]]:
    """Label classes → a detector's class indices: ``(normalised boxes by id, class_index, dropped)``.

    A label class maps by name (case-insensitive) to ``names`` (the detector's
    ``{index: name}``), else by its classes-file position when the detector's names
    are bare numbers (a YAML model). ``dropped`` counts the boxes of other classes.
    """
    names = {int(k): str(v) for k, v in names.items()}
    by_name = {v.lower(): k for k, v in names.items()}
    class_index, dropped = {}, {}
    bare = all(v.isdigit() for v in names.values())
    for position, name in enumerate(gt.classes or []):
        if name.lower() in by_name:
            class_index[name] = by_name[name.lower()]
        elif bare and position < len(names):
            class_index[name] = position
    labels = {}
    for pair, boxes in gt.boxes.items():
        if not boxes.normalised:
            boxes = boxes.to_normalised()
        for name in boxes.names:
            if name not in class_index:
                dropped[name] = dropped.get(name, 0) + 1
        labels[pair] = boxes
    return labels, class_index, dropped
