"""``fuse register``: bring an unaligned infrared image onto the visible image's grid.

For each pair the stage estimates where every VIS pixel must sample the IR image,
writes that sampling grid and the resampled ("registered") IR, and points the
record's ``ir`` at the registered image, so ``fuse register | fuse fuse`` fuses the
aligned pair.

Outputs for pair ``<id>`` in the output folder:

* ``<id>.png`` — the registered IR: the VIS image's height and width, the IR
  image's channels (gray or RGB), 8-bit (16-bit when the IR file is 16-bit);
* ``<id>.grid.npy`` — float32 ``(H, W, 2)``, for each VIS pixel the ``(x, y)``
  position to sample in the IR image, normalised to [-1, 1] with
  ``align_corners=False``; exactly the convention of ``unaligned/roadscene/grid``::

      registered = torch.nn.functional.grid_sample(ir, grid[None], align_corners=False)

* with ``mask_invalid``: ``<id>.valid.png`` (255 where the grid falls inside the IR
  image, 0 elsewhere); the registered IR is 0 where invalid. Without it, those
  pixels repeat the IR image's border;
* with ``save_overlay``: ``<id>.overlay.png``, registered IR in red over VIS
  luminance in cyan (aligned edges look gray, misaligned edges show red/cyan fringes).

``max_displacement`` (pixels of the VIS grid) *rejects*: when the estimated field
moves any pixel farther than that, the pair fails with a :class:`StageError` (its
record carries the error) rather than being clamped into a different wrong answer.

Every result says how it was made and how far to trust it: the record gains
``registration: {"path", "confidence"}``. ``path`` is what produced the grid
(``ecc``; ``translation`` or ``identity`` when ECC failed and a fallback was kept;
``net``; ``net+ecc``, or ``net-affine`` when ECC never improved the network's
start). ``confidence`` (:func:`edge_agreement`) is the correlation of the
smoothed gradient magnitudes of the registered IR and the VIS image over the valid
pixels; with ``ecc`` it is 0.24–0.57 on ``unaligned/roadscene``, 0.23–0.67 on
``roadscene``, 0.04–0.71 on ``vifb`` (one pair of 21 under 0.06: a VIS image that
shares almost no edge with its IR), at most 0.04 for an IR of random noise and 0
for a blank one. Below ``min_confidence`` (default :data:`MIN_CONFIDENCE`) the
pair fails (nothing is written) unless the caller lowers it (0 accepts every result).

Methods:

* ``ecc`` — classical, no weights: coarse-to-fine ECC (:func:`cv2.findTransformECC`,
  up to 4 pyramid levels) on gradient-magnitude images with an affine (or
  homography) model, ignoring the black padding of an already-warped IR. The
  coarsest level tries six starts (identity, phase-correlation shift, rotations of
  ±6° and ±12°) and keeps the one with the best gradient correlation; a level whose
  ECC fails to converge or lowers the correlation keeps the previous estimate; when
  no level succeeds the pair falls back to the phase-correlation translation (if it
  raises the correlation), else to the identity. No dense refinement step: a
  smoothed dense flow on gradient images raised the error on the unaligned set (see
  the notes in ``benchmarks/bench_register.py``).
* ``net`` — the registration network of Hu et al. 2025
  (:mod:`stages.nets.registration`), packaged weights or ``weights``.
* ``net-ecc`` — the network's field, fitted by an affine map, as the only start of
  the ECC pyramid (no other starts): the network gives the basin, ECC the precision.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stages.core.images import ImageError, atomic_file, luminance, read_image, write_image
from stages.core.provenance import weights_digest
from stages.core.stage import Stage, StageError, record_path

METHODS = ("ecc", "net", "net-ecc")
ECC_MODELS = {"affine": cv2.MOTION_AFFINE, "homography": cv2.MOTION_HOMOGRAPHY}
ECC_MIN_SIZE = 48  # the coarsest pyramid level is at least this many pixels on its short side
ECC_LEVELS = 4
ECC_ITERATIONS = 100
ECC_EPS = 1e-5
ECC_START_ANGLES = (6.0, 12.0)
MIN_CONFIDENCE = 0.06  # edge agreement below this fails the pair (noise: 0.04 at most; see the module docstring)
CONFIDENCE_SIGMA = 3.0  # smoothing of the gradients compared: texture noise shares no edges at this scale


def gradient_magnitude(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Sobel gradient magnitude of a Gaussian-smoothed ``(H, W)`` float image, scaled to unit mean.

    Edges are where IR and VIS agree best, so ECC compares these rather than the
    intensities, which differ between modalities (even in sign).
    """
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    return mag / max(float(mag.mean()), 1e-6)


def _to_h(warp: np.ndarray) -> np.ndarray:
    """2x3 or 3x3 warp → 3x3 float64."""
    out = np.eye(3)
    out[: warp.shape[0]] = warp
    return out


def _rescale(warp: np.ndarray, factor: float) -> np.ndarray:
    """A 3x3 pixel warp (pixel centres at integers) for an image ``factor`` times larger."""
    s = np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1.0]])
    return s @ warp @ np.linalg.inv(s)


def _correlation(fixed: np.ndarray, moving: np.ndarray, warp: np.ndarray, homography: bool) -> float:
    """Correlation of ``fixed`` with ``moving`` warped by ``warp`` (3x3), over the overlap."""
    h, w = fixed.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if homography:
        warped = cv2.warpPerspective(moving, warp, (w, h), flags=flags)
        inside = cv2.warpPerspective(np.ones_like(moving), warp, (w, h), flags=flags)
    else:
        warped = cv2.warpAffine(moving, warp[:2], (w, h), flags=flags)
        inside = cv2.warpAffine(np.ones_like(moving), warp[:2], (w, h), flags=flags)
    m = inside > 0.999
    if m.sum() < 0.2 * m.size:
        return -1.0
    a, b = fixed[m] - fixed[m].mean(), warped[m] - warped[m].mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def _translation_fallback(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """3x3 translation from phase correlation of the gradient images."""
    window = cv2.createHanningWindow(fixed.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(fixed.astype(np.float32), moving.astype(np.float32), window)
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]])


def content_mask(ir: np.ndarray, margin: int = 3) -> np.ndarray:
    """``(H, W)`` uint8 mask: 1 where the image has content, 0 on exact-black padding.

    An unaligned IR often carries black borders where its own warp left the image;
    their edges are artificial, so they and ``margin`` pixels around them are ignored.
    """
    padding = (ir <= 0.5 / 255).astype(np.uint8)
    padding = cv2.morphologyEx(padding, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # single dark pixels are content
    padding = cv2.dilate(padding, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return (1 - padding).astype(np.uint8)


def _ecc(fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray, start: np.ndarray, model: str, criteria) -> np.ndarray | None:
    """One :func:`cv2.findTransformECC` run from ``start`` (3x3); ``None`` when it fails."""
    init = (start if model == "homography" else start[:2]).astype(np.float32)
    try:
        _, found = cv2.findTransformECC(fixed, moving, init, ECC_MODELS[model], criteria, mask, 3)
    except cv2.error:  # "did not converge" or a singular step
        return None
    found = _to_h(found.astype(np.float64))
    return found if np.all(np.isfinite(found)) else None


def _coarse_starts(fixed: np.ndarray, moving: np.ndarray) -> list[np.ndarray]:
    """Starting warps for the coarsest level: identity, phase-correlation shift, and rotations.

    ECC converges only near the answer; trying rotations of ±ECC_START_ANGLES degrees
    about the centre (each with the identity shift) widens the basin.
    """
    h, w = fixed.shape
    starts = [np.eye(3), _translation_fallback(fixed, moving)]
    for angle in ECC_START_ANGLES:
        for sign in (-1, 1):
            starts.append(_to_h(cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), sign * angle, 1.0)))
    return starts


def ecc_warp(
    ir: np.ndarray, vis: np.ndarray, model: str = "affine", levels: int = ECC_LEVELS, init: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Estimate the 3x3 pixel warp taking VIS pixel positions to IR positions.

    Args:
        ir: ``(H, W)`` moving image in [0, 1] (the same size as ``vis``).
        vis: ``(H, W)`` fixed image (luminance) in [0, 1].
        model: ``"affine"`` or ``"homography"``.
        levels: pyramid levels (fewer when the image is small).
        init: a 3x3 full-resolution warp to start from instead of the six coarse
            starts (``net-ecc`` passes the network's estimate).

    Returns:
        ``(warp, how)``: ``warp`` maps ``(x, y, 1)`` of a VIS pixel centre (pixel
        centres at integers) to the IR position to sample; ``how`` is ``"ecc"``,
        ``"translation"`` (phase-correlation fallback), ``"identity"``, or ``"init"``
        (ECC never improved on ``init``).
    """
    if model not in ECC_MODELS:
        raise ValueError(f"ECC motion model must be one of {sorted(ECC_MODELS)}, not {model!r}")
    homography = model == "homography"
    content = content_mask(ir)
    fixed_full, moving_full = gradient_magnitude(vis), gradient_magnitude(ir) * content
    levels = max(1, min(levels, int(np.log2(max(min(vis.shape) / ECC_MIN_SIZE, 1))) + 1))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    warp, how = np.eye(3), "identity" if init is None else "init"
    for level in reversed(range(levels)):
        factor = 2**level
        size = (max(1, round(vis.shape[1] / factor)), max(1, round(vis.shape[0] / factor)))
        fixed = cv2.resize(fixed_full, size, interpolation=cv2.INTER_AREA)
        moving = cv2.resize(moving_full, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(content, size, interpolation=cv2.INTER_NEAREST)
        if level == levels - 1 and init is not None:
            starts = [_rescale(init, 1 / factor)]
        elif level == levels - 1:
            starts = _coarse_starts(fixed, moving)
        else:
            starts = [_rescale(warp, 1 / factor)]
        best, best_score = starts[0], _correlation(fixed, moving, starts[0], homography)
        for start in starts:
            found = _ecc(fixed, moving, mask, start, model, criteria)
            score = _correlation(fixed, moving, found, homography) if found is not None else -1.0
            if score > best_score:
                best, best_score, how = found, score, "ecc"
        warp = _rescale(best, factor)
    if how == "identity":
        shift = _translation_fallback(fixed_full, moving_full)
        if _correlation(fixed_full, moving_full, shift, homography) > _correlation(fixed_full, moving_full, np.eye(3), homography):
            warp, how = shift, "translation"
    return warp, how


def warp_to_grid(warp: np.ndarray, vis_hw: tuple[int, int], ir_hw: tuple[int, int]) -> np.ndarray:
    """3x3 pixel warp (VIS pixel → IR pixel, centres at integers) → float32 grid ``(H, W, 2)``.

    The grid follows the dataset convention: normalised [-1, 1], ``align_corners=False``.
    """
    h, w = vis_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = warp @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    px, py = pts[0] / pts[2], pts[1] / pts[2]
    gx = (2 * px + 1) / ir_hw[1] - 1
    gy = (2 * py + 1) / ir_hw[0] - 1
    return np.stack([gx, gy], -1).reshape(h, w, 2).astype(np.float32)


def affine_from_grid(grid: np.ndarray, step: int = 4) -> np.ndarray:
    """Least-squares 3x3 affine pixel warp (VIS pixel → IR pixel, centres at integers) of a grid ``(H, W, 2)``."""
    h, w = grid.shape[:2]
    ys, xs = np.mgrid[0:h:step, 0:w:step].astype(np.float64)
    g = grid[::step, ::step].astype(np.float64)
    px, py = ((g[..., 0] + 1) * w - 1) / 2, ((g[..., 1] + 1) * h - 1) / 2
    a = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1)
    rows = np.linalg.lstsq(a, np.stack([px.ravel(), py.ravel()], 1), rcond=None)[0].T
    return _to_h(rows)


def ecc_estimate(ir: np.ndarray, vis: np.ndarray, model: str = "affine",
                 init: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """``(grid, how)``: sampling grid ``(H, W, 2)`` (VIS size) bringing ``ir`` ``(h, w)`` onto ``vis`` ``(H, W)``.

    ``how`` is :func:`ecc_warp`'s. ``ir`` is resized to the VIS size for the estimate;
    normalised coordinates do not depend on the size, so the grid samples the original IR.
    """
    small_ir = cv2.resize(ir, vis.shape[::-1], interpolation=cv2.INTER_AREA) if ir.shape != vis.shape else ir
    warp, how = ecc_warp(small_ir, vis, model, init=init)
    return warp_to_grid(warp, vis.shape, vis.shape), how


def ecc_grid(ir: np.ndarray, vis: np.ndarray, model: str = "affine", init: np.ndarray | None = None) -> np.ndarray:
    """The grid of :func:`ecc_estimate` alone."""
    return ecc_estimate(ir, vis, model, init)[0]


def edge_agreement(registered: np.ndarray, vis: np.ndarray, valid: np.ndarray) -> float:
    """Confidence of a registration: correlation (−1..1) of the gradient magnitudes (smoothed by
    :data:`CONFIDENCE_SIGMA`) of the registered IR and VIS luminance ``(H, W)`` over the ``valid`` pixels; 0 when either is flat
    (standard deviation under a quarter of an 8-bit grey level) or fewer than 16 pixels are valid.
    """
    if valid.sum() < 16 or min(float(registered[valid].std()), float(vis[valid].std())) < 0.25 / 255:
        return 0.0
    a = gradient_magnitude(vis, CONFIDENCE_SIGMA)[valid]
    b = gradient_magnitude(registered, CONFIDENCE_SIGMA)[valid]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def displacement_px(grid: np.ndarray) -> np.ndarray:
    """Per-pixel displacement length ``(H, W)`` in VIS pixels of a grid ``(H, W, 2)``."""
    h, w = grid.shape[:2]
    xs = (np.arange(w) + 0.5) * 2 / w - 1
    ys = (np.arange(h) + 0.5) * 2 / h - 1
    dx = (grid[..., 0] - xs[None, :]) * w / 2
    dy = (grid[..., 1] - ys[:, None]) * h / 2
    return np.hypot(dx, dy)


def apply_grid(ir: np.ndarray, grid: np.ndarray, mask_invalid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``ir`` ``(h, w)`` or ``(h, w, 3)`` with ``grid`` ``(H, W, 2)``.

    Returns ``(registered, valid)``: ``registered`` is ``(H, W)`` or ``(H, W, 3)``,
    ``valid`` ``(H, W)`` bool, true where the grid is inside the IR image
    (``|x|, |y| <= 1``). Outside, ``registered`` repeats the border, or is 0 with
    ``mask_invalid``.
    """
    img = torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32))
    img = img[None, None] if img.ndim == 2 else img.permute(2, 0, 1)[None]
    g = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None]
    out = F.grid_sample(img, g, mode="bilinear", padding_mode="border", align_corners=False)[0]
    out = out[0].numpy() if ir.ndim == 2 else out.permute(1, 2, 0).numpy()
    valid = np.all(np.abs(grid) <= 1.0, axis=-1)
    if mask_invalid:
        out = np.where(valid[..., None] if out.ndim == 3 else valid, out, 0.0)
    return out.clip(0, 1).astype(np.float32), valid


def overlay(registered: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Red/cyan overlay ``(H, W, 3)``: registered IR luminance in red, VIS luminance in green + blue."""
    r, c = luminance(registered), luminance(vis)
    return np.stack([r, c, c], -1)


def _is_16bit(path: Path) -> bool:
    """Whether an image file stores 16-bit samples (so the registered IR keeps that depth)."""
    import imageio.v3 as iio

    try:
        return iio.improps(path).dtype.itemsize == 2
    except (OSError, ValueError, RuntimeError):  # properties unreadable: write 8-bit
        return False


class RegisterStage(Stage):
    """Register IR onto VIS (see the module docstring for files and conventions).

    Args:
        out_dir: folder for the outputs.
        method: ``"ecc"`` (classical), ``"net"`` (the paper's network) or ``"net-ecc"``
            (ECC started from the network's estimate).
        device: torch device for the network (``"auto"`` picks CUDA when available).
        max_displacement: reject (fail the pair) when the field moves a pixel farther
            than this many VIS pixels; ``None`` for no limit.
        mask_invalid: write ``<id>.valid.png`` and zero the pixels sampled outside the IR.
        save_overlay: write ``<id>.overlay.png`` (red/cyan).
        weights: network weights file (default: the packaged ``stages/weights/register.safetensors``).
        ecc_model: ``"affine"`` or ``"homography"`` for ``ecc``.
        single_pass: ``net``, ``net-ecc``: one pass of the network at its working size
            instead of the test-time ensemble (:meth:`RegistrationNet.estimate_field`).
        min_confidence: fail a pair whose :func:`edge_agreement` is below this (0 keeps all).
    """

    name = "register"

    def __init__(
        self,
        out_dir: Path,
        method: str = "ecc",
        device: str = "cpu",
        max_displacement: float | None = None,
        mask_invalid: bool = False,
        save_overlay: bool = False,
        weights: Path | None = None,
        ecc_model: str = "affine",
        single_pass: bool = False,
        min_confidence: float = MIN_CONFIDENCE,
    ):
        if method not in METHODS:
            raise ValueError(f"registration method must be one of {', '.join(METHODS)}, not {method!r}")
        if ecc_model not in ECC_MODELS:
            raise ValueError(f"ECC motion model must be one of {', '.join(ECC_MODELS)}, not {ecc_model!r}")
        if single_pass and method == "ecc":
            raise ValueError("single_pass is for the network's methods, net and net-ecc, not ecc")
        if max_displacement is not None and max_displacement <= 0:
            raise ValueError(f"max_displacement must be positive pixels, not {max_displacement}")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], not {min_confidence}")
        self.min_confidence = min_confidence
        self.out_dir = Path(out_dir)
        self.method = method
        self.max_displacement = max_displacement
        self.mask_invalid = mask_invalid
        self.save_overlay = save_overlay
        self.ecc_model = ecc_model
        self.ensemble = not single_pass
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = None
        weights_used = None
        if method in ("net", "net-ecc"):
            from stages.nets.inference import fold_batchnorm
            from stages.nets.registration import WEIGHTS, load_registration_net

            self.net = fold_batchnorm(load_registration_net(weights, self.device))
            weights_used = weights or WEIGHTS
        self.settings = {"method": method, "ecc_model": ecc_model if method != "net" else None,
                         "weights": weights_digest(weights_used), "single_pass": single_pass,
                         "mask_invalid": mask_invalid}

    def _paths(self, record: dict) -> dict[str, Path]:
        pair_id = record.get("id")
        if not isinstance(pair_id, str) or not pair_id:
            raise StageError(f"record without an 'id': {record}")
        paths = {"ir": self.out_dir / f"{pair_id}.png", "grid": self.out_dir / f"{pair_id}.grid.npy"}
        if self.mask_invalid:
            paths["valid"] = self.out_dir / f"{pair_id}.valid.png"
        if self.save_overlay:
            paths["overlay"] = self.out_dir / f"{pair_id}.overlay.png"
        return paths

    def outputs(self, record: dict) -> list[Path]:
        """``<id>.png``, ``<id>.grid.npy`` (+ ``<id>.valid.png``, ``<id>.overlay.png`` when on)."""
        return list(self._paths(record).values())

    def _result(self, record: dict, paths: dict[str, Path]) -> dict:
        result = {key: str(path) for key, path in paths.items()}
        result["ir_unregistered"] = record["ir"]
        return result

    def skip_update(self, record: dict) -> dict:
        """The keys :meth:`process_one` would add, for a pair whose outputs exist."""
        return self._result(record, self._paths(record))

    def estimate_grid(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """Grid ``(H, W, 2)`` at the VIS size bringing ``ir`` (luminance ``(h, w)``) onto ``vis`` ``(H, W)``."""
        return self.estimate(ir, vis)[0]

    def estimate(self, ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, str]:
        """``(grid, path)``: the grid of :meth:`estimate_grid` and what produced it (see the module docstring)."""
        if self.method == "ecc":
            return ecc_estimate(ir, vis, self.ecc_model)
        if self.method == "net-ecc":
            grid, how = ecc_estimate(ir, vis, self.ecc_model, init=affine_from_grid(self._net_grid(ir, vis)))
            return grid, "net+ecc" if how == "ecc" else "net-affine"
        return self._net_grid(ir, vis), "net"

    def _net_grid(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """The network's grid ``(H, W, 2)`` at the VIS size."""
        ir_t, vis_t = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].to(self.device) for a in (ir, vis))
        if ir.shape != vis.shape:  # normalised coordinates do not depend on the size
            ir_t = F.interpolate(ir_t, size=vis.shape, mode="bilinear", align_corners=False, antialias=True)
        return self.net.estimate_grid(ir_t, vis_t, self.ensemble)[0].cpu().numpy().astype(np.float32)

    def process_one(self, record: dict) -> dict:
        """Register one pair; returns ``ir``, ``ir_unregistered``, ``grid`` (+ ``valid``, ``overlay``), ``registration``."""
        paths = self._paths(record)
        pair_id = record["id"]
        ir_path, vis_path = record_path(record, "ir", pair_id), record_path(record, "vis", pair_id)
        try:
            ir, vis = read_image(ir_path), read_image(vis_path)
        except ImageError as exc:
            raise StageError(f"pair {pair_id}: {exc}") from None
        vis_y = luminance(vis)
        grid, path = self.estimate(luminance(ir), vis_y)
        if self.max_displacement is not None:
            largest = float(displacement_px(grid).max())
            if largest > self.max_displacement:
                raise StageError(
                    f"pair {pair_id}: {ir_path}: estimated displacement {largest:.1f} px exceeds "
                    f"--max-displacement {self.max_displacement:g} px; rejected"
                )
        registered, valid = apply_grid(ir, grid, self.mask_invalid)
        confidence = edge_agreement(luminance(registered), vis_y, valid)
        if confidence < self.min_confidence:
            raise StageError(
                f"pair {pair_id}: {ir_path}: registration confidence {confidence:.3f} ({path}) is below "
                f"--min-confidence {self.min_confidence:g}: its edges do not match {vis_path}'s (noise, a blank "
                f"image or another scene?); rejected (--min-confidence 0 keeps it)"
            )
        with atomic_file(paths["grid"]) as tmp:
            np.save(tmp, grid)
        if self.mask_invalid:
            write_image(paths["valid"], valid.astype(np.float32))
        if self.save_overlay:
            write_image(paths["overlay"], overlay(registered, vis_y))
        # The registered image carries the recipe, so it is written last (see Stage).
        write_image(paths["ir"], registered, bit_depth=16 if _is_16bit(ir_path) else 8, recipe=self.recipe(record))
        return {**self._result(record, paths), "registration": {"path": path, "confidence": round(confidence, 4)}}
