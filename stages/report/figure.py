"""The qualitative comparison figure of fusion papers: pairs × [IR, VIS, method, …].

Each row is one pair; each column one image (the two sources, then every
method's output), labelled above the first row. Zoom regions are boxed in one
colour per region — the same colour on every column and row — and each is
enlarged in a corner inset of every image. The inset corner is chosen per row so
that it covers neither a zoom box nor the salient (warm) targets of the IR image.

    rows = [FigureRow("00537D", [ir, vis, fused_a, fused_b])]
    plans = [plan_zooms(row, explicit=[(100, 80, 60, 60)], auto=1) for row in rows]
    layout = draw_figure(rows, ["IR", "VIS", "a", "b"], plans, "figure.pdf")

Images are float arrays in [0, 1]: gray ``(H, W)`` is drawn gray, RGB ``(H, W, 3)`` in colour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from stages.core.images import atomic_file, luminance

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the pair
Rect = tuple[float, float, float, float]  # left, bottom, width, height in figure fractions

#: One colour per zoom region, in order (colour-blind-safe: red, blue, green, orange, purple).
ZOOM_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3")
#: Corner names, in the order preferred when several are equally free.
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
FORMATS = (".png", ".pdf", ".svg")


@dataclass
class FigureRow:
    """One pair: its id and its images in column order (IR, VIS, then each method), all the same size."""

    pair_id: str
    images: list[np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        return self.images[0].shape[:2]


@dataclass
class Zoom:
    """A region of a pair and the corner of each image where it is shown enlarged."""

    box: Box
    corner: str


@dataclass
class FigureLayout:
    """Where everything went, in figure fractions (origin bottom-left): for tests and callers."""

    size_inches: tuple[float, float]
    tiles: list[list[Rect]]  # [row][column]
    insets: list[list[list[Rect]]] = field(default_factory=list)  # [row][column][zoom]


def parse_box(text: str) -> Box:
    """``"x,y,w,h"`` (pixels) → a box; ``ValueError`` saying what was expected."""
    try:
        x, y, w, h = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--zoom {text!r}: expected x,y,w,h in pixels (e.g. 120,80,64,64) or auto") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"--zoom {text!r}: x and y must be >= 0, w and h > 0")
    return x, y, w, h


def disagreement(images: list[np.ndarray], methods: int) -> np.ndarray:
    """Per-pixel spread (standard deviation) across the methods of their gradient magnitude.

    Gradients, not intensities: edges, texture and target contrast that one method
    keeps and another loses draw the box, a uniform brightness offset between
    methods (a sky one method renders darker) does not. With one method there is
    nothing to compare it with, so the sources join it.
    """
    chosen = images[2:] if methods >= 2 else images
    gradients = []
    for img in chosen:
        gy, gx = np.gradient(luminance(img).astype(np.float64))
        gradients.append(np.hypot(gx, gy))
    return np.std(np.stack(gradients), axis=0)


def auto_boxes(score: np.ndarray, count: int, size: int, avoid: list[Box] = ()) -> list[Box]:
    """``count`` square ``size``-pixel boxes of the largest mean ``score``, at least ``size`` apart from each other and ``avoid``."""
    h, w = score.shape
    size = min(size, h, w)
    mean = uniform_filter(score.astype(np.float64), size=size, mode="constant")
    half = size // 2
    # mean[cy, cx] averages the window centred there; keep centres whose window lies inside the image.
    valid = np.full((h, w), -np.inf)
    valid[half:h - (size - half) + 1, half:w - (size - half) + 1] = 0.0
    boxes: list[Box] = []
    for _ in range(count):
        blocked = valid.copy()
        for bx, by, bw, bh in [*avoid, *boxes]:  # keep a box's width between regions, so they show different places
            blocked[max(by - (size - half) - size, 0):by + bh + half + size,
                    max(bx - (size - half) - size, 0):bx + bw + half + size] = -np.inf
        candidate = mean + blocked
        if not np.isfinite(candidate).any():
            break
        cy, cx = np.unravel_index(np.argmax(candidate), candidate.shape)
        boxes.append((int(cx - half), int(cy - half), size, size))
    return boxes


def salient_mask(ir: np.ndarray) -> np.ndarray:
    """Warm targets: IR luminance above the midpoint of its median and its 99.5th percentile."""
    luma = luminance(ir)
    median, top = np.percentile(luma, [50, 99.5])
    return luma > (median + top) / 2 if top > median else np.zeros(luma.shape, bool)


def inset_shape(box: Box, shape: tuple[int, int], fraction: float) -> tuple[int, int]:
    """Inset width and height in image pixels: ``fraction`` of the shorter image side, the box's aspect."""
    h, w = shape
    side = fraction * min(h, w)
    scale = side / max(box[2], box[3])
    return max(1, round(box[2] * scale)), max(1, round(box[3] * scale))


def corner_box(corner: str, size: tuple[int, int], shape: tuple[int, int]) -> Box:
    """The pixel box of an inset of ``size`` (w, h) in ``corner`` of an image of ``shape`` (h, w)."""
    (iw, ih), (h, w) = size, shape
    x = 0 if corner.endswith("left") else w - iw
    y = 0 if corner.startswith("top") else h - ih
    return x, y, iw, ih


def _overlap(a: Box, b: Box) -> float:
    """Fraction of ``a`` covered by ``b``."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0) / (a[2] * a[3])


def choose_corners(boxes: list[Box], salient: np.ndarray, fraction: float) -> list[str]:
    """A distinct corner per box (up to four), covering the fewest box and salient pixels.

    Covering a zoom box costs ten times as much as covering the same area of salient target.
    """
    shape, free, corners = salient.shape, list(CORNERS), []
    for box in boxes:
        size = inset_shape(box, shape, fraction)

        def cost(corner: str) -> float:
            x, y, w, h = rect = corner_box(corner, size, shape)
            covered = sum(_overlap(rect, other) for other in boxes)
            return 10 * covered + float(salient[y:y + h, x:x + w].mean())

        best = min(free or CORNERS, key=cost)
        corners.append(best)
        if best in free:
            free.remove(best)
    return corners


def plan_zooms(row: FigureRow, explicit: list[Box], auto: int = 0, size: int | None = None,
               fraction: float = 0.42) -> list[Zoom]:
    """The pair's zooms: the ``explicit`` boxes, then ``auto`` boxes where the methods differ most.

    ``size`` is the side of an automatic box (default: a fifth of the shorter image side).
    ``ValueError`` when an explicit box leaves the image.
    """
    h, w = row.shape
    for box in explicit:
        if box[0] + box[2] > w or box[1] + box[3] > h:
            raise ValueError(f"pair {row.pair_id}: zoom {','.join(map(str, box))} leaves the {w}x{h} image")
    boxes = list(explicit)
    if auto:
        score = disagreement(row.images, methods=len(row.images) - 2)
        boxes += auto_boxes(score, auto, size or max(8, min(h, w) // 5), avoid=explicit)
    corners = choose_corners(boxes, salient_mask(row.images[0]), fraction)
    return [Zoom(box, corner) for box, corner in zip(boxes, corners)]


def draw_figure(rows: list[FigureRow], labels: list[str], zooms: list[list[Zoom]], path: str | Path,
                dpi: int = 300, width: float = 7.0, font_size: float = 7.0, fraction: float = 0.42) -> FigureLayout:
    """Draw the grid and save it to ``path`` (``.png`` at ``dpi``, ``.pdf`` or ``.svg`` with text kept as text).

    ``width`` is the figure width in inches (7 is a two-column page); rows keep their
    images' aspect. When a label does not fit its column, all labels are set smaller (:func:`label_size`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: the figure is written as .png, .pdf or .svg")
    columns, gap = len(labels), 0.02  # inches between tiles
    tile_w = (width - gap * (columns - 1)) / columns
    heights = [tile_w * r.shape[0] / r.shape[1] for r in rows]
    font_size = label_size(labels, tile_w, font_size)
    label_h = font_size * 2.2 / 72
    total_h = label_h + sum(heights) + gap * (len(rows) - 1)
    vector = suffix != ".png"
    style = {"svg.fonttype": "none", "pdf.fonttype": 42, "font.size": font_size}
    with plt.rc_context(style):
        fig = plt.figure(figsize=(width, total_h), dpi=dpi)
        layout = FigureLayout((width, total_h), [], [])
        top = total_h - label_h
        for row, height, row_zooms in zip(rows, heights, zooms):
            top -= height
            tiles, insets = [], []
            for c, img in enumerate(row.images):
                rect = ((c * (tile_w + gap)) / width, top / total_h, tile_w / width, height / total_h)
                ax = fig.add_axes(rect)
                _show(ax, img, vector)
                tile_insets = []
                for k, zoom in enumerate(row_zooms):
                    colour = ZOOM_COLOURS[k % len(ZOOM_COLOURS)]
                    x, y, w, h = zoom.box
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=0.8))
                    inset = _inset_rect(rect, zoom, row.shape, fraction)
                    inax = fig.add_axes(inset)
                    _show(inax, img[y:y + h, x:x + w], vector, interpolation="nearest")
                    for spine in inax.spines.values():
                        spine.set_visible(True)
                        spine.set_edgecolor(colour)
                        spine.set_linewidth(1.0)
                    tile_insets.append(inset)
                tiles.append(rect)
                insets.append(tile_insets)
            layout.tiles.append(tiles)
            layout.insets.append(insets)
            top -= gap
        y = 1 - (label_h / 2) / total_h
        for label, (left, _, tw, _) in zip(labels, layout.tiles[0]):
            fig.text(left + tw / 2, y, label, ha="center", va="center", fontsize=font_size)
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=suffix[1:])
        plt.close(fig)
    return layout


def _show(ax, img: np.ndarray, vector: bool, interpolation: str | None = None) -> None:
    """Draw an image without axes; gray with the gray colour map over [0, 1]."""
    interp = interpolation or ("none" if vector else "antialiased")
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation=interp)
    else:
        ax.imshow(np.clip(img, 0, 1), interpolation=interp)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _inset_rect(tile: Rect, zoom: Zoom, shape: tuple[int, int], fraction: float) -> Rect:
    """The inset's rectangle in figure fractions, inside ``tile`` at the zoom's corner."""
    h, w = shape
    x, y, iw, ih = corner_box(zoom.corner, inset_shape(zoom.box, shape, fraction), shape)
    left, bottom, tw, th = tile
    return left + tw * x / w, bottom + th * (1 - (y + ih) / h), tw * iw / w, th * ih / h


def label_size(labels: list[str], column_width: float, font_size: float) -> float:
    """The one label size for every column: ``font_size``, or smaller (down to 4 pt, in half points) until all fit."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    measure = TextToPath()
    widest = max(measure.get_text_width_height_descent(label, FontProperties(size=font_size), ismath=False)[0]
                 for label in labels)  # points
    room = 0.96 * column_width * 72 / widest if widest else 1.0
    return max(4.0, min(font_size, int(font_size * room * 2) / 2))
