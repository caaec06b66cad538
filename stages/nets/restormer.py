"""Restormer's transformer block (Zamir et al., CVPR 2022), shared by TeSG and MGFusion.

A block maps ``(B, C, H, W)`` to the same shape: ``x + MDTA(LN(x))``, then
``x + GDFN(LN(x))``. MDTA is multi-Dconv head *transposed* attention (attention
across channels, linear in ``H·W``; :func:`transposed_attention`); GDFN is the
gated-Dconv feed-forward network (``GELU(a) ⊙ b``).

Two parameter layouts, each the one its network's weights were saved with, so
their state-dict keys and numbers stay as they were (``fused``):

* ``fused=True`` — Restormer's own, used by MGFusion: one ``qkv`` projection,
  no biases, Restormer's LayerNorm (``weight``, ``bias``).
* ``fused=False`` — TeSG's: separate ``q`` and ``kv`` projections, so the
  attention can take keys and values from another image (``attn(x, y)``,
  MGCA's cross-attention), biases, torch's :class:`~torch.nn.LayerNorm` (``norm``).

>>> block = RestormerBlock(8, heads=2)
>>> block(torch.rand(2, 8, 5, 7)).shape
torch.Size([2, 8, 5, 7])
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def transposed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         temperature: torch.Tensor) -> torch.Tensor:
    """Channel attention: ``q``, ``k``, ``v`` ``(B, C, H, W)``, ``temperature`` ``(heads, 1, 1)`` → ``(B, C, H, W)``."""
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)
    return (attn @ v).reshape(b, c, h, w)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``(B, C, H, W)``; ``fused`` selects the layout (see the module)."""

    def __init__(self, channels: int, fused: bool = False):
        super().__init__()
        self.fused = fused
        if fused:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight[:, None, None] + self.bias[:, None, None]


class TransposedAttention(nn.Module):
    """MDTA: ``forward(x, y=None)`` with queries from ``x`` and keys/values from ``y`` (default ``x``).

    ``(B, C, H, W)`` → ``(B, C, H, W)``; cross-attention (``y`` given) needs ``fused=False``.
    """

    def __init__(self, channels: int, heads: int = 2, fused: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"width {channels} must be divisible by the number of heads {heads}")
        self.heads, self.fused = heads, fused
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        if fused:
            self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
            self.qkv_dw = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=False)
            self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        else:
            self.q = nn.Sequential(nn.Conv2d(channels, channels, 1),
                                   nn.Conv2d(channels, channels, 3, padding=1, groups=channels))
            self.kv = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1),
                                    nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels))
            self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused:
            if y is not None:
                raise ValueError("the fused (qkv) layout has no cross-attention")
            q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
            return self.proj(transposed_attention(q, k, v, self.heads, self.temperature))
        k, v = self.kv(x if y is None else y).chunk(2, dim=1)
        return self.out(transposed_attention(self.q(x), k, v, self.heads, self.temperature))


class GatedFeedForward(nn.Module):
    """GDFN: 1×1 conv to ``2·expansion·C``, 3×3 depthwise conv, ``GELU(a) ⊙ b``, 1×1 conv back; shape kept."""

    def __init__(self, channels: int, expansion: float = 2.0, fused: bool = False):
        super().__init__()
        hidden = int(channels * expansion)
        inp = nn.Conv2d(channels, 2 * hidden, 1, bias=not fused)
        dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=not fused)
        out = nn.Conv2d(hidden, channels, 1, bias=not fused)
        if fused:
            self.project_in, self.dwconv, self.project_out = inp, dw, out
        else:
            self.inp, self.dw, self.out = inp, dw, out
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, dw, out = (self.project_in, self.dwconv, self.project_out) if self.fused else (self.inp, self.dw, self.out)
        a, b = dw(inp(x)).chunk(2, dim=1)
        return out(F.gelu(a) * b)


class RestormerBlock(nn.Module):
    """``x + Attn(LN(x))``, then ``x + FFN(LN(x))``: ``(B, C, H, W)`` → same."""

    def __init__(self, channels: int, heads: int = 2, expansion: float = 2.0, fused: bool = False):
        super().__init__()
        self.norm1, self.attn = LayerNorm2d(channels, fused), TransposedAttention(channels, heads, fused)
        self.norm2, self.ffn = LayerNorm2d(channels, fused), GatedFeedForward(channels, expansion, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))
