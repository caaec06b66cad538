"""Loss pieces shared by the learned fusion networks.

Every function takes luminance batches ``(B, 1, H, W)`` in [0, 1] and returns a
scalar (the mean over the batch) unless said otherwise. ``1/HW ||x||_1`` in
the papers is the per-pixel mean of ``|x|``, which is what :func:`torch.mean`
of an absolute value gives.

* :func:`sobel_magnitude` — ``|∇x|`` = ``|Sobel_x * x| + |Sobel_y * x|``.
* :func:`texture_loss_max` — RefineFuse's texture loss (Eq. 8):
  ``1/HW || |∇f| − max(|∇ir|, |∇vis|) ||_1``.
* :func:`edge_loss_both` — Text-DFH's edge loss (Eq. 3):
  ``1/HW (||∇f − ∇ir||_1 + ||∇f − ∇vis||_1)``.
* :func:`intensity_loss_both` — Text-DFH's intensity loss (Eq. 2):
  ``1/HW (||f − ir||_1 + ||f − vis||_1)``.
* :func:`masked_intensity_loss` — RefineFuse's mask-based intensity loss (Eq. 7):
  ``1/HW (||M_ir ⊙ (f − ir)||_1 + ||M_vis ⊙ (f − vis)||_1)``.
* :func:`salient_mask`, :func:`local_contrast` and :func:`intensity_masks` — the
  masks of RefineFuse's Eq. 6, built from the images alone (see their docstrings
  for the choices where the paper uses segmentation labels).

>>> import torch
>>> ir, vis = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
>>> fused = (ir + vis) / 2
>>> float(texture_loss_max(fused, ir, vis)) > 0
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_KERNELS = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None]  # (2, 1, 3, 3)


def _check_luminance(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(f"expected a luminance batch of shape (B, 1, H, W), got {tuple(t.shape)}")


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``|gx| + |gy|`` with replicated borders.

    Args:
        x: ``(B, 1, H, W)``.

    Returns:
        ``(B, 1, H, W)``, non-negative.
    """
    _check_luminance(x)
    kernels = _SOBEL_KERNELS.to(dtype=x.dtype, device=x.device)
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return grad.abs().sum(dim=1, keepdim=True)


def texture_loss_max(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """RefineFuse Eq. 8: the fused gradient should follow the stronger source gradient."""
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))
    return (sobel_magnitude(fused) - target).abs().mean()


def edge_loss_both(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Text-DFH Eq. 3: L1 distance of the fused Sobel edges to both sources' edges."""
    grad_fused = sobel_magnitude(fused)
    return (grad_fused - sobel_magnitude(ir)).abs().mean() + (grad_fused - sobel_magnitude(vis)).abs().mean()


def intensity_loss_both(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Text-DFH Eq. 2: L1 distance of the fused intensities to both sources."""
    _check_luminance(fused, ir, vis)
    return (fused - ir).abs().mean() + (fused - vis).abs().mean()


def masked_intensity_loss(
    fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, mask_ir: torch.Tensor, mask_vis: torch.Tensor
) -> torch.Tensor:
    """RefineFuse Eq. 7: follow the IR intensity inside ``mask_ir``, the visible one inside ``mask_vis``.

    Args:
        fused, ir, vis: ``(B, 1, H, W)``.
        mask_ir, mask_vis: ``(B, 1, H, W)`` in {0, 1}.
    """
    _check_luminance(fused, ir, vis, mask_ir, mask_vis)
    return (mask_ir * (fused - ir)).abs().mean() + (mask_vis * (fused - vis)).abs().mean()


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    pad = window // 2
    return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), window, stride=1)


def local_contrast(x: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Local contrast: the squared difference between a pixel and the mean of its
    ``window × window`` neighbourhood (RefineFuse, Sect. "Loss function"), averaged
    over the same window so that a comparison between two images is not decided by
    single noisy pixels.

    Args:
        x: ``(B, 1, H, W)``.

    Returns:
        ``(B, 1, H, W)``, non-negative.
    """
    _check_luminance(x)
    return _box_mean((x - _box_mean(x, window)) ** 2, window)


def salient_mask(ir: torch.Tensor, window: int = 9, k_sigma: float = 1.0) -> torch.Tensor:
    """Salient (thermal target) mask of an IR batch, without segmentation labels.

    RefineFuse takes salient objects from segmentation labels, which RoadScene and
    LLVIP do not have. Thermal targets are the regions markedly warmer than the
    scene, so a pixel is salient when its ``window``-smoothed IR intensity exceeds
    the image's mean by ``k_sigma`` standard deviations.

    Args:
        ir: ``(B, 1, H, W)``.

    Returns:
        ``(B, 1, H, W)`` float mask in {0, 1}.
    """
    _check_luminance(ir)
    smooth = _box_mean(ir, window)
    mean = ir.mean(dim=(2, 3), keepdim=True)
    std = ir.std(dim=(2, 3), keepdim=True)
    return (smooth > mean + k_sigma * std).to(ir.dtype)


def intensity_masks(
    ir: torch.Tensor, vis: torch.Tensor, salient: torch.Tensor | None = None, window: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """RefineFuse Eq. 6: ``M_ir`` = salient ∪ (IR more contrasted than VIS); ``M_vis = 1 − M_ir``.

    "High contrast in the infrared image" is read as: the IR local contrast
    (:func:`local_contrast`) is larger than the visible one at that pixel. The
    visible mask is then exactly the non-salient pixels where the visible image
    has the higher contrast, i.e. the complement of ``M_ir``.

    Args:
        ir, vis: ``(B, 1, H, W)``.
        salient: optional ``(B, 1, H, W)`` {0, 1} mask of labelled targets; estimated
            from the IR with :func:`salient_mask` when ``None``.

    Returns:
        ``(mask_ir, mask_vis)``, each ``(B, 1, H, W)`` in {0, 1}.
    """
    if salient is None:
        salient = salient_mask(ir, window)
    ir_contrast = (local_contrast(ir, window) > local_contrast(vis, window)).to(ir.dtype)
    mask_ir = ((salient + ir_contrast) > 0).to(ir.dtype)
    return mask_ir, 1.0 - mask_ir
