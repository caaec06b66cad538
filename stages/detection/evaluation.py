"""Detection ground truth, detections, and the COCO-style evaluator behind ``fuse detect --labels``.

Readers turn every common annotation format into :class:`Boxes` (one per image,
keyed by the image id, i.e. the file stem):

* YOLO txt (``class cx cy w h`` normalised, any whitespace between fields, an
  optional sixth ``score`` column for detections) with a classes file
  (``classes.txt`` with ``name`` or ``index name`` per line, or a ``data.yaml``);
* Pascal VOC xml (absolute pixel corners; ``difficult`` objects are ignored:
  a detection on them is neither a true nor a false positive);
* COCO json: ground truth (``images``/``annotations``/``categories``, ``iscrowd``
  honoured) and results lists (``image_id, category_id, bbox, score``) from any
  detector;
* the ``<id>.json`` files ``fuse detect`` writes.

:func:`evaluate` computes, per class and over all classes, AP50, AP75 and
AP50:95 with pycocotools' ``COCOeval`` for bounding boxes (area range "all",
100 detections per image and class, IoU thresholds 0.50:0.05:0.95, 101-point
interpolated precision), and the precision and recall at the score threshold
that maximises F1 at IoU 0.5, as the YOLOv5/v8 validators print them, from
``COCOeval``'s own matches.

Boxes may be normalised (YOLO) or in pixels; IoU does not change when both axes
are scaled, so normalised ground truth and normalised detections are compared
without knowing the image size. Mixing normalised and pixel boxes needs the
image size, taken from the VOC ``<size>``, the COCO ``images`` table, or the
image file itself (``sizes=``).

>>> gt = {"a": Boxes.from_rows(["person"], [[10, 10, 50, 90]])}
>>> dt = {"a": Boxes.from_rows(["person"], [[12, 10, 50, 88]], scores=[0.9])}
>>> round(evaluate(gt, dt).overall["AP50"], 3)
1.0
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_DETS = 100
LABEL_SUFFIXES = (".txt", ".xml")
COLUMNS = ["source", "class", "images", "instances", "detections", "P", "R", "AP50", "AP75", "AP50:95"]


class AnnotationError(ValueError):
    """A label or detection file that cannot be read; the message names the file."""


# --- boxes -------------------------------------------------------------------------------------


@dataclass
class Boxes:
    """The boxes of one image: class names, ``(N, 4)`` xyxy corners, and optional scores.

    ``normalised`` boxes are fractions of the image width/height (YOLO);
    otherwise pixels. ``ignore`` marks ground truth that neither helps nor hurts
    (VOC ``difficult``); ``crowd`` marks COCO ``iscrowd`` regions (IoU is then
    intersection over the detection's area, and many detections may match one).
    ``size`` is ``(width, height)`` when known.
    """

    names: list[str]
    xyxy: np.ndarray
    scores: np.ndarray | None = None
    normalised: bool = False
    ignore: np.ndarray | None = None
    crowd: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(self.xyxy)
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} class names for {n} boxes")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(n)
        self.ignore = np.zeros(n, bool) if self.ignore is None else np.asarray(self.ignore, bool).reshape(n)
        self.crowd = np.zeros(n, bool) if self.crowd is None else np.asarray(self.crowd, bool).reshape(n)

    @classmethod
    def from_rows(cls, names: Sequence[str], xyxy, scores=None, **kwargs) -> Boxes:
        return cls(list(names), np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), scores, **kwargs)

    @classmethod
    def empty(cls, normalised: bool = False, scores: bool = False, size=None) -> Boxes:
        return cls([], np.zeros((0, 4)), np.zeros(0) if scores else None, normalised=normalised, size=size)

    def __len__(self) -> int:
        return len(self.names)

    def renamed(self, class_map: Mapping[str, str]) -> Boxes:
        """The same boxes with class names passed through ``class_map`` (names not in it are kept)."""
        if not class_map:
            return self
        return Boxes([class_map.get(n, n) for n in self.names], self.xyxy, self.scores, self.normalised,
                     self.ignore, self.crowd, self.size)

    def to_pixels(self, size: tuple[int, int]) -> Boxes:
        """Pixel boxes for an image of ``size = (width, height)``."""
        if not self.normalised:
            return self
        w, h = size
        return Boxes(self.names, self.xyxy * [w, h, w, h], self.scores, False, self.ignore, self.crowd, tuple(size))

    def to_normalised(self, size: tuple[int, int] | None = None) -> Boxes:
        """Boxes as fractions of the image width/height (``size`` needed unless already normalised or known)."""
        if self.normalised:
            return self
        size = size or self.size
        if size is None:
            raise ValueError("the image size is needed to normalise pixel boxes")
        w, h = size
        return Boxes(self.names, self.xyxy / [w, h, w, h], self.scores, True, self.ignore, self.crowd, tuple(size))


def parse_class_map(items: Iterable[str] | None) -> dict[str, str]:
    """``["People=person", "Car=car,Bus=car"]`` → ``{"People": "person", "Car": "car", "Bus": "car"}``."""
    mapping = {}
    for item in items or []:
        for part in (p.strip() for p in item.split(",") if p.strip()):
            source, sep, target = part.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise ValueError(f"class map {part!r}: write FROM=TO, e.g. People=person")
            mapping[source.strip()] = target.strip()
    return mapping


def names_by_index(detections: Mapping[str, Boxes], classes: Sequence[str] | None) -> dict[str, Boxes]:
    """Detections whose class names are bare numbers (a detector built from a model YAML) renamed by index into
    ``classes``; others unchanged."""
    if not classes:
        return dict(detections)
    names = {n for b in detections.values() for n in b.names}
    if not names or not all(n.isdigit() for n in names):
        return dict(detections)
    mapping = {str(i): c for i, c in enumerate(classes)}
    return {k: b.renamed(mapping) for k, b in detections.items()}


# --- readers -----------------------------------------------------------------------------------


def read_class_names(path: str | Path) -> list[str]:
    """Class names by index from ``classes.txt`` (``name`` or ``index name`` per line) or a YOLO ``data.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such classes file")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        names = (yaml.safe_load(path.read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise AnnotationError(f"{path}: no 'names' list or mapping")
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines()):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) == 2 and fields[0].isdigit():
            names[int(fields[0])] = fields[1].strip()
        else:
            names[len(names)] = line.strip()
    return [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []


def find_classes_file(labels: Path) -> Path | None:
    """``classes.txt`` (or ``data.yaml``) in the labels folder or its parent, as MSRS and YOLO datasets keep it."""
    folder = labels if labels.is_dir() else labels.parent
    for candidate in (folder / "classes.txt", folder.parent / "classes.txt", folder / "data.yaml", folder.parent / "data.yaml"):
        if candidate.is_file():
            return candidate
    return None


def read_yolo_txt(path: str | Path, names: Sequence[str] | None = None, size=None) -> Boxes:
    """YOLO txt: ``class cx cy w h [score]`` per line, normalised; any run of spaces or tabs between fields."""
    path = Path(path)
    rows, classes, scores = [], [], []
    try:
        text = path.read_text()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (5, 6):
            raise AnnotationError(f"{path} line {number}: expected 'class cx cy w h [score]', got {line.strip()!r}")
        try:
            index = int(float(fields[0]))
            cx, cy, w, h = (float(v) for v in fields[1:5])
            score = float(fields[5]) if len(fields) == 6 else None
        except ValueError:
            raise AnnotationError(f"{path} line {number}: not numbers: {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in (cx, cy, w, h, 0.0 if score is None else score)):
            raise AnnotationError(f"{path} line {number}: NaN or infinite value: {line.strip()!r}")
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{path} line {number}: box width and height must be positive: {line.strip()!r}")
        if names is not None and not 0 <= index < len(names):
            raise AnnotationError(f"{path} line {number}: class {index} is not in the classes file ({len(names)} classes)")
        classes.append(names[index] if names is not None else str(index))
        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        scores.append(score)
    has_scores = [s is not None for s in scores]
    if any(has_scores) and not all(has_scores):
        raise AnnotationError(f"{path}: some lines have a score column and some do not")
    return Boxes(classes, np.asarray(rows).reshape(-1, 4), np.asarray(scores, float) if scores and all(has_scores) else None,
                 normalised=True, size=size)


def read_voc_xml(path: str | Path) -> Boxes:
    """Pascal VOC xml: ``<object><name>`` with ``<bndbox>`` pixel corners; ``difficult`` objects become ``ignore``."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"{path}: not a readable VOC xml ({exc})") from None
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h and float(w) > 0 and float(h) > 0:
        size = (int(float(w)), int(float(h)))
    names, rows, difficult = [], [], []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if box is None or not name:
            raise AnnotationError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            rows.append([float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError):
            raise AnnotationError(f"{path}: object {name!r} has a bndbox without numeric xmin/ymin/xmax/ymax") from None
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() in ("1", "true"))
    return Boxes(names, np.asarray(rows).reshape(-1, 4), ignore=np.asarray(difficult, bool), size=size)


@dataclass
class CocoIndex:
    """What a COCO ground-truth file says about images and categories, for reading results against it."""

    image_ids: dict[int, str] = field(default_factory=dict)  # COCO image id → our id (file stem)
    categories: dict[int, str] = field(default_factory=dict)  # category id → name


def read_coco_ground_truth(path: str | Path) -> tuple[dict[str, Boxes], CocoIndex]:
    """COCO instances json → ``{image id (file stem): Boxes}`` in pixels, and its id tables."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        index = CocoIndex({int(im["id"]): Path(str(im.get("file_name", im["id"]))).stem for im in data["images"]},
                          {int(c["id"]): str(c["name"]) for c in data["categories"]})
        sizes = {int(im["id"]): (int(im["width"]), int(im["height"])) for im in data["images"] if "width" in im and "height" in im}
        per_image: dict[int, list] = {i: [] for i in index.image_ids}
        for ann in data.get("annotations", []):
            per_image.setdefault(int(ann["image_id"]), []).append(ann)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a COCO ground-truth json ({type(exc).__name__}: {exc})") from None
    result = {}
    for image_id, anns in per_image.items():
        if image_id not in index.image_ids:
            raise AnnotationError(f"{path}: annotation for image {image_id}, which is not in 'images'")
        xyxy = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        names = [index.categories[int(a["category_id"])] for a in anns]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        result[index.image_ids[image_id]] = Boxes(names, np.asarray(xyxy, float).reshape(-1, 4), crowd=crowd,
                                                  size=sizes.get(image_id))
    return result, index


def read_coco_results(path: str | Path, index: CocoIndex | None = None, names: Sequence[str] | None = None,
                      known_ids: Iterable[str] = ()) -> dict[str, Boxes]:
    """A COCO results list (``image_id, category_id, bbox [x, y, w, h] pixels, score``) → ``{id: Boxes}``.

    Image and category ids resolve through the COCO ground truth when there is
    one. Otherwise ``image_id`` is matched to a known image id (file stem) by
    its text or its integer value (``537`` ↔ ``00537``), and ``category_id`` is
    ``class index + 1`` in ``names`` (what ultralytics ``save_json`` writes for
    non-COCO datasets), or a name given as ``category_name``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "annotations" in data:
            data = data["annotations"]
        if not isinstance(data, list):
            raise TypeError("expected a list of results")
    except (OSError, ValueError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a COCO results json ({exc})") from None
    by_number = {}
    for stem in known_ids:
        by_number.setdefault(stem, stem)
        if stem.isdigit():
            by_number.setdefault(str(int(stem)), stem)
    grouped: dict[str, tuple[list, list, list]] = {}
    for number, det in enumerate(data):
        try:
            raw_image, bbox, score = det["image_id"], det["bbox"], float(det["score"])
            if index and index.image_ids:
                image = index.image_ids[int(raw_image)]
            else:
                image = by_number.get(str(raw_image), by_number.get(str(int(raw_image)) if str(raw_image).isdigit() else "", str(raw_image)))
            if "category_name" in det:
                name = str(det["category_name"])
            elif index and index.categories:
                name = index.categories[int(det["category_id"])]
            elif names is not None:
                name = names[int(det["category_id"]) - 1]
            else:
                name = str(det["category_id"])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise AnnotationError(f"{path}: result {number} cannot be resolved ({type(exc).__name__}: {exc})") from None
        entry = grouped.setdefault(image, ([], [], []))
        entry[0].append(name)
        entry[1].append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
        entry[2].append(score)
    return {image: Boxes(n, np.asarray(b, float).reshape(-1, 4), np.asarray(s, float)) for image, (n, b, s) in grouped.items()}


def read_detections_json(path: str | Path) -> Boxes:
    """One ``<id>.json`` as ``fuse detect`` writes it: ``{"width", "height", "boxes": [{"class", "score", "xyxy"}]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        boxes = data["boxes"]
        size = (int(data["width"]), int(data["height"])) if "width" in data and "height" in data else None
        return Boxes([str(b["class"]) for b in boxes], np.asarray([b["xyxy"] for b in boxes], float).reshape(-1, 4),
                     np.asarray([float(b["score"]) for b in boxes]), size=size)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a fuse detections json ({type(exc).__name__}: {exc})") from None


def read_label_file(path: Path, names: Sequence[str] | None) -> Boxes:
    """A ground-truth or detection file by suffix: ``.txt`` YOLO, ``.xml`` VOC, ``.json`` fuse detections."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if names is None:
            raise AnnotationError(f"{path}: YOLO labels need a classes file (--classes FILE, or classes.txt beside the labels)")
        return read_yolo_txt(path, names)
    if suffix == ".xml":
        return read_voc_xml(path)
    if suffix == ".json":
        return read_detections_json(path)
    raise AnnotationError(f"{path}: unknown label format (use .txt YOLO, .xml VOC or .json)")


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        hidden_or_meta = path.name.startswith(".") or path.name == "classes.txt"
        if path.is_file() and path.suffix.lower() in suffixes and not hidden_or_meta and path.stem not in found:
            found[path.stem] = path
    return found


@dataclass
class GroundTruth:
    """Ground truth of a labels folder or COCO file: boxes by image id, and the class list when known."""

    boxes: dict[str, Boxes]
    classes: list[str] | None
    coco: CocoIndex | None = None
    missing: list[str] = field(default_factory=list)  # requested ids that have no label file


def load_ground_truth(labels: str | Path, ids: Iterable[str] | None = None, classes_file: str | Path | None = None,
                      class_map: Mapping[str, str] | None = None) -> GroundTruth:
    """Read ``labels`` (a folder of YOLO txt / VOC xml, or a COCO json) for ``ids`` (default: every labelled image).

    A requested id without a label file counts as an image with no objects (as
    YOLO datasets treat it) and is listed in ``missing``.
    """
    labels = Path(labels)
    class_map = class_map or {}
    names = read_class_names(classes_file) if classes_file else None
    if labels.is_file() and labels.suffix.lower() == ".json":
        boxes, coco = read_coco_ground_truth(labels)
        classes = [coco.categories[k] for k in sorted(coco.categories)]
        missing = []
        if ids is not None:
            wanted = list(ids)
            missing = [i for i in wanted if i not in boxes]
            boxes = {i: boxes.get(i, Boxes.empty()) for i in wanted}
        return GroundTruth({k: b.renamed(class_map) for k, b in boxes.items()}, _mapped(classes, class_map), coco, missing)
    if not labels.is_dir():
        raise AnnotationError(f"{labels}: not a labels folder or a COCO json file")
    files = _files_by_stem(labels, LABEL_SUFFIXES)
    if names is None and any(p.suffix.lower() == ".txt" for p in files.values()):
        found = find_classes_file(labels)
        if found is None:
            raise AnnotationError(f"{labels}: YOLO labels need a classes file (--classes FILE, or classes.txt beside the labels)")
        names = read_class_names(found)
    wanted = list(files) if ids is None else list(ids)
    boxes, missing = {}, []
    for image in wanted:
        path = files.get(image)
        if path is None:
            missing.append(image)
            boxes[image] = Boxes.empty(normalised=True)
        else:
            boxes[image] = read_label_file(path, names).renamed(class_map)
    classes = names
    if classes is None:  # VOC: the classes that occur, in order of first appearance
        classes = list(dict.fromkeys(n for b in boxes.values() for n in b.names))
    return GroundTruth(boxes, _mapped(classes, class_map), None, missing)


def _mapped(classes: Sequence[str] | None, class_map: Mapping[str, str]) -> list[str] | None:
    return None if classes is None else list(dict.fromkeys(class_map.get(c, c) for c in classes))


def load_detections(source: str | Path, names: Sequence[str] | None = None, coco: CocoIndex | None = None,
                    known_ids: Iterable[str] = (), class_map: Mapping[str, str] | None = None) -> dict[str, Boxes]:
    """Detections from a folder (YOLO txt with a score column, or ``fuse detect`` json) or a COCO results json."""
    source = Path(source)
    class_map = class_map or {}
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise AnnotationError(f"{source}: a detections file must be a COCO results .json (or give a folder)")
        result = read_coco_results(source, coco, names, known_ids)
    elif source.is_dir():
        files = _files_by_stem(source, (".json",)) or _files_by_stem(source, (".txt",))
        result = {}
        for image, path in files.items():
            boxes = read_label_file(path, names) if path.suffix == ".txt" else read_detections_json(path)
            if boxes.scores is None:
                if len(boxes):
                    raise AnnotationError(f"{path}: detections need a score column (class cx cy w h score)")
                boxes.scores = np.zeros(0)
            result[image] = boxes
    else:
        raise AnnotationError(f"{source}: no such detections folder or file")
    return {k: b.renamed(class_map) for k, b in result.items()}


# --- the evaluator -----------------------------------------------------------------------------


@dataclass
class ClassResult:
    name: str
    images: int
    instances: int
    detections: int
    precision: float
    recall: float
    ap: np.ndarray  # (T,) AP per IoU threshold 0.50:0.05:0.95; NaN when the class has no ground truth

    @property
    def row(self) -> dict:
        ap50, ap75, ap = (math.nan, math.nan, math.nan) if np.isnan(self.ap).all() else (self.ap[0], self.ap[5], float(self.ap.mean()))
        return {"class": self.name, "images": self.images, "instances": self.instances, "detections": self.detections,
                "P": self.precision, "R": self.recall, "AP50": float(ap50), "AP75": float(ap75), "AP50:95": float(ap)}


@dataclass
class EvalResult:
    classes: list[ClassResult]
    images: int
    unknown_classes: dict[str, int] = field(default_factory=dict)  # detected classes absent from the ground truth

    @property
    def overall(self) -> dict:
        """The "all" row: totals, and the mean over classes that have ground truth (as COCO's mAP)."""
        scored = [c for c in self.classes if c.instances > 0]
        mean = (lambda values: float(np.mean(values)) if values else math.nan)
        return {"class": "all", "images": self.images, "instances": sum(c.instances for c in self.classes),
                "detections": sum(c.detections for c in self.classes),
                "P": mean([c.precision for c in scored]), "R": mean([c.recall for c in scored]),
                "AP50": mean([c.ap[0] for c in scored]), "AP75": mean([c.ap[5] for c in scored]),
                "AP50:95": mean([float(c.ap.mean()) for c in scored])}

    def rows(self, source: str = "") -> list[dict]:
        return [{"source": source, **c.row} for c in self.classes] + [{"source": source, **self.overall}]


def _align(gt: Boxes, dt: Boxes, image: str, sizes: Mapping[str, tuple[int, int]]) -> tuple[Boxes, Boxes]:
    if gt.normalised == dt.normalised or not len(gt) or not len(dt):  # units of an empty set do not matter
        return gt, dt
    size = gt.size or dt.size or sizes.get(image)
    if size is None:
        raise AnnotationError(f"pair {image}: labels and detections use different units (normalised vs pixels) "
                              "and the image size is unknown; give the images (records) too")
    return gt.to_pixels(size), dt.to_pixels(size)


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


def _annotation(number: int, image: int, category: int, box: np.ndarray, **fields) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"id": number, "image_id": image, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1), **fields}


def evaluate(ground_truth: Mapping[str, Boxes], detections: Mapping[str, Boxes], classes: Sequence[str] | None = None,
             image_ids: Iterable[str] | None = None, sizes: Mapping[str, tuple[int, int]] | None = None,
             max_dets: int = MAX_DETS) -> EvalResult:
    """COCO bbox evaluation (pycocotools' ``COCOeval``) of ``detections`` against ``ground_truth`` ({image id: Boxes}).

    ``image_ids`` (default: every image with ground truth) are the images
    evaluated; an image missing from ``detections`` has no detections.
    ``classes`` (default: the ground-truth classes, in order of appearance) are
    the rows of the table; detections of other classes are counted in
    ``unknown_classes`` and otherwise ignored, as pycocotools ignores
    categories that are not in the ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    sizes = sizes or {}
    ids = sorted(set(ground_truth) if image_ids is None else set(image_ids))
    if classes is None:
        classes = list(dict.fromkeys(n for i in ids if i in ground_truth for n in ground_truth[i].names))
    category = {name: k for k, name in enumerate(dict.fromkeys(classes), start=1)}  # COCO ids, in table order
    unknown: dict[str, int] = {}
    gt_anns, dt_anns = [], []
    for number, image in enumerate(ids, start=1):  # COCO orders images by id: the sorted order of ours
        gt = ground_truth.get(image)
        gt = Boxes.empty(normalised=True) if gt is None else gt
        dt = detections.get(image)
        dt = Boxes.empty(normalised=gt.normalised, scores=True) if dt is None else dt
        if dt.scores is None:
            raise AnnotationError(f"pair {image}: detections without scores")
        gt, dt = _align(gt, dt, image, sizes)
        for name, box, ignore, crowd in zip(gt.names, gt.xyxy, gt.ignore, gt.crowd):
            if name in category:
                ann = _annotation(len(gt_anns) + 1, number, category[name], box, iscrowd=int(crowd))
                if ignore:  # COCOeval's own 'ignore' is iscrowd; an area outside "all" is ignored without crowd IoU
                    ann["area"] = -1.0
                gt_anns.append(ann)
        for name, box, score in zip(dt.names, dt.xyxy, dt.scores):
            if name in category:
                dt_anns.append(_annotation(len(dt_anns) + 1, number, category[name], box, score=float(score)))
            else:
                unknown[name] = unknown.get(name, 0) + 1
    images = [{"id": number} for number in range(1, len(ids) + 1)]
    categories = [{"id": k, "name": name} for name, k in category.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress on stdout, which carries our output
        run = COCOeval(_coco(images, categories, gt_anns), _coco(images, categories, dt_anns), "bbox")
        run.params.areaRng, run.params.areaRngLbl, run.params.maxDets = [[0, 1e10]], ["all"], [max_dets]
        run.evaluate()
        run.accumulate()
    precision = run.eval["precision"][:, :, :, 0, 0]  # (IoU threshold, recall threshold, class)
    results = []
    for k, name in enumerate(category):
        per_image = [e for e in run.evalImgs[k * len(ids):(k + 1) * len(ids)] if e is not None]
        instances = sum(int(np.count_nonzero(e["gtIgnore"] == 0)) for e in per_image)
        ap = np.full(len(run.params.iouThrs), np.nan) if instances == 0 else precision[:, :, k].mean(axis=1)
        precision_at, recall_at = _best_f1(per_image, instances) if instances else (math.nan, math.nan)
        results.append(ClassResult(name, sum(len(e["gtIds"]) > 0 for e in per_image), instances,
                                   sum(len(e["dtIds"]) for e in per_image), precision_at, recall_at, ap))
    return EvalResult(results, len(ids), unknown)


def _best_f1(per_image: list[dict], instances: int) -> tuple[float, float]:
    """Precision and recall at IoU 0.5 at the score threshold with the highest F1 (0, 0 without detections),
    from COCOeval's per-image matches of one class, ranked as its ``accumulate`` ranks them."""
    scores = np.concatenate([e["dtScores"] for e in per_image])
    if len(scores) == 0:
        return 0.0, 0.0
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e["dtMatches"][0] for e in per_image])[order] > 0
    ignored = np.concatenate([e["dtIgnore"][0] for e in per_image])[order].astype(bool)
    tp = np.cumsum(matched & ~ignored, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignored, dtype=np.float64)
    rc = tp / instances
    pr = tp / np.maximum(tp + fp, 1e-16)
    f1 = 2 * pr * rc / np.maximum(pr + rc, 1e-16)
    best = int(np.argmax(f1))
    return float(pr[best]), float(rc[best])


# --- tables ------------------------------------------------------------------------------------


def format_table(rows: list[dict], fmt: str) -> str:
    """Render evaluation rows as ``csv``, ``json`` (JSON Lines), ``table`` (aligned text) or ``markdown``."""
    if fmt == "json":
        return "".join(json.dumps({c: _json_value(row.get(c)) for c in COLUMNS}) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _cell(row.get(c), 6) for c in COLUMNS} for row in rows)
        return buffer.getvalue()
    cells = [COLUMNS] + [[_cell(row.get(c), 3) for c in COLUMNS] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---:" if i >= 2 else "---" for i in range(len(COLUMNS))) + "|")
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "".join("  ".join(v.rjust(w) if i >= 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) + "\n"
                   for r in cells)


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}" if digits == 3 else f"{value:.6g}"
    return "" if value is None else str(value)
