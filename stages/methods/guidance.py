"""Guidance computed from the pair itself, with no model: the salient mask and the advisor caption.

* :func:`salient_mask` — RefineFuse's IR mask: warm targets (:func:`warm_targets`) and
  high IR local contrast near them; thresholds in :data:`SALIENT_DEFAULTS` (the rule
  is described in :mod:`stages.mask`, whose ``salient`` backend it is).
* :func:`advise` — short task-oriented advice on fusing a pair from measurements
  (:func:`measure`), the ``advisor`` backend of :mod:`stages.caption`.
* :func:`read_mask` — a mask PNG as a bool array.

The mask and caption stages write these to files; the text-guided methods
(:mod:`stages.methods.text`) compute them when a record carries none.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from stages.core.images import luminance, read_image


# ---------------------------------------------------------------- salient mask (RefineFuse)


SALIENT_DEFAULTS = {
    "smooth": 1.5,
    "background": 0.06,
    "k_local": 3.0,
    "k_global": 1.0,
    "min_area": 1e-4,
    "max_area": 0.08,
    "contrast_window": 9,
    "contrast_ratio": 4.0,
    "contrast_quantile": 0.98,
    "contrast_reach": 0.02,
}


def _box_mean(x: np.ndarray, window: int) -> np.ndarray:
    return ndimage.uniform_filter(x, size=window, mode="nearest")


def local_contrast(x: np.ndarray, window: int = 9) -> np.ndarray:
    """RefineFuse's local contrast of ``(H, W)``: the window-mean of ``(x − mean_window(x))²``.

    The same definition as :func:`stages.nets.losses.local_contrast`, in numpy.
    """
    x = x.astype(np.float32)
    return _box_mean((x - _box_mean(x, window)) ** 2, window)


def warm_targets(ir: np.ndarray, *, smooth: float = 1.5, background: float = 0.06, k_local: float = 3.0,
                 k_global: float = 1.0, min_area: float = 1e-4, max_area: float = 0.08, **_) -> np.ndarray:
    """Warm targets of an IR ``(H, W)`` image in [0, 1] as a bool ``(H, W)`` mask (see the module docstring)."""
    ir = np.asarray(ir, dtype=np.float32)
    h, w = ir.shape
    smoothed = ndimage.gaussian_filter(ir, smooth)
    residual = smoothed - ndimage.gaussian_filter(smoothed, max(2.0, background * min(h, w)), mode="nearest")
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) + 1e-4
    warm = (residual > k_local * spread) & (smoothed > smoothed.mean() + k_global * smoothed.std())
    warm = ndimage.binary_closing(warm, np.ones((3, 3), bool))
    labels, count = ndimage.label(warm, np.ones((3, 3), bool))
    if not count:
        return np.zeros((h, w), bool)
    areas = np.bincount(labels.ravel(), minlength=count + 1) / float(h * w)
    keep = (areas >= max(min_area, 6.0 / (h * w))) & (areas <= max_area)
    keep[0] = False
    return ndimage.binary_fill_holes(keep[labels])


def contrast_mask(ir: np.ndarray, vis: np.ndarray, targets: np.ndarray | None = None, *, contrast_window: int = 9,
                  contrast_ratio: float = 4.0, contrast_quantile: float = 0.98, contrast_reach: float = 0.02,
                  **_) -> np.ndarray:
    """Positions where the IR local contrast is high and well above the visible one (bool ``(H, W)``).

    With ``targets`` given, only contrast within ``contrast_reach`` × the shorter
    side of a target is kept.
    """
    c_ir, c_vis = local_contrast(ir, contrast_window), local_contrast(vis, contrast_window)
    high = (c_ir > contrast_ratio * c_vis) & (c_ir > np.quantile(c_ir, contrast_quantile)) & (c_ir > 1e-4)
    if targets is not None:
        reach = max(1, int(round(contrast_reach * min(ir.shape))))
        near = ndimage.binary_dilation(targets, np.ones((3, 3), bool), iterations=reach)
        high &= near
    return high


def salient_mask(ir: np.ndarray, vis: np.ndarray, *, contrast: bool = True, **params) -> np.ndarray:
    """RefineFuse's IR mask: warm targets ∪ high IR local contrast near them. ``(H, W)`` arrays → bool ``(H, W)``.

    >>> from fuse_cli.synthetic import make_pair
    >>> ir, vis = make_pair(0)
    >>> m = salient_mask(ir, vis.mean(-1))
    >>> m.dtype, m.shape, bool(0 < m.mean() < 0.2)
    (dtype('bool'), (240, 320), True)
    """
    settings = {**SALIENT_DEFAULTS, **params}
    unknown = set(params) - set(SALIENT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown salient-mask parameters: {', '.join(sorted(unknown))}")
    targets = warm_targets(ir, **settings)
    if not contrast:
        return targets
    return targets | contrast_mask(ir, vis, targets, **settings)


# ---------------------------------------------------------------- advisor caption


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
    * **warm targets** — the IR image's warm targets (:func:`warm_targets`,
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


# ---------------------------------------------------------------- mask files


def read_mask(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as bool ``(H, W)`` (any non-zero pixel is foreground); resized (nearest) to ``shape`` if given."""
    m = luminance(read_image(path)) > 0.5
    if shape is not None and m.shape != tuple(shape):
        ys = (np.arange(shape[0]) * m.shape[0] / shape[0]).astype(int)
        xs = (np.arange(shape[1]) * m.shape[1] / shape[1]).astype(int)
        m = m[ys][:, xs]
    return m
