"""TeSG — Textual Semantic Guidance for infrared and visible image fusion (``tesg-textual-semantic-guidance``).

Forward pass (Sect. 3, Fig. 2), on luminance ``(B, 1, H, W)`` in [0, 1], a mask
``M`` ``(B, 1, H, W)`` in {0, 1} and text tokens ``F_t`` ``(B, L, D)``:

1. **Encoders** (one per modality, transformer blocks): the whole image gives the
   global features ``F_v``, ``F_i``; the same encoder on ``I ⊙ M`` and
   ``I ⊙ (1 − M)`` gives the foreground/background features ``F^m``, ``F^m̄``.
2. **MGCA** (Eqs. 4–6): cross-attention foreground with foreground and background
   with background, in both directions, summed:
   ``F_vi = CA(F_v^m, F_i^m) + CA(F_v^m̄, F_i^m̄)``, ``F_iv = CA(F_i^m, F_v^m) + CA(F_i^m̄, F_v^m̄)``.
3. **TDAF**: ``F_r = CA(Cat(F_vi, F_iv), F_t)`` (Eq. 7, image queries, text keys and
   values); gates ``G_v = σ(W_v (F_v + F_vi))``, ``G_i = σ(W_i (F_i + F_iv))`` (Eq. 8);
   spatial attention ``α = σ(Φ_SA(F_r))``, a two-layer conv MLP with ReLU (Eq. 9);
   ``F = α (1 + G_v)(F_v + F_vi) + (1 − α)(1 + G_i)(F_i + F_iv)`` (Eq. 10).
4. **Decoder** (transformer blocks) → conv → sigmoid.

Choices where the paper is silent or too heavy for a CPU:

* Transformer block = Restormer's block (:mod:`stages.nets.restormer`; LayerNorm over channels, multi-Dconv
  *transposed* head attention — attention across channels, linear in ``H·W`` —
  and a gated-Dconv feed-forward). The image↔image cross-attention of MGCA is the
  same transposed attention with queries from the first argument and keys/values
  from the second, so full-resolution images fit in memory. The image→text
  attention of TDAF is ordinary (pixel queries over the ``L`` text tokens).
* Width 16, 2 blocks per encoder and 2 in the decoder (the paper has 4 each),
  2 heads; about 60 K parameters.
* ``mask_guidance=False`` is the paper's ablation "w/o MGCA": no
  decomposition, the cross-attention on the whole images.
* Text tokens come from :mod:`stages.nets.text_features` (MiniLM, 384-d, by default),
  projected to the width by a linear layer.

Loss (:func:`tesg_loss`; TeSG's supplement is not available, so the usual
formulation of these four terms, e.g. SwinFusion/Text-IF, is used):
``L = λ_ssim·L_ssim + λ_grad·L_grad + λ_int·L_int + λ_col·L_col`` with

* ``L_ssim = ½[(1 − SSIM(f, ir)) + (1 − SSIM(f, vis))]`` (11×11 Gaussian window);
* ``L_grad = ‖ |∇f| − max(|∇ir|, |∇vis|) ‖₁`` (Sobel);
* ``L_int = ‖ f − max(ir, vis) ‖₁``, with the foreground of the mask pulled to the
  IR intensity instead (``M ⊙ |f − ir|``), since the masked targets are the warm ones;
* ``L_col`` = L1 of the fused and visible chroma (Cb, Cr). The networks here fuse
  the luminance and the stage keeps the visible chroma (YCbCr), so this term
  is identically zero and is not computed.
* ``λ_ssim = 1, λ_grad = 2, λ_int = 2`` (SwinFusion's 10 : 20 : 20).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from stages.nets.losses import texture_loss_max
from stages.nets.restormer import LayerNorm2d, RestormerBlock, TransposedAttention
from stages.nets.text_features import MINILM_DIM

LOSS_WEIGHTS = {"ssim": 1.0, "grad": 2.0, "int": 2.0}


class CrossAttention(nn.Module):
    """Image↔image cross-attention for MGCA: ``x + CA(LN(x), LN(y))`` (queries from x)."""

    def __init__(self, channels: int, heads: int = 2):
        super().__init__()
        self.norm_x, self.norm_y = LayerNorm2d(channels), LayerNorm2d(channels)
        self.attn = TransposedAttention(channels, heads)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm_x(x), self.norm_y(y))


class TextCrossAttention(nn.Module):
    """Pixels attend over text tokens (Eq. 7): ``(B, C, H, W)``, ``(B, L, D)`` → ``(B, C, H, W)``."""

    def __init__(self, channels: int, text_dim: int, heads: int = 2):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attn = nn.MultiheadAttention(channels, heads, kdim=text_dim, vdim=text_dim, batch_first=True)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)
        t = self.text_norm(text)
        out, _ = self.attn(q, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Encoder(nn.Module):
    """conv 3×3 embedding + transformer blocks: ``(B, 1, H, W)`` → ``(B, C, H, W)``."""

    def __init__(self, channels: int, blocks: int, heads: int):
        super().__init__()
        self.embed = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(RestormerBlock(channels, heads) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x))


class TeSG(nn.Module):
    """TeSG: ``forward(ir, vis, mask, text)`` → fused ``(B, 1, H, W)`` in [0, 1].

    Args:
        channels: feature width.
        encoder_blocks, decoder_blocks: transformer blocks per encoder / in the decoder.
        heads: attention heads.
        text_dim: width of the text tokens (384 for MiniLM, 512 for CLIP ViT-B-32).
        text_backend: the :mod:`stages.nets.text_features` backend the weights were trained with.
        mask_guidance: MGCA on mask-decomposed features (the paper); ``False`` is the
            "w/o MGCA" ablation (cross-attention on whole images; the mask is ignored).

    >>> net = TeSG().eval()
    >>> ir, vis = torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32)
    >>> net(ir, vis, mask=(ir > 0.5).float(), text=torch.randn(1, 8, 384)).shape
    torch.Size([1, 1, 24, 32])
    """

    multiple = 1

    def __init__(self, channels: int = 16, encoder_blocks: int = 2, decoder_blocks: int = 2, heads: int = 2,
                 text_dim: int = MINILM_DIM, text_backend: str = "minilm", mask_guidance: bool = True):
        super().__init__()
        self.config = {"channels": channels, "encoder_blocks": encoder_blocks, "decoder_blocks": decoder_blocks,
                       "heads": heads, "text_dim": text_dim, "text_backend": text_backend,
                       "mask_guidance": mask_guidance}
        self.mask_guidance = mask_guidance
        self.enc_vis = Encoder(channels, encoder_blocks, heads)
        self.enc_ir = Encoder(channels, encoder_blocks, heads)
        self.ca_vi_fg, self.ca_vi_bg = CrossAttention(channels, heads), CrossAttention(channels, heads)
        self.ca_iv_fg, self.ca_iv_bg = CrossAttention(channels, heads), CrossAttention(channels, heads)
        self.text_ca = TextCrossAttention(2 * channels, text_dim, heads)
        self.gate_v = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate_i = nn.Conv2d(channels, channels, 3, padding=1)
        self.spatial = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels, 1, 1))
        self.decoder = nn.Sequential(*(RestormerBlock(channels, heads) for _ in range(decoder_blocks)))
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def mgca(self, ir: torch.Tensor, vis: torch.Tensor, mask: torch.Tensor | None):
        """Encoders and MGCA: returns ``F_v, F_i, F_vi, F_iv``."""
        b = ir.shape[0]
        if self.mask_guidance:
            if mask is None:
                raise ValueError("TeSG with mask guidance needs a mask (B, 1, H, W)")
            fg, bg = mask, 1.0 - mask
            feats_v = self.enc_vis(torch.cat([vis, vis * fg, vis * bg]))
            feats_i = self.enc_ir(torch.cat([ir, ir * fg, ir * bg]))
            f_v, f_v_fg, f_v_bg = feats_v.split(b)
            f_i, f_i_fg, f_i_bg = feats_i.split(b)
            f_vi = self.ca_vi_fg(f_v_fg, f_i_fg) + self.ca_vi_bg(f_v_bg, f_i_bg)  # Eqs. 4, 6
            f_iv = self.ca_iv_fg(f_i_fg, f_v_fg) + self.ca_iv_bg(f_i_bg, f_v_bg)  # Eqs. 5, 6
        else:
            f_v, f_i = self.enc_vis(vis), self.enc_ir(ir)
            f_vi = self.ca_vi_fg(f_v, f_i)
            f_iv = self.ca_iv_fg(f_i, f_v)
        return f_v, f_i, f_vi, f_iv

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, mask: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> torch.Tensor:
        if text is None:
            raise ValueError("TeSG needs text tokens (B, L, D); see stages.nets.text_features")
        f_v, f_i, f_vi, f_iv = self.mgca(ir, vis, mask)
        f_r = self.text_ca(torch.cat([f_vi, f_iv], dim=1), text)  # Eq. 7
        g_v = torch.sigmoid(self.gate_v(f_v + f_vi))  # Eq. 8
        g_i = torch.sigmoid(self.gate_i(f_i + f_iv))
        alpha = torch.sigmoid(self.spatial(f_r))  # Eq. 9
        fused = alpha * (1 + g_v) * (f_v + f_vi) + (1 - alpha) * (1 + g_i) * (f_i + f_iv)  # Eq. 10
        return torch.sigmoid(self.head(self.decoder(fused)))


def _ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from kornia.losses import ssim_loss

    return 2.0 * ssim_loss(x, y, window_size=11)  # kornia returns (1 − SSIM) / 2


def tesg_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, mask: torch.Tensor | None = None,
              weights: dict | None = None) -> torch.Tensor:
    """The training loss (see the module docstring); inputs ``(B, 1, H, W)``, ``mask`` in {0, 1} or ``None``."""
    w = {**LOSS_WEIGHTS, **(weights or {})}
    l_ssim = 0.5 * (_ssim_loss(fused, ir) + _ssim_loss(fused, vis))
    l_grad = texture_loss_max(fused, ir, vis)
    target = torch.maximum(ir, vis)
    if mask is not None:
        target = mask * ir + (1 - mask) * target
    l_int = (fused - target).abs().mean()
    return w["ssim"] * l_ssim + w["grad"] * l_grad + w["int"] * l_int
