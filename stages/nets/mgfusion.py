"""MGFusion: infrared/visible fusion guided by a multimodal large language model (CLIP),
Frontiers in Neurorobotics 2024, doi:10.3389/fnbot.2024.1521603 (``../shared/papers/mgfusion-clip-guided.txt``).

Architecture (Sect. 3, Figs. 1–3), on luminance ``(B, 1, H, W)`` in [0, 1]:

* **IRE / VIE** — two feature-extraction layers (3×3 conv, stride 1, BatchNorm,
  LeakyReLU) then ``blocks`` Restormer blocks (MDTA + GDFN, Zamir et al. 2022; :mod:`stages.nets.restormer`)
  → ``F_i``, ``F_v`` ``(B, C, H, W)``.
* **CII** (one per modality) — frozen CLIP image embeddings ``e_i``, ``e_v``
  ``(B, E)`` mixed by a learnable ``W ∈ R^E``: ``F_c = A(e_i ⊙ W + e_v ⊙ (1 − W))``
  (Eq. 1; ``A`` the Adapter, two linear layers) → ``(B, C, 1, 1)``; SEP (3×3 conv,
  ReLU, 3×3 conv) + Sigmoid on the modality's features gives the spatial
  expansion weights ``W_s``; injection by addition ``F̂ = F + F_c ⊙ W_s`` (Eq. 2).
* **CFF** — IR / VIS adapters (IRA, VIA: two linear layers) give channel weights
  ``W^c_i``, ``W^c_v`` from ``e_i``, ``e_v``; ``F_f = [W^c_i ⊙ F̂_i, W^c_v ⊙ F̂_v]``
  (Eq. 3, concatenation → 2C channels); SAWP (3×3 conv, ReLU, 3×3 conv) + Sigmoid
  on the per-channel Sobel gradient ``∇F_f`` gives ``W_g`` (Eq. 4) and
  ``F̂_f = F_f + W_g ⊙ F_f`` (Eq. 5).
* **FD** — ``blocks`` Restormer blocks (2C channels), one feature-extraction layer
  (2C → C) and the reconstruction layer (3×3 conv → 1 channel, Tanh).

Choices where the paper is silent (all recorded in the checkpoint's ``config``):
width ``C = 32``, ``blocks = 2`` Restormer blocks per encoder/decoder, 4 heads, GDFN
expansion 2, LeakyReLU slope 0.2; a ReLU between the two linear layers of each
adapter (two linear maps with nothing between collapse into one); a Sigmoid on
the IRA/VIA outputs so they are weights in (0, 1); ``W`` starts at 0.5; the Tanh
output is mapped to [0, 1] as ``(tanh + 1) / 2``; VIE sees the visible luminance
(the paper feeds RGB: the toolchain fuses the Y channel and keeps the chroma),
while CLIP sees the RGB visible image when it is given (``vis_rgb``).

Loss (Eqs. 6–8): ``L_f = L_g + λ·L_i`` with ``λ = 0.2``,
``L_g = 1/HW ‖ |∇I_f| − max(|∇I_ir|, |∇I_vis|) ‖₁`` (Sobel) and
``L_i = 1/HW ‖ I_f − max(I_ir, I_vis) ‖₁``.

CLIP: a frozen open_clip image tower (:class:`stages.nets.clip.ClipImageEncoder`),
never trained, kept in eval mode; the embeddings come from ``fuse encode`` files
(``embedding`` in the record) when given, else are computed on the fly. A
checkpoint holds only the trainable weights; its metadata names the CLIP model
and pretrained tag it was trained with, and loading builds the same CLIP.

>>> model = MGFusion(dim=8, blocks=1, heads=2, embed_dim=16)
>>> ir, vis = torch.rand(2, 1, 33, 47), torch.rand(2, 1, 33, 47)
>>> model(ir, vis, clip_ir=torch.randn(2, 16), clip_vis=torch.randn(2, 16)).shape
torch.Size([2, 1, 33, 47])
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.checkpoint import CHECKPOINT_FORMAT, check_method, invalid, read_header, write_checkpoint
from stages.nets.clip import ClipImageEncoder, parse_pretrained, pretrained_label
from stages.nets.losses import sobel_magnitude, texture_loss_max
from stages.nets.restormer import RestormerBlock

METHOD = "mgfusion"
LOSS_WEIGHT = 0.2  # λ of Eq. 6


# --------------------------------------------------------------------------- MGFusion blocks


def _extract(in_ch: int, out_ch: int) -> nn.Sequential:
    """A feature-extraction layer: 3×3 conv (stride 1), BatchNorm, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2))


def _two_convs(channels: int) -> nn.Sequential:
    """SEP / SAWP: 3×3 conv, ReLU, 3×3 conv (stride 1)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=1))


class Adapter(nn.Module):
    """Two linear layers ``(B, E) → (B, C, 1, 1)`` (ReLU between)."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(embed_dim, channels), nn.Linear(channels, channels)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(e)))[:, :, None, None]


class FeatureEncoder(nn.Module):
    """IRE / VIE: two feature-extraction layers and ``blocks`` Restormer blocks, ``(B, 1, H, W) → (B, C, H, W)``."""

    def __init__(self, dim: int, blocks: int, heads: int, expansion: float, in_ch: int = 1):
        super().__init__()
        self.layers = nn.Sequential(_extract(in_ch, dim), _extract(dim, dim),
                                    *[RestormerBlock(dim, heads, expansion, fused=True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CII(nn.Module):
    """CLIP-driven information injection (Eqs. 1–2) into one modality's features."""

    def __init__(self, dim: int, embed_dim: int):
        super().__init__()
        self.mix = nn.Parameter(torch.full((embed_dim,), 0.5))  # W_i; W_v = 1 − W_i
        self.adapter = Adapter(embed_dim, dim)
        self.sep = _two_convs(dim)

    def forward(self, feat: torch.Tensor, clip_ir: torch.Tensor, clip_vis: torch.Tensor) -> torch.Tensor:
        semantic = self.adapter(clip_ir * self.mix + clip_vis * (1 - self.mix))  # (B, C, 1, 1)
        return feat + semantic * torch.sigmoid(self.sep(feat))


class CFF(nn.Module):
    """CLIP-guided feature fusion (Eqs. 3–5): ``(B, C, H, W)`` ×2 → ``(B, 2C, H, W)``."""

    def __init__(self, dim: int, embed_dim: int):
        super().__init__()
        self.ira, self.via = Adapter(embed_dim, dim), Adapter(embed_dim, dim)
        self.sawp = _two_convs(2 * dim)

    def forward(self, f_ir: torch.Tensor, f_vis: torch.Tensor, clip_ir: torch.Tensor,
                clip_vis: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([torch.sigmoid(self.ira(clip_ir)) * f_ir, torch.sigmoid(self.via(clip_vis)) * f_vis], dim=1)
        b, c, h, w = fused.shape
        gradient = sobel_magnitude(fused.reshape(b * c, 1, h, w)).reshape(b, c, h, w)
        return fused + torch.sigmoid(self.sawp(gradient)) * fused


class FusionDecoder(nn.Module):
    """FD: ``blocks`` Restormer blocks, a feature-extraction layer, 3×3 conv + Tanh → [0, 1]."""

    def __init__(self, dim: int, blocks: int, heads: int, expansion: float):
        super().__init__()
        self.blocks = nn.Sequential(*[RestormerBlock(2 * dim, heads, expansion, fused=True) for _ in range(blocks)])
        self.extract = _extract(2 * dim, dim)
        self.reconstruct = nn.Conv2d(dim, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.reconstruct(self.extract(self.blocks(x)))) + 1) / 2


class MGFusion(nn.Module):
    """The MGFusion network. ``forward(ir, vis, clip_ir=None, clip_vis=None, vis_rgb=None) -> fused``.

    Args:
        dim: feature width ``C``.
        blocks: Restormer blocks in each of IRE, VIE and FD.
        heads: attention heads (must divide ``dim``).
        expansion: GDFN expansion factor.
        embed_dim: CLIP embedding width ``E`` (taken from ``clip`` when given).
        clip: the frozen CLIP image tower, needed only when embeddings are not supplied.

    Shapes: ``ir``, ``vis`` ``(B, 1, H, W)`` in [0, 1], any ``H × W`` (the network
    never downsamples); ``clip_ir``, ``clip_vis`` ``(B, E)``; ``vis_rgb``
    ``(B, 3, H, W)`` (what CLIP sees of the visible image; default ``vis``);
    result ``(B, 1, H, W)`` in [0, 1].
    """

    multiple = 1

    def __init__(self, dim: int = 32, blocks: int = 2, heads: int = 4, expansion: float = 2.0,
                 embed_dim: int = 512, clip: ClipImageEncoder | None = None):
        super().__init__()
        if clip is not None:
            embed_dim = clip.embed_dim
        self.config = {"dim": dim, "blocks": blocks, "heads": heads, "expansion": expansion, "embed_dim": embed_dim}
        self.ire = FeatureEncoder(dim, blocks, heads, expansion)
        self.vie = FeatureEncoder(dim, blocks, heads, expansion)
        self.cii_ir, self.cii_vis = CII(dim, embed_dim), CII(dim, embed_dim)
        self.cff = CFF(dim, embed_dim)
        self.decoder = FusionDecoder(dim, blocks, heads, expansion)
        self.clip = clip

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight and buffer except the frozen CLIP's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("clip.")]

    def clip_embeddings(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP embeddings ``(B, E)`` of ``ir`` and ``vis`` (``(B, 1|3, H, W)`` in [0, 1])."""
        if self.clip is None:
            raise ValueError("MGFusion has no CLIP attached: pass clip_ir and clip_vis embeddings")
        return self.clip(ir), self.clip(vis)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, clip_ir: torch.Tensor | None = None,
                clip_vis: torch.Tensor | None = None, vis_rgb: torch.Tensor | None = None) -> torch.Tensor:
        if ir.ndim != 4 or ir.shape[1] != 1 or ir.shape != vis.shape:
            raise ValueError(f"expected ir and vis of the same shape (B, 1, H, W), got {tuple(ir.shape)} "
                             f"and {tuple(vis.shape)}")
        if clip_ir is None or clip_vis is None:
            computed_ir, computed_vis = self.clip_embeddings(ir, vis if vis_rgb is None else vis_rgb)
            clip_ir = computed_ir if clip_ir is None else clip_ir
            clip_vis = computed_vis if clip_vis is None else clip_vis
        clip_ir, clip_vis = clip_ir.to(ir.dtype), clip_vis.to(ir.dtype)
        f_ir, f_vis = self.ire(ir), self.vie(vis)
        f_ir = self.cii_ir(f_ir, clip_ir, clip_vis)
        f_vis = self.cii_vis(f_vis, clip_ir, clip_vis)
        return self.decoder(self.cff(f_ir, f_vis, clip_ir, clip_vis))


def mgfusion_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, weight: float = LOSS_WEIGHT) -> torch.Tensor:
    """Eq. 6: ``L_g + λ·L_i`` — max-gradient (Eq. 7, Sobel) plus ``λ`` times max-intensity (Eq. 8) L1 losses."""
    intensity = (fused - torch.maximum(ir, vis)).abs().mean()
    return texture_loss_max(fused, ir, vis) + weight * intensity


# --------------------------------------------------------------------------- checkpoints


def save_mgfusion(model: MGFusion, path: str | os.PathLike, clip_model: str, pretrained: str | None) -> Path:
    """Write the trainable weights as ``path`` (safetensors), atomically.

    Metadata: ``format``, ``method`` (``mgfusion``), ``config`` (JSON), ``clip_model``
    and ``clip_pretrained`` (``none`` for a random CLIP) — the CLIP the loader must use.
    """
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.trainable_state_dict().items()}
    metadata = {"format": CHECKPOINT_FORMAT, "method": METHOD, "config": json.dumps(model.config),
                "clip_model": clip_model, "clip_pretrained": pretrained_label(pretrained)}
    return write_checkpoint(tensors, metadata, path)


def checkpoint_clip(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(clip_model, pretrained)`` a checkpoint was trained with (``pretrained`` ``None`` = random CLIP)."""
    metadata = read_header(path, METHOD)[1]
    check_method(path, METHOD, metadata)
    if "clip_model" not in metadata:
        raise invalid(path, METHOD, "its metadata names no CLIP model (clip_model)")
    return metadata["clip_model"], parse_pretrained(metadata.get("clip_pretrained"))


