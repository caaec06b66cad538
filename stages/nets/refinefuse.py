"""RefineFuse: a multi-scale interaction network for infrared/visible fusion.

Follows the method section of *RefineFuse* (``shared/papers/refinefuse-multiscale.txt``):

* **Encoders** — one path per modality, four 3×3 convolutions (stride 1, 2, 2, 2),
  giving features at 1, 1/2, 1/4 and 1/8 of the input resolution.
* **SFIM** (levels 1 and 2) — spatial attention from channel-wise max and mean
  pooling of the concatenated modalities, a 3×3 conv + sigmoid giving one map
  per modality, ``F̂_m = F_m ⊕ F_m ⊗ A_m`` (Eq. 1); then per-channel grouped
  interaction: channel ``a`` of IR and channel ``a`` of VIS are put side by side
  and fused by a 3×3 grouped convolution (Eq. 2).
* **PSIM** (levels 3 and 4) — cross-attention: keys and values per modality from
  a 3×3 conv each, one query from a 3×3 conv of both modalities concatenated
  (Eq. 3); attention per modality (Eq. 4); the global features are upsampled
  bilinearly, added to the input features, concatenated and fused by a 3×3 conv.
* **Decoders** — decoders 4, 3 and 2 are a 1×1 conv, a 3×3 conv and a bilinear ×2
  upsampling; decoder 1 is four 3×3 convs, ReLU then Tanh.
* **FIM** (levels 2 and 1) — the deeper decoder output guides the shallow SFIM
  output: channel attention (global average pooling + sigmoid) from both the deep
  and the shallow features weights the shallow features, spatial attention from
  the deep features weights them again, and the deep features are added (Eq. 5).
* **Loss** — :func:`refinefuse_loss`: mask-based intensity loss + λ·texture loss, λ = 5 (Eq. 9).

Choices where the paper leaves details open (recorded here, and in every model card):

* Widths ``(16, 24, 32, 48)`` for levels 1–4 and 2 attention heads: about 0.2 M
  parameters, so it trains on a CPU and ships in well under 3 MB.
* Encoder and decoder activations are LeakyReLU(0.1) (decoder 1: ReLU, then Tanh
  as the paper says). No batch normalisation: fusion runs tile by tile and at any
  size, so no statistics should depend on the batch.
* Inside PSIM, attention runs on features average-pooled to 1/16 of the input
  resolution (level 3 pooled ×4, level 4 pooled ×2) — the paper downsamples before
  attention "to reduce computational cost" without a factor; this keeps the
  attention matrix at (HW/256)² (1200 tokens for 640×480). Hence the input's
  height and width must be multiples of :attr:`RefineFuse.multiple` = 16.
* Levels 3 and 4 meet in decoder 3 by concatenation of the upsampled decoder-4
  output with the level-3 PSIM output (both are "deep" features; FIM bridges deep
  to shallow at levels 2 and 1).
* The Tanh output ``t`` is mapped to intensities as ``(t + 1) / 2``.
* Salient targets for the intensity mask come from the IR image itself (see
  :func:`stages.nets.losses.salient_mask`) because the training sets carry no
  segmentation labels.

>>> import torch
>>> net = RefineFuse()
>>> net(torch.rand(1, 1, 64, 48), torch.rand(1, 1, 64, 48)).shape
torch.Size([1, 1, 64, 48])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.losses import intensity_masks, masked_intensity_loss, texture_loss_max

TEXTURE_WEIGHT = 5.0  # λ of Eq. 9
ATTENTION_SCALE = 16  # PSIM attends over tokens at 1/16 of the input resolution


def _conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1, inplace=True)


class Encoder(nn.Module):
    """One modality's path: four 3×3 convs (stride 1, 2, 2, 2).

    Input ``(B, 1, H, W)``; output a list of four features
    ``(B, C_i, H / 2^i, W / 2^i)`` for ``i = 0..3``.
    """

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        chans = (1, *widths)
        self.layers = nn.ModuleList(
            nn.Sequential(_conv(chans[i], chans[i + 1], stride=1 if i == 0 else 2), _act()) for i in range(4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class SFIM(nn.Module):
    """Superficial feature interaction: dual spatial attention, then per-channel grouped fusion.

    Inputs ``ir, vis``: ``(B, C, H, W)``; output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Sequential(_conv(2, 2), nn.Sigmoid())
        self.grouped_fusion = nn.Sequential(_conv(2 * channels, channels, groups=channels), _act())

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        channels = ir.shape[1]
        most = torch.maximum(ir.amax(dim=1, keepdim=True), vis.amax(dim=1, keepdim=True))
        mean = (ir.sum(dim=1, keepdim=True) + vis.sum(dim=1, keepdim=True)) / (2 * channels)
        maps = self.attention(torch.cat([most, mean], dim=1))  # (B, 2, H, W): one map per modality
        # x + x·m as x·(1 + m): one full-size tensor instead of two (5x faster on CPU, same up to rounding)
        ir = ir * (1.0 + maps[:, :1])
        vis = vis * (1.0 + maps[:, 1:])
        # Group a of the grouped convolution sees channel a of each modality (its weight (C, 2, k, k)
        # holds the ir and the vis kernel): two depthwise convolutions, 4x faster on CPU than
        # interleaving the channels into one (B, 2C, H, W) tensor for it.
        conv, act = self.grouped_fusion
        fused = F.conv2d(ir, conv.weight[:, :1], conv.bias, padding=conv.padding, groups=channels)
        return act(fused.add_(F.conv2d(vis, conv.weight[:, 1:], None, padding=conv.padding, groups=channels)))


class PSIM(nn.Module):
    """Profound semantic interaction: cross-attention with a query from both modalities.

    Inputs ``ir, vis``: ``(B, C, H, W)`` with ``H, W`` divisible by ``pool``;
    attention runs at ``(H / pool, W / pool)``. Output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, heads: int, pool: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"PSIM channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.pool = heads, pool
        self.query = _conv(2 * channels, channels)
        self.key_ir, self.value_ir = _conv(channels, channels), _conv(channels, channels)
        self.key_vis, self.value_vis = _conv(channels, channels), _conv(channels, channels)
        self.fuse = nn.Sequential(_conv(2 * channels, channels), _act())

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, heads, h·w, C / heads)``."""
        b, c, h, w = x.shape
        return x.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)

    def _global(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, size) -> torch.Tensor:
        b, c, h, w = key.shape
        context = F.scaled_dot_product_attention(self._tokens(query), self._tokens(key), self._tokens(value))
        context = context.transpose(2, 3).reshape(b, c, h, w)
        return F.interpolate(context, size=size, mode="bilinear", align_corners=False)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        size = ir.shape[-2:]
        ir_small = F.avg_pool2d(ir, self.pool) if self.pool > 1 else ir
        vis_small = F.avg_pool2d(vis, self.pool) if self.pool > 1 else vis
        query = self.query(torch.cat([ir_small, vis_small], dim=1))
        ir = ir + self._global(query, self.key_ir(ir_small), self.value_ir(ir_small), size)
        vis = vis + self._global(query, self.key_vis(vis_small), self.value_vis(vis_small), size)
        return self.fuse(torch.cat([ir, vis], dim=1))


class FIM(nn.Module):
    """Feature interaction between a deep (decoded) and a shallow (SFIM) feature.

    Inputs ``deep, shallow``: ``(B, C, H, W)`` (the decoder already upsampled and
    projected ``deep``); output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channel_from_deep = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv(channels, channels, 1), nn.Sigmoid())
        self.channel_from_shallow = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv(channels, channels, 1), nn.Sigmoid())
        self.spatial_from_deep = nn.Sequential(_conv(2, 1), nn.Sigmoid())

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        # shallow·a + shallow·b as shallow·(a + b) on the (B, C, 1, 1) weights, and e·s + deep in one
        # addcmul: fewer full-size temporaries (several times faster on CPU, same up to rounding)
        enhanced = shallow * (self.channel_from_deep(deep) + self.channel_from_shallow(shallow))
        pooled = torch.cat([deep.amax(dim=1, keepdim=True), deep.mean(dim=1, keepdim=True)], dim=1)
        return torch.addcmul(deep, enhanced, self.spatial_from_deep(pooled))


class UpDecoder(nn.Module):
    """Decoders 4, 3, 2: 1×1 conv, 3×3 conv, bilinear ×2. ``(B, C_in, h, w)`` → ``(B, C_out, 2h, 2w)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv(in_ch, out_ch, 1), _act(), _conv(out_ch, out_ch), _act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.body(x), scale_factor=2, mode="bilinear", align_corners=False)


class ImageDecoder(nn.Module):
    """Decoder 1: four 3×3 convs, ReLU between, Tanh last. ``(B, C, H, W)`` → ``(B, 1, H, W)`` in [0, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels), nn.ReLU(inplace=True),
            _conv(channels, channels), nn.ReLU(inplace=True),
            _conv(channels, channels // 2), nn.ReLU(inplace=True),
            _conv(channels // 2, 1), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.body(x) + 1.0) / 2.0


class RefineFuse(nn.Module):
    """The full network: ``forward(ir, vis)`` on ``(B, 1, H, W)`` → fused ``(B, 1, H, W)`` in [0, 1].

    ``H`` and ``W`` must be multiples of :attr:`multiple` (16); callers pad.

    Args:
        widths: feature channels at levels 1–4 (resolutions 1, 1/2, 1/4, 1/8).
        heads: attention heads in both PSIMs.
    """

    multiple = ATTENTION_SCALE

    def __init__(self, widths: tuple[int, int, int, int] = (16, 24, 32, 48), heads: int = 2):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.config = {"widths": list(widths), "heads": int(heads)}
        c1, c2, c3, c4 = widths
        self.encoder_ir = Encoder(widths)
        self.encoder_vis = Encoder(widths)
        self.sfim1, self.sfim2 = SFIM(c1), SFIM(c2)
        self.psim3 = PSIM(c3, heads, pool=ATTENTION_SCALE // 4)
        self.psim4 = PSIM(c4, heads, pool=ATTENTION_SCALE // 8)
        self.decoder4 = UpDecoder(c4, c3)
        self.decoder3 = UpDecoder(2 * c3, c2)
        self.fim2 = FIM(c2)
        self.decoder2 = UpDecoder(c2, c1)
        self.fim1 = FIM(c1)
        self.decoder1 = ImageDecoder(c1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        h, w = ir.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"RefineFuse needs H and W divisible by {self.multiple}, got {h}×{w}; pad the input")
        ir1, ir2, ir3, ir4 = self.encoder_ir(ir)
        vis1, vis2, vis3, vis4 = self.encoder_vis(vis)
        deep4 = self.decoder4(self.psim4(ir4, vis4))  # (B, c3, H/4, W/4)
        deep3 = self.decoder3(torch.cat([deep4, self.psim3(ir3, vis3)], dim=1))  # (B, c2, H/2, W/2)
        deep2 = self.decoder2(self.fim2(deep3, self.sfim2(ir2, vis2)))  # (B, c1, H, W)
        return self.decoder1(self.fim1(deep2, self.sfim1(ir1, vis1)))


def refinefuse_loss(
    fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, salient: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 9: ``L = L_int(mask) + λ · L_text`` with λ = 5.

    Args:
        fused, ir, vis: ``(B, 1, H, W)`` in [0, 1].
        salient: optional ``(B, 1, H, W)`` {0, 1} target mask; estimated from the IR when ``None``.

    Returns:
        Scalar loss.
    """
    mask_ir, mask_vis = intensity_masks(ir, vis, salient)
    return masked_intensity_loss(fused, ir, vis, mask_ir, mask_vis) + TEXTURE_WEIGHT * texture_loss_max(fused, ir, vis)
