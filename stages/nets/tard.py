"""Fusion head of the target-aware unregistered fusion network (fusion method ``tard``).

Hu et al., Front. Phys. 13:1599968 (2025), sections 3.3–3.4: the registered IR
common and specific features are concatenated with the VI ones,
``F_f = [F_i^r, F^_i^r, F_v, F^_v]`` (eq. 7), and a reconstruction head of three
conv-BN-LeakyReLU layers, the last with Tanh, gives the fused image. Fusion loss
(eqs. 9–11): ``l_f = l_b + gamma * l_g`` with ``l_b = mean|I_f - max(I_i, I_v)|`` and
``l_g = mean| |∇I_f| - max(|∇I_i|, |∇I_v|) |`` (Sobel), ``gamma = 2``.

The Tanh output ``t`` is mapped to ``(t + 1) / 2`` in [0, 1]. The detection head fed with
the same ``F_f`` and its loss ``l_ob`` (eq. 8) are in :mod:`stages.nets.tard_detection`.

The head is trained jointly with :class:`~stages.nets.registration.RegistrationNet`
by :func:`stages.training.registration.train_register` (without ``l_ob``) and, with the
detection head and ``l_ob``, by :func:`stages.training.tard.train_tard_detection`;
``stages/weights/tard.safetensors`` holds the whole joint network (trained without
``l_ob``). :func:`tard_factory` follows the fusion-method contract of :mod:`stages.methods.registry`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stages.nets.checkpoint import load_checked
from stages.nets.losses import texture_loss_max
from stages.nets.registration import FEATURES, RegistrationNet, conv_block, resize, state_config, warp

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "tard.safetensors"
GAMMA = 2.0

def fusion_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, gamma: float = GAMMA) -> dict[str, torch.Tensor]:
    """The paper's ``l_f = l_b + gamma * l_g`` on ``(B, 1, H, W)`` images in [0, 1].

    Returns ``{"fusion": l_f, "luminance": l_b, "gradient": l_g}`` (scalars).
    """
    l_b = (fused - torch.maximum(ir, vis)).abs().mean()
    l_g = texture_loss_max(fused, ir, vis)
    return {"fusion": l_b + gamma * l_g, "luminance": l_b, "gradient": l_g}


class ReconstructionHead(nn.Sequential):
    """Three feature extraction layers, Tanh last: ``(B, 4C, H, W)`` → ``(B, 1, H, W)`` in [-1, 1]."""

    def __init__(self, channels: int = FEATURES):
        super().__init__(
            conv_block(4 * channels, 2 * channels), conv_block(2 * channels, channels), conv_block(channels, 1, act=nn.Tanh())
        )


class TardNet(nn.Module):
    """Joint registration + fusion network (the detection head is :class:`~stages.nets.tard_detection.TardDetector`).

    >>> net = TardNet().eval()
    >>> net.fuse(torch.rand(1, 1, 100, 130), torch.rand(1, 1, 100, 130)).shape
    torch.Size([1, 1, 100, 130])
    """

    def __init__(self, channels: int = FEATURES, size: tuple[int, int] = (160, 256)):
        super().__init__()
        self.registration = RegistrationNet(channels, size)
        self.head = ReconstructionHead(channels)

    def fused_features(self, feats: dict, flow: torch.Tensor | None) -> torch.Tensor:
        """``F_f`` (eq. 7): IR features warped by ``flow`` (any size, pixels of its grid) + VI features.

        ``feats`` holds ``ir_common``, ``ir_specific``, ``vis_common``, ``vis_specific``, each
        ``(B, C, H, W)``; ``flow`` is ``(B, 2, h, w)`` or ``None`` for no warp.
        Returns ``(B, 4C, H, W)``.
        """
        ir_c, ir_s = feats["ir_common"], feats["ir_specific"]
        if flow is not None:
            ir_c, ir_s = warp(ir_c, flow), warp(ir_s, flow)
        return torch.cat([ir_c, ir_s, feats["vis_common"], feats["vis_specific"]], 1)

    def reconstruct(self, fused_features: torch.Tensor) -> torch.Tensor:
        """``(B, 4C, H, W)`` → fused image ``(B, 1, H, W)`` in [0, 1]."""
        return (self.head(fused_features) + 1.0) * 0.5

    def features(self, ir: torch.Tensor, vis: torch.Tensor, register: bool = True, ensemble: bool = False) -> torch.Tensor:
        """``F_f`` of a pair ``(B, 1, H, W)`` in [0, 1], any size → ``(B, 4C, H, W)``.

        With ``register`` the deformation is estimated at the working size and the IR
        features are warped onto the VI grid (the paper's joint network); without it
        the pair is taken as aligned. Differentiable (training calls it on the
        deformed IR at the working size), except with ``ensemble``: then the field is
        the registration's test-time ensemble (inference only).
        """
        reg = self.registration
        feats = {
            "ir_common": reg.ir_common(ir),
            "ir_specific": reg.ir_specific(ir),
            "vis_common": reg.vis_common(vis),
            "vis_specific": reg.vis_specific(vis),
        }
        flow = None
        if register and ensemble:
            flow = reg.estimate_field(ir, vis)
        elif register:
            small = [resize(x, reg.size) for x in (ir, vis)]
            flow = reg(*small)["flows"][-1]
        return self.fused_features(feats, flow)

    @torch.no_grad()
    def fuse(self, ir: torch.Tensor, vis: torch.Tensor, register: bool = True) -> torch.Tensor:
        """Fuse ``ir`` and ``vis`` ``(B, 1, H, W)`` in [0, 1], any size → ``(B, 1, H, W)`` in [0, 1].

        The registration is the test-time ensemble of ``fuse register -m net``
        (:meth:`~stages.nets.registration.RegistrationNet.estimate_field`); see :meth:`features`.
        """
        return self.reconstruct(self.features(ir, vis, register, ensemble=True))


def load_tard(weights: str | Path | None = None, device: str | torch.device = "cpu") -> TardNet:
    """A :class:`TardNet` in eval mode with ``weights`` (default: the packaged file)."""
    path = Path(weights or WEIGHTS)
    net = load_checked(path, "tard", lambda meta: TardNet(**state_config(path, "tard", meta)))
    return net.to(device).eval()
