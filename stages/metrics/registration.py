"""Registration accuracy: end-point error between sampling grids, MAE and NCC between images."""
from __future__ import annotations

import numpy as np


def _valid_mask(valid, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(valid, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"valid mask has shape {mask.shape}, expected {shape}")
    if not mask.any():
        raise ValueError("valid mask selects no pixel")
    return mask


def registration_metrics(pred_grid=None, gt_grid=None, registered=None, aligned=None, valid=None) -> dict[str, float]:
    """Score a registration; each metric is reported when its inputs are given.

    * ``EPE`` (pixels, lower is better): mean end-point error between two sampling grids
      of shape (H, W, 2), (x, y) in normalised [-1, 1] coordinates with
      ``align_corners=False`` (as ``torch.nn.functional.grid_sample``); a normalised
      difference d is d·W/2 pixels in x and d·H/2 in y.
    * ``MAE`` (input units, lower is better): mean absolute difference between the
      registered image and the aligned ground truth, all channels.
    * ``NCC`` (−1..1, higher is better): zero-mean normalised cross-correlation of the
      same two images (0 when either is constant).

    ``valid`` is an optional (H, W) boolean mask of the pixels to score.
    """
    out: dict[str, float] = {}
    if (pred_grid is None) != (gt_grid is None):
        raise ValueError("EPE needs both pred_grid and gt_grid")
    if (registered is None) != (aligned is None):
        raise ValueError("MAE and NCC need both registered and aligned")
    if pred_grid is not None:
        pred, gt = np.asarray(pred_grid, dtype=np.float64), np.asarray(gt_grid, dtype=np.float64)
        if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 2:
            raise ValueError(f"grids must both be (H, W, 2), got {pred.shape} and {gt.shape}")
        h, w = pred.shape[:2]
        mask = _valid_mask(valid, (h, w))
        d = (pred - gt) * np.array([w / 2, h / 2])
        out["EPE"] = float(np.hypot(d[..., 0], d[..., 1])[mask].mean())
    if registered is not None:
        x, y = np.asarray(registered, dtype=np.float64), np.asarray(aligned, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"registered {x.shape} and aligned {y.shape} differ in shape")
        mask = _valid_mask(valid, x.shape[:2])
        xs, ys = x[mask], y[mask]
        out["MAE"] = float(np.abs(xs - ys).mean())
        dx, dy = xs - xs.mean(), ys - ys.mean()
        den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
        out["NCC"] = float((dx * dy).sum() / den) if den > 0 else 0.0
    return out


def residual_displacement(grid: np.ndarray, deformation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End-point error of an estimated grid against a known deformation, without inverting it.

    ``deformation`` ``(H, W, 2)`` made the unaligned IR from the aligned one
    (``ir_warp = grid_sample(ir, deformation)``, the dataset convention); ``grid``
    ``(H, W, 2)`` is the estimate (``registered = grid_sample(ir_warp, grid)``). A
    VIS pixel ``p`` then shows the aligned IR at ``deformation(grid(p))``; a perfect
    estimate gives ``p``. Returns ``(error, valid)``, both ``(H, W)``: the distance in
    pixels, and where ``grid`` and the composed position fall inside the images.
    The identity grid gives the unregistered displacement.
    """
    import torch  # only here: the CLI imports this module at start-up
    import torch.nn.functional as F

    h, w = grid.shape[:2]
    field = torch.from_numpy(np.ascontiguousarray(deformation, dtype=np.float32)).permute(2, 0, 1)[None]
    g = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None]
    composed = F.grid_sample(field, g, mode="bilinear", padding_mode="border", align_corners=False)[0].permute(1, 2, 0).numpy()
    ident = np.stack(np.meshgrid((np.arange(w) + 0.5) * 2 / w - 1, (np.arange(h) + 0.5) * 2 / h - 1), -1)
    error = np.hypot((composed[..., 0] - ident[..., 0]) * w / 2, (composed[..., 1] - ident[..., 1]) * h / 2)
    valid = np.all(np.abs(grid) <= 1, -1) & np.all(np.abs(composed) <= 1, -1)
    return error, valid
