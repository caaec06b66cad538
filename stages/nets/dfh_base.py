"""The base fusion network of the MLLM-guided Text-DFH method (first training stage).

Follows Sect. 3.2 of *Infrared and visible image fusion driven by multimodal large
language models* (``shared/papers/mllm-guided-fusion-textdfh.txt``):

* **IR-Encoder** and **VI-Encoder** — three layers each of conv 3×3 (stride 1),
  BatchNorm, LeakyReLU, giving ``F_i`` and ``F_v``.
* **F-Decoder** — three such layers on ``concat(F_i, F_v)``; the last layer's
  activation is Tanh.
* **Loss** — :func:`dfh_loss`: ``ℓ_f = ℓ_in + ε·ℓ_ed`` with ε = 0.2 (Eqs. 1–3), the L1
  intensity distance to both sources plus the L1 distance of the Sobel edges.

:meth:`DFHBase.encode` and :meth:`DFHBase.decode` are exposed separately so the
second stage (Text-DFH, which refines ``F_i``/``F_v`` with text features and
reuses the frozen F-Decoder) can call them.

Choices where the paper leaves details open:

* Widths: encoders 1 → 16 → 32 → 32 channels; decoder 64 → 32 → 16 → 1
  (about 52 K parameters; 128×128 crops train at ~2.5 s per batch of 16 on one CPU thread).
* LeakyReLU slope 0.1; the Tanh output ``t`` is mapped to intensities as ``(t + 1) / 2``.
* All convolutions are stride 1 with zero padding, so any ``H × W`` works
  (:attr:`DFHBase.multiple` = 1).

>>> import torch
>>> net = DFHBase().eval()
>>> f_i, f_v = net.encode(torch.rand(1, 1, 30, 41), torch.rand(1, 1, 30, 41))
>>> f_i.shape, net.decode(f_i, f_v).shape
(torch.Size([1, 32, 30, 41]), torch.Size([1, 1, 30, 41]))
"""
from __future__ import annotations

import torch
from torch import nn

from stages.nets.losses import edge_loss_both, intensity_loss_both

EDGE_WEIGHT = 0.2  # ε of Eq. 1


def _layer(in_ch: int, out_ch: int, activation: nn.Module) -> nn.Sequential:
    """conv 3×3 (stride 1) → BatchNorm → activation; keeps ``H × W``."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), activation)


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1, inplace=True)


class DFHEncoder(nn.Module):
    """IR- or VI-Encoder: three conv-BN-LeakyReLU layers. ``(B, 1, H, W)`` → ``(B, widths[-1], H, W)``."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        chans = (1, *widths)
        self.body = nn.Sequential(*(_layer(chans[i], chans[i + 1], _leaky()) for i in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FDecoder(nn.Module):
    """F-Decoder: three conv-BN layers (LeakyReLU, LeakyReLU, Tanh).

    ``(B, 2·C, H, W)`` → ``(B, 1, H, W)`` in [0, 1].
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            _layer(in_ch, in_ch // 2, _leaky()),
            _layer(in_ch // 2, in_ch // 4, _leaky()),
            _layer(in_ch // 4, 1, nn.Tanh()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.body(x) + 1.0) / 2.0


class DFHBase(nn.Module):
    """Two encoders and the F-Decoder: ``forward(ir, vis)`` on ``(B, 1, H, W)`` → ``(B, 1, H, W)`` in [0, 1].

    Args:
        widths: channels after each encoder layer; the decoder reads ``2 · widths[-1]``.
    """

    multiple = 1

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 32)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.config = {"widths": list(widths)}
        self.ir_encoder = DFHEncoder(widths)
        self.vi_encoder = DFHEncoder(widths)
        self.f_decoder = FDecoder(2 * widths[-1])

    def encode(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, H, W)`` pair → ``(F_i, F_v)``, each ``(B, widths[-1], H, W)``."""
        return self.ir_encoder(ir), self.vi_encoder(vis)

    def decode(self, features_ir: torch.Tensor, features_vis: torch.Tensor) -> torch.Tensor:
        """``(F_i, F_v)`` → fused ``(B, 1, H, W)`` in [0, 1]."""
        return self.f_decoder(torch.cat([features_ir, features_vis], dim=1))

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(ir, vis))


def dfh_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``ℓ_in + ε·ℓ_ed`` with ε = 0.2. Inputs ``(B, 1, H, W)`` in [0, 1]; returns a scalar."""
    return intensity_loss_both(fused, ir, vis) + EDGE_WEIGHT * edge_loss_both(fused, ir, vis)
