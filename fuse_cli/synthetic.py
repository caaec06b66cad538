"""Synthetic infrared/visible pairs, so the demo and the tests run without any dataset.

Each scene has what makes fusion worth doing: the visible image carries
texture, colour and edges (sky, a textured ground, a building with windows)
but hides people standing in shadow or at night; the infrared image shows
them as warm blobs over a smooth, texture-poor background. Deterministic for
a given seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from stages.core.images import write_image


def _person_mask(h: int, w: int, cx: float, base: float, height: float) -> np.ndarray:
    """A standing figure (head + body ellipses) whose feet are at row ``base``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = ((xx - cx) / (0.16 * height)) ** 2 + ((yy - (base - 0.38 * height)) / (0.38 * height)) ** 2 <= 1
    head = ((xx - cx) / (0.09 * height)) ** 2 + ((yy - (base - 0.86 * height)) / (0.1 * height)) ** 2 <= 1
    return body | head


def make_pair(seed: int, height: int = 240, width: int = 320, night: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One scene: IR ``(H, W)`` and VIS ``(H, W, 3)``, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    horizon = int(h * rng.uniform(0.35, 0.5))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    vis = np.zeros((h, w, 3), np.float32)
    sky = np.array([0.55, 0.7, 0.95], np.float32) * (1 - 0.4 * yy[:horizon, :, None] / horizon)
    vis[:horizon] = sky
    ground_texture = gaussian_filter(rng.normal(0, 1, (h, w)), 1.2)
    ground_texture = 0.5 + 0.12 * ground_texture / ground_texture.std()
    vis[horizon:] = ground_texture[horizon:, :, None] * np.array([0.75, 0.7, 0.6], np.float32)

    ir = 0.25 + 0.1 * yy / h + 0.02 * gaussian_filter(rng.normal(0, 1, (h, w)), 6)
    ir[:horizon] = 0.15

    # A building: textured wall with a grid of windows (visible detail, cool in IR).
    bx0, bx1 = sorted(rng.integers(0, w, 2))
    bx1 = max(bx1, bx0 + w // 5)
    by0 = int(horizon * rng.uniform(0.2, 0.5))
    wall = (slice(by0, horizon + 5), slice(bx0, bx1))
    vis[wall] = np.array([0.6, 0.45, 0.35], np.float32)
    windows = ((xx // 12) % 2 == 0) & ((yy // 14) % 2 == 0)
    in_wall = np.zeros((h, w), bool)
    in_wall[wall] = True
    vis[in_wall & windows] = np.array([0.2, 0.25, 0.35], np.float32)
    ir[in_wall] = 0.32
    ir[in_wall & windows] = 0.36

    # A shadow band hiding people in the visible image.
    shadow = (xx > w * rng.uniform(0.1, 0.4)) & (xx < w * rng.uniform(0.6, 0.9)) & (yy > horizon)
    vis[shadow] *= 0.35
    for _ in range(int(rng.integers(2, 4))):
        person_h = h * rng.uniform(0.25, 0.45)
        base = rng.uniform(horizon + person_h * 0.4, h - 5)
        mask = _person_mask(h, w, rng.uniform(0.1 * w, 0.9 * w), base, person_h)
        vis[mask] = vis[mask] * 0.85 + 0.02
        ir[mask] = rng.uniform(0.8, 0.95)

    if night:
        vis = vis * 0.18
    ir = gaussian_filter(ir, 1.0) + rng.normal(0, 0.01, (h, w))
    vis = vis + rng.normal(0, 0.01, vis.shape)
    return np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32)


def write_pairs(folder: Path, count: int = 4, height: int = 240, width: int = 320) -> list[str]:
    """Write ``count`` pairs as ``folder/ir/scene_NN.png`` and ``folder/vis/scene_NN.png``; return the ids.

    Every fourth scene is a night scene (dark visible image).
    """
    ids = []
    for index in range(count):
        pair_id = f"scene_{index:02d}"
        ir, vis = make_pair(seed=index, height=height, width=width, night=index % 4 == 3)
        write_image(Path(folder) / "ir" / f"{pair_id}.png", ir)
        write_image(Path(folder) / "vis" / f"{pair_id}.png", vis)
        ids.append(pair_id)
    return ids
