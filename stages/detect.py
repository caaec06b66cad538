"""The ``detect`` stage: an ultralytics YOLO detector on the images of each record.

For each record the stage reads one image (``fused`` by default, or ``ir`` /
``vis``), runs the detector and writes, atomically:

* ``OUT/<id>.txt``: YOLO txt with a score column, ``class cx cy w h score``
  (normalised to the image size), the format ``fuse detect --detections``
  and ultralytics ``save_txt --save_conf`` use;
* ``OUT/<id>.json``: ``{"id", "image", "source", "model", "width", "height",
  "boxes": [{"class", "class_id", "score", "xyxy"}]}`` with pixel corners;
* with ``draw``: ``OUT/<id>.jpg``, the image with its boxes (ultralytics'
  ``Annotator`` with OpenCV's built-in Hershey font, so nothing is downloaded).

The record gains ``detections`` (the json path) and ``counts`` (boxes per class
name among those scoring at least ``show_conf``).

The model loads once: a local ``.pt`` path, a model YAML (``yolov8n.yaml``: random
initialisation, for tests and training from scratch), or a name such as
``yolov8n.pt`` that ultralytics downloads where there is internet.

:class:`TardDetectStage` is the second backend: the ``tard`` network's own detection
head (:mod:`stages.nets.tard_detection`), which reads each record's ``ir`` and ``vis``
(registering the IR inside the network) and gives boxes on the VIS grid; it writes
the same files.
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
from pathlib import Path

import numpy as np

from stages.core.images import ImageError, atomic_file, luminance, read_image, to_uint8
from stages.core.provenance import weights_digest
from stages.core.stage import Stage, StageError, record_path
from stages.nets.yolo import YOLO_FORMAT, ModelError, load_yolo

IMAGE_KEYS = ("fused", "ir", "vis")
DEFAULT_SHOW_CONF = 0.25


def resolve_classes(text: str | None, names: dict[int, str]) -> list[int] | None:
    """``"person,car"`` or ``"0,2"`` → class indices of the model; ``ValueError`` naming the model's classes."""
    if not text:
        return None
    by_name = {str(v).lower(): int(k) for k, v in names.items()}
    indices = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.isdigit() and int(part) in names:
            indices.append(int(part))
        elif part.lower() in by_name:
            indices.append(by_name[part.lower()])
        else:
            shown = ", ".join(str(names[k]) for k in sorted(names)[:20]) + (" …" if len(names) > 20 else "")
            raise ValueError(f"--classes: {part!r} is not a class of the model ({shown})")
    return indices


def to_bgr(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` gray or ``(H, W, 3)`` RGB float [0, 1] → ``(H, W, 3)`` BGR uint8, what ultralytics and OpenCV take."""
    data = to_uint8(img)
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2)
    return np.ascontiguousarray(data[..., ::-1])


def draw_boxes(bgr: np.ndarray, boxes: list[dict]) -> np.ndarray:
    """A copy of ``bgr`` with each box and its ``class score`` label in its class colour: ultralytics' ``Annotator``
    in its OpenCV mode (Hershey font, so nothing is downloaded)."""
    from ultralytics.utils.plotting import Annotator, colors

    annotator = Annotator(bgr.copy())
    for box in boxes:
        annotator.box_label(box["xyxy"], f"{box['class']} {box['score']:.2f}", color=colors(box["class_id"], bgr=True))
    return annotator.result()


def count_boxes(boxes: list[dict], min_score: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for box in sorted(boxes, key=lambda b: b["class_id"]):
        if box["score"] >= min_score:
            counts[box["class"]] = counts.get(box["class"], 0) + 1
    return counts


def is_tard_model(model: str | Path) -> bool:
    """Whether ``--model`` names the ``tard`` detection head (``tard`` or a ``.safetensors`` not from :func:`save_yolo`)."""
    if str(model) == "tard":
        return True
    if not str(model).endswith(".safetensors"):
        return False
    from stages.nets.checkpoint import WeightsError, read_header

    try:
        return read_header(model, "detector")[1].get("format") != YOLO_FORMAT
    except (OSError, WeightsError):  # the tard loader says what is wrong with the file
        return True


def _pair_error(record: dict, exc: Exception) -> Exception:
    return exc if str(exc).startswith("pair") else StageError(f"pair {record.get('id', '?')}: {exc}")


class DetectStage(Stage):
    """Run a YOLO detector on one image per record; adds ``detections`` and ``counts``.

    Subclasses change the detector by overriding :meth:`detect` (and building
    ``names``, ``classes`` etc. with :meth:`_setup`).
    """

    name = "detect"

    def __init__(self, out: str | Path, model: str | Path = "yolov8n.pt", image: str = "fused", conf: float = 0.25,
                 iou: float = 0.7, classes: str | None = None, imgsz: int = 640, device: str = "cpu",
                 draw: bool = False, half: bool = False, max_det: int = 300, show_conf: float | None = None):
        if image not in IMAGE_KEYS:
            raise ValueError(f"--image {image!r}: use fused, ir or vis")
        self.yolo = load_yolo(model)
        self._setup(out, image, model, self.yolo.names, classes, draw, conf if show_conf is None else show_conf)
        self.predict_args = {"conf": conf, "iou": iou, "classes": self.classes, "imgsz": imgsz, "max_det": max_det,
                             "device": device, "verbose": False}
        if half and device != "cpu":
            self.predict_args["half"] = True  # only when asked: ultralytics 8.4 warns about the argument itself
        self.settings.update({k: v for k, v in self.predict_args.items() if k not in ("device", "verbose")})

    def _setup(self, out: str | Path, image: str, model: str | Path, names: dict, classes: str | None, draw: bool,
               show_conf: float) -> None:
        """What every backend sets: output folder, image key, model name, class names, drawing, lock."""
        self.out, self.image, self.draw, self.show_conf = Path(out), image, draw, show_conf
        self.model_name = str(model)
        self.names = {int(k): str(v) for k, v in names.items()}
        self.classes = resolve_classes(classes, self.names)
        self._lock = threading.Lock()  # one model, possibly several worker threads
        self.settings = {"method": str(model), "weights": weights_digest(model), "image": image,
                         "draw_threshold": show_conf if draw else None}
        self.input_keys = (image,)

    def outputs(self, record: dict) -> list[Path]:
        """``<id>.json`` (it carries the recipe), ``<id>.txt`` and, with ``draw``, ``<id>.jpg``."""
        return [self._path(record, suffix) for suffix in (".json", ".txt", ".jpg")[: 3 if self.draw else 2]]

    def _path(self, record: dict, suffix: str) -> Path:
        """``out/<id><suffix>`` (not ``with_suffix``: an id may contain dots)."""
        return self.out / f"{record['id']}{suffix}"

    def skip_update(self, record: dict) -> dict:
        path = self._path(record, ".json")
        try:
            boxes = json.loads(path.read_text())["boxes"]
        except (OSError, ValueError, KeyError):
            return {"detections": str(path)}
        return {"detections": str(path), "counts": count_boxes(boxes, self.show_conf)}

    def process(self, records: list[dict]) -> list[dict | Exception]:
        results: list[dict | Exception] = []
        for record, found in zip(records, self.detect(records)):
            try:
                results.append(found if isinstance(found, Exception) else self._write(record, *found))
            except OSError as exc:
                results.append(StageError(f"pair {record.get('id', '?')}: cannot write outputs ({exc})"))
        return results

    def detect(self, records: list[dict]) -> list[tuple | Exception]:
        """Per record ``(image path, BGR image (H, W, 3), xyxy (N, 4) pixels, scores (N,), class ids (N,))`` or its error."""
        found: list[tuple | Exception] = [None] * len(records)  # type: ignore[list-item]
        images, todo = [], []
        for index, record in enumerate(records):
            try:
                path = record_path(record, self.image)
                images.append((path, to_bgr(read_image(path))))
                todo.append(index)
            except (StageError, ImageError, OSError, ValueError) as exc:
                found[index] = _pair_error(record, exc)
        if todo:
            try:
                with self._lock, contextlib.redirect_stdout(sys.stderr):
                    predictions = self.yolo.predict([bgr for _, bgr in images], **self.predict_args)
            except Exception as exc:  # noqa: BLE001 — a batch that fails in the model fails each of its records
                for index in todo:
                    found[index] = StageError(f"pair {records[index].get('id', '?')}: detector failed ({type(exc).__name__}: {exc})")
                return found
            for index, (path, bgr), prediction in zip(todo, images, predictions):
                boxes = prediction.boxes
                found[index] = (path, bgr, boxes.xyxy.cpu().numpy().astype(np.float64),
                                boxes.conf.cpu().numpy().astype(np.float64), boxes.cls.cpu().numpy().astype(int))
        return found

    def _write(self, record: dict, path: Path, bgr: np.ndarray, xyxy: np.ndarray, scores: np.ndarray,
               labels: np.ndarray) -> dict:
        height, width = bgr.shape[:2]
        boxes = [{"class": self.names.get(int(c), str(c)), "class_id": int(c), "score": round(float(s), 5),
                  "xyxy": [round(float(v), 2) for v in b]} for b, s, c in zip(xyxy, scores, labels)]
        lines = []
        for b, s, c in zip(xyxy, scores, labels):
            cx, cy = (b[0] + b[2]) / 2 / width, (b[1] + b[3]) / 2 / height
            w, h = (b[2] - b[0]) / width, (b[3] - b[1]) / height
            lines.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {s:.5f}\n")
        json_path, txt_path, jpg_path = (self._path(record, suffix) for suffix in (".json", ".txt", ".jpg"))
        with atomic_file(txt_path) as tmp:
            tmp.write_text("".join(lines))
        if self.draw:
            import cv2

            shown = [b for b in boxes if b["score"] >= self.show_conf]
            with atomic_file(jpg_path) as tmp:
                if not cv2.imwrite(str(tmp), draw_boxes(bgr, shown), [cv2.IMWRITE_JPEG_QUALITY, 92]):
                    raise OSError(f"{jpg_path}: OpenCV could not write the annotated image")
        document = {"id": record["id"], "image": str(path), "source": self.image, "model": self.model_name,
                    "width": width, "height": height, "boxes": boxes, "recipe": self.recipe(record)}
        with atomic_file(json_path) as tmp:  # last: it carries the recipe
            tmp.write_text(json.dumps(document, indent=1) + "\n")
        return {"detections": str(json_path), "counts": count_boxes(boxes, self.show_conf)}


class TardDetectStage(DetectStage):
    """The ``tard`` network's detection head on each record's ``ir`` + ``vis`` pair; boxes on the VIS grid.

    ``model``: ``tard`` (the packaged head) or a ``tard_detector.safetensors`` with the
    joint network's weights beside it (:func:`stages.nets.tard_detection.load_tard_detection`).
    The pair is resized to the network's working size; boxes come back in the pair's
    pixels. The json's ``source`` is ``vis`` and ``--draw`` draws on the VIS image.
    """

    def __init__(self, out: str | Path, model: str | Path = "tard", conf: float = 0.25, iou: float = 0.7,
                 classes: str | None = None, device: str = "cpu", draw: bool = False, max_det: int = 300,
                 show_conf: float | None = None):
        from stages.nets.tard_detection import load_tard_detection

        try:
            self.net = load_tard_detection(model, device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"--model {model}: {exc}") from None
        self._setup(out, "vis", model, dict(enumerate(self.net.detector.names)), classes, draw,
                    conf if show_conf is None else show_conf)
        self.device = device
        self.nms = {"conf": conf, "iou": iou, "max_det": max_det, "classes": self.classes}
        self.settings.update(self.nms)
        self.input_keys = ("ir", "vis")

    def detect(self, records: list[dict]) -> list[tuple | Exception]:
        import torch

        found: list[tuple | Exception] = []
        for record in records:
            try:
                ir = read_image(record_path(record, "ir"))
                vis_path = record_path(record, "vis")
                vis = read_image(vis_path)
                if ir.shape[:2] != vis.shape[:2]:
                    raise StageError(f"pair {record.get('id', '?')}: IR is {ir.shape[1]}×{ir.shape[0]} but VIS is "
                                     f"{vis.shape[1]}×{vis.shape[0]}")
                pair = [torch.from_numpy(luminance(x))[None, None].to(self.device) for x in (ir, vis)]
                with self._lock:
                    boxes = self.net.detect(*pair, **self.nms)[0].cpu().double().numpy()
            except (StageError, ImageError, OSError, ValueError, RuntimeError) as exc:
                found.append(_pair_error(record, exc))
                continue
            found.append((vis_path, to_bgr(vis), boxes[:, :4], boxes[:, 4], boxes[:, 5].astype(int)))
        return found
