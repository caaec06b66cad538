"""The ``fuse`` stage: read each pair, fuse the luminance, write ``OUT/<id>.<ext>``.

Colour rule: when VIS is RGB the fused image is RGB — IR is fused with the Y
channel of VIS in YCbCr (BT.601, :func:`~stages.core.images.luminance`) and the
visible chroma (Cb, Cr) is kept; a gray VIS gives a gray output. An RGB IR
image (false-colour or gray stored as RGB) is reduced to its luminance.
The output always has the input's height and width.

Pairs of different sizes are an error unless ``resize`` names the image whose
grid wins: ``resize="vis"`` resamples IR onto the VIS size, ``"ir"`` the other
way round (bilinear, antialiased).

Same-size pairs in a batch are stacked and fused in one call, on the chosen
device, so networks batch on the GPU. Classical methods are given numpy arrays,
so fusing with them imports no torch.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stages.core.images import PNG_COMPRESSION, ImageError, luminance, read_image, write_image
from stages.core.provenance import weights_digest
from stages.core.stage import Stage, StageError, record_path
from stages.methods.registry import WEIGHTS_DIR, get_method


def keep_chroma(vis: np.ndarray, vis_y: np.ndarray, fused_y: np.ndarray) -> np.ndarray:
    """RGB ``vis`` ``(H, W, 3)`` with its luminance ``vis_y`` ``(H, W)`` replaced by ``fused_y``, clipped to [0, 1].

    The same image as converting to YCbCr, swapping Y and converting back (kornia's
    ``rgb_to_ycbcr`` and ``ycbcr_to_rgb`` are exact inverses whose Y column is 1 for
    R, G and B), up to float rounding, in three passes instead of a dozen.
    """
    rgb = cv2.cvtColor(fused_y - vis_y, cv2.COLOR_GRAY2RGB)  # the change of luminance, on every channel
    rgb += vis
    return np.clip(rgb, 0, 1, out=rgb)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` ``(H, W)`` or ``(H, W, 3)`` resampled to ``size`` (bilinear, antialiased)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(img))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return (out[0] if out.shape[0] == 1 else out.permute(1, 2, 0)).numpy()


def load_pair(record: dict, resize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the record's IR (as luminance) and VIS; check or reconcile their sizes.

    Returns ``ir`` ``(H, W)`` and ``vis`` ``(H, W)`` or ``(H, W, 3)``, float32 [0, 1].
    """
    pair = record.get("id", "?")
    ir_path, vis_path = record_path(record, "ir"), record_path(record, "vis")
    try:
        ir = luminance(read_image(ir_path))
        vis = read_image(vis_path)
    except ImageError as exc:
        raise StageError(f"pair {pair}: {exc}") from None
    if ir.shape[:2] != vis.shape[:2]:
        if resize == "vis":
            ir = _resize(ir, vis.shape[:2])
        elif resize == "ir":
            vis = _resize(vis, ir.shape[:2])
        else:
            raise StageError(
                f"pair {pair}: sizes differ: {ir_path} is {ir.shape[1]}x{ir.shape[0]}, "
                f"{vis_path} is {vis.shape[1]}x{vis.shape[0]} (use --resize vis|ir to resample)"
            )
    return ir, vis


class FuseStage(Stage):
    """Fuse each record's ``ir`` and ``vis`` with one registered method."""

    name = "fuse"
    output_key = "fused"

    def __init__(
        self,
        out_dir: Path,
        method: str = "laplacian",
        device: str = "cpu",
        weights: Path | None = None,
        out_format: str = "png",
        bit_depth: int = 8,
        resize: str | None = None,
        method_options: dict | None = None,
        png_compression: int = PNG_COMPRESSION,
    ):
        self.out_dir, self.method, self.device = Path(out_dir), method, device
        self.out_format, self.bit_depth, self.resize = out_format, bit_depth, resize
        self.png_compression = png_compression
        self.output_suffix = f".{out_format}"
        info = get_method(method)
        self.fuse_luma = info.factory(device=device, weights=weights, **(method_options or {}))
        self.on_arrays = info.kind == "classical"  # numpy in, numpy out; networks take tensors on ``device``
        shipped = WEIGHTS_DIR / f"{method}.safetensors"
        self.settings = {"method": method, "weights": weights_digest(weights if weights is not None else shipped),
                         "bit_depth": bit_depth, "resize": resize, **(method_options or {})}
        if getattr(self.fuse_luma, "uses_records", False):
            self.input_keys = ("ir", "vis", "mask", "caption", "embedding")

    def skip_update(self, record: dict) -> dict:
        return {**super().skip_update(record), "method": self.method}

    def process(self, records: list[dict]) -> list[dict | Exception]:
        results: list[dict | Exception] = [None] * len(records)  # type: ignore[list-item]
        loaded = {}
        for i, record in enumerate(records):
            try:
                loaded[i] = load_pair(record, self.resize)
            except StageError as exc:
                results[i] = exc
        by_size: dict[tuple, list[int]] = {}
        for i, (ir, _) in loaded.items():
            by_size.setdefault(ir.shape, []).append(i)
        for indices in by_size.values():
            try:
                fused = self.fuse_images(
                    [loaded[i][0] for i in indices], [loaded[i][1] for i in indices], [records[i] for i in indices]
                )
            except (RuntimeError, ValueError, OSError) as exc:
                for i in indices:
                    results[i] = StageError(f"pair {records[i].get('id', '?')}: fusion failed: {exc}")
                continue
            for i, image in zip(indices, fused):
                try:
                    path = self.output_path(records[i])
                    write_image(path, image, self.bit_depth, self.recipe(records[i]), png_compression=self.png_compression)
                    results[i] = {"fused": str(path), "method": self.method}
                except (ImageError, OSError) as exc:
                    results[i] = StageError(f"pair {records[i].get('id', '?')}: cannot write output: {exc}")
        return results

    def fuse_images(self, irs: list[np.ndarray], viss: list[np.ndarray], records: list[dict] | None = None) -> list[np.ndarray]:
        """Fuse same-size pairs: ``irs`` ``(H, W)``, ``viss`` ``(H, W)`` or ``(H, W, 3)`` → fused, VIS's channels.

        Methods guided by more than the two images (a mask, a caption, CLIP
        embeddings) set ``uses_records = True`` on their callable and receive
        the pairs' ``records`` to read those keys from, and ``vis_rgb`` ``(B, 3, H, W)``.
        """
        ir = np.stack(irs)[:, None]  # (B, 1, H, W)
        vis_y = np.stack([luminance(v) for v in viss])[:, None]  # (B, 1, H, W); a gray VIS is its own Y
        if self.on_arrays:
            fused_y = self.fuse_luma(ir, vis_y)
        else:
            fused_y = self._fuse_tensors(ir, vis_y, viss, records)
        fused_y = np.clip(fused_y.astype(np.float32, copy=False), 0, 1)
        return [keep_chroma(v, vis_y[b, 0], fused_y[b, 0]) if v.ndim == 3 else fused_y[b, 0]
                for b, v in enumerate(viss)]

    def _fuse_tensors(self, ir: np.ndarray, vis_y: np.ndarray, viss: list[np.ndarray],
                      records: list[dict] | None) -> np.ndarray:
        """A network's fused luminance ``(B, 1, H, W)``, computed on the stage's device."""
        import torch

        def on_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device)

        with torch.inference_mode():
            extra = {}
            if getattr(self.fuse_luma, "uses_records", False):
                vis_rgb = np.stack([v.transpose(2, 0, 1) if v.ndim == 3 else np.repeat(v[None], 3, 0) for v in viss])
                extra = {"records": records, "vis_rgb": on_device(vis_rgb)}
            return self.fuse_luma(on_device(ir), on_device(vis_y), **extra).float().cpu().numpy()
