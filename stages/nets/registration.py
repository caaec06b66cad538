"""The registration network of *Target-aware unregistered infrared and visible image fusion*.

Hu et al., Front. Phys. 13:1599968 (2025), sections 3.2–3.3 and Figure 3:

* four feature extractors: IR/VI common (CFE) and IR/VI specific (SFE) encoders;
* two Channel and Spatial Enhancement Blocks (CSEB, unshared parameters), one per
  modality, applied to the common features;
* a U-Net-like Multi-Scale Registration Block (MSRB) predicting a dense
  deformation field ``phi`` from the two enhanced common features;
* ``phi`` warps the deformed IR features (and, in :mod:`stages.registration`, the IR
  image) with ``grid_sample``.

What the paper leaves open, chosen here (and in the model card):

* Widths: every encoder has 8 channels and two conv-BN-LeakyReLU layers; the last
  layer of a specific encoder ends in Tanh instead, so the complementary loss
  ``l_s = -mean|F_i_hat - F_v_hat|`` is bounded (as written it is unbounded below).
* CSEB gates: the third spatial layer and the third channel layer end in a Sigmoid
  instead of LeakyReLU (the reconstruction head swaps its last activation the same
  way), so ``W^s`` and ``W^c`` are weights in (0, 1).
* Resolution: the network sees the pair resized to a fixed working size
  (``size``, H x W, multiples of 32: default 160 x 256, the shipped weights 192 x 320);
  the common features are average-pooled 2x before the CSEBs, so registration runs
  at half the working size.
  The field is smooth, so it is upsampled bilinearly to any image size; it is stored
  in normalised coordinates, which do not depend on the size.
* MSRB: a shared 5-level pyramid encoder (each level halves the size) applied to
  each enhanced feature (the two inputs of the U-Net), and a decoder that, coarse
  to fine, warps the IR skip features with the current field, correlates them with
  the VI skip features (radius 2, a PWC-Net-style cost volume — our addition) and
  adds a residual field. A last, finer level does the same on the enhanced
  features themselves, so the finest field is at half the working size (80 x 128 by
  default; one cell is about 4 px of a 544-wide image) and is upsampled bilinearly:
  the deformations are smooth. Every level's field is returned, so the registration
  loss can supervise each scale.

Inference (:meth:`RegistrationNet.estimate_grid`) is by default a test-time
ensemble: the network runs at three working sizes (5/6, 1 and 7/6 of the trained
size) on the pair and on its mirror image, and the six fields are averaged. The
single-pass estimate changes by pixels with the working size (its errors at the
three sizes are largely independent), so the average is far closer to the truth;
numbers in ``benchmarks/bench_register.py``'s docstring.

Field units: ``flows`` are displacements ``(dx, dy)`` in normalised units (the
image spans 2), so they do not depend on the size; :func:`flow_to_grid` adds the
identity to give the ``grid_sample`` grid of the dataset convention (normalised
[-1, 1], ``align_corners=False``): ``registered = grid_sample(moving, grid)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from stages.nets.checkpoint import invalid, load_checked, read_header
from stages.nets.losses import sobel_magnitude

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "register.safetensors"
DEFAULT_SIZE = (160, 256)
FEATURES = 8
PYRAMID = (16, 24, 32, 48, 64)
CORR_RADIUS = 2
FINE_WIDTH = 16
ENSEMBLE_SCALES = (5 / 6, 1.0, 7 / 6)


def conv_block(cin: int, cout: int, stride: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    """The paper's feature extraction layer: 3x3 conv, BatchNorm, LeakyReLU (or ``act``)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        act if act is not None else nn.LeakyReLU(0.2, inplace=True),
    )


class Encoder(nn.Sequential):
    """Common or specific feature extractor: ``(B, 1, H, W)`` → ``(B, C, H, W)``.

    Args:
        specific: end with Tanh (bounded specific features) instead of LeakyReLU.
    """

    def __init__(self, channels: int = FEATURES, specific: bool = False):
        super().__init__(conv_block(1, channels), conv_block(channels, channels, act=nn.Tanh() if specific else None))


class CSEB(nn.Module):
    """Channel and Spatial Enhancement Block, equations (3)–(4).

    ``F^s = W^s ⊙ F`` with ``W^s`` from three layers on ``F``; then
    ``F~ = W^c ⊙ F^s`` with ``W^c`` from three layers and global average pooling on
    ``F^s``. Shapes: ``(B, C, H, W)`` → ``(B, C, H, W)``.
    """

    def __init__(self, channels: int = FEATURES):
        super().__init__()
        self.spatial = nn.Sequential(
            conv_block(channels, channels), conv_block(channels, channels), conv_block(channels, channels, act=nn.Sigmoid())
        )
        self.channel = nn.Sequential(
            conv_block(channels, channels),
            conv_block(channels, channels),
            conv_block(channels, channels),
            nn.AdaptiveAvgPool2d(1),
            nn.Sigmoid(),
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial(feat) * feat
        return self.channel(spatial) * spatial


def flow_to_grid(disp: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Normalised displacement field → ``grid_sample`` grid.

    Args:
        disp: ``(B, 2, h, w)`` displacements ``(dx, dy)`` in normalised units (the
            image spans 2 in each direction).
        size: ``(H, W)`` of the grid to return; the field is resized bilinearly
            (``align_corners=False``) when it differs from ``(h, w)``.

    Returns:
        ``(B, H, W, 2)`` sampling positions ``(x, y)`` in [-1, 1], ``align_corners=False``.

    >>> flow_to_grid(torch.zeros(1, 2, 4, 6), (8, 12)).shape
    torch.Size([1, 8, 12, 2])
    """
    if size is not None and tuple(size) != tuple(disp.shape[-2:]):
        disp = F.interpolate(disp, size=tuple(size), mode="bilinear", align_corners=False)
    b, _, h, w = disp.shape
    return identity_grid(b, h, w, disp) + disp.permute(0, 2, 3, 1)


def to_pixels(disp: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised displacement ``(B, 2, h, w)`` → pixels of an ``(H, W)`` image."""
    return disp * disp.new_tensor([size[1] / 2.0, size[0] / 2.0]).view(1, 2, 1, 1)


def identity_grid(b: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 2)`` grid sampling every pixel at its own centre (``align_corners=False``)."""
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) * (2.0 / w) - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return grid.unsqueeze(0).expand(b, h, w, 2)


def warp(x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` ``(B, C, H, W)`` with a normalised displacement ``disp`` ``(B, 2, h, w)`` of any size.

    Outside the image the result is 0.
    """
    return F.grid_sample(x, flow_to_grid(disp, x.shape[-2:]), mode="bilinear", padding_mode="zeros", align_corners=False)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per image: ``(B, 1, h, w)`` → same (zeros for a 1 x 1 map)."""
    std = x.std((2, 3), keepdim=True) if x.shape[-2] * x.shape[-1] > 1 else torch.zeros_like(x)
    return (x - x.mean((2, 3), keepdim=True)) / (std + 1e-6)


def edge_pyramid(edges: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Edge map ``(B, 1, h, w)`` → ``levels`` maps at ``h / 2^(l+1)``, each standardised per image.

    Edge strength is the cue IR and VI share most; correlating these fixed maps gives
    the decoder a matching signal that does not have to be learned first.
    """
    out = []
    for _ in range(levels):
        edges = F.avg_pool2d(edges, 2, ceil_mode=True)
        out.append(standardise(edges))
    return out


def correlation(a: torch.Tensor, b: torch.Tensor, radius: int = CORR_RADIUS) -> torch.Tensor:
    """Local cost volume: ``(B, C, H, W)`` x2 → ``(B, (2r+1)^2, H, W)``, mean over channels."""
    h, w = a.shape[-2:]
    padded = F.pad(b, (radius, radius, radius, radius))
    costs = [
        (a * padded[:, :, dy : dy + h, dx : dx + w]).mean(1, keepdim=True)
        for dy in range(2 * radius + 1)
        for dx in range(2 * radius + 1)
    ]
    return F.leaky_relu(torch.cat(costs, 1), 0.1)


class MSRB(nn.Module):
    """Multi-Scale Registration Block: U-Net-like, coarse-to-fine residual fields.

    Input: the enhanced common features ``(B, C, h, w)`` of the moving (deformed IR)
    and fixed (VI) image, ``h, w`` multiples of 32. A shared pyramid encoder halves
    the size at every level (``h/2`` … ``h/32``); the decoder runs from the coarsest
    level to ``h/2``, then once more on the input features at ``h`` (``fine_decode``).
    Output: the fields of every decoder level, coarsest first,
    ``(B, 2, h / 2^l, w / 2^l)`` for ``l = 5 … 0``, normalised displacements.
    """

    def __init__(self, channels: int = FEATURES, widths: tuple[int, ...] = PYRAMID, radius: int = CORR_RADIUS):
        super().__init__()
        self.radius = radius
        cins = (channels,) + widths[:-1]
        self.down = nn.ModuleList(
            nn.Sequential(conv_block(cin, cout, stride=2), conv_block(cout, cout)) for cin, cout in zip(cins, widths)
        )
        ncorr = (2 * radius + 1) ** 2
        self.decode = nn.ModuleList()
        self.predict = nn.ModuleList()
        for level, width in enumerate(widths):
            coarser = widths[level + 1] if level + 1 < len(widths) else 0
            cin = 2 * width + 2 * ncorr + (coarser + 2 if coarser else 0)
            self.decode.append(nn.Sequential(conv_block(cin, width), conv_block(width, width)))
            self.predict.append(nn.Conv2d(width, 2, 3, 1, 1))
        cin = 2 * channels + 2 * ncorr + widths[0] + 2
        self.fine_decode = nn.Sequential(conv_block(cin, FINE_WIDTH), conv_block(FINE_WIDTH, FINE_WIDTH))
        self.fine_predict = nn.Conv2d(FINE_WIDTH, 2, 3, 1, 1)
        for head in (*self.predict, self.fine_predict):  # every level starts as "no correction"
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder: ``(B, C, h, w)`` → features at ``h / 2^(l+1)`` for each level ``l``."""
        feats = []
        for block in self.down:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, moving_edges: torch.Tensor, fixed_edges: torch.Tensor) -> list[torch.Tensor]:
        """Fields from features ``(B, C, h, w)`` and edge maps ``(B, 1, h, w)`` of the two images."""
        pm, pf = [moving, *self.pyramid(moving)], [fixed, *self.pyramid(fixed)]
        em = [standardise(moving_edges), *edge_pyramid(moving_edges, len(pm) - 1)]
        ef = [standardise(fixed_edges), *edge_pyramid(fixed_edges, len(pm) - 1)]
        decoders = [(self.fine_decode, self.fine_predict), *zip(self.decode, self.predict)]
        disps: list[torch.Tensor] = []
        disp = dec = None
        for level in reversed(range(len(pm))):
            m, f, e = pm[level], pf[level], em[level]
            size = m.shape[-2:]
            parts = []
            if disp is not None:
                disp = F.interpolate(disp, size=size, mode="bilinear", align_corners=False)
                m, e = warp(m, disp), warp(e, disp)
                dec = F.interpolate(dec, size=size, mode="bilinear", align_corners=False)
                parts = [dec, to_pixels(disp, size)]
            x = torch.cat([m, f, correlation(m, f, self.radius), correlation(e, ef[level], self.radius), *parts], 1)
            decode, predict = decoders[level]
            dec = decode(x)
            step = predict(dec) * dec.new_tensor([2.0 / size[1], 2.0 / size[0]]).view(1, 2, 1, 1)
            disp = step if disp is None else disp + step
            disps.append(disp)
        return disps


class RegistrationNet(nn.Module):
    """Encoders + CSEBs + MSRB: the registration part of the paper's joint network.

    Call :meth:`forward` on a pair at the working size ``(B, 1, H, W)`` (``H, W``
    multiples of 32, e.g. :attr:`size`); use :meth:`estimate_grid` for images of
    any size.

    >>> net = RegistrationNet().eval()
    >>> out = net(torch.rand(1, 1, 160, 256), torch.rand(1, 1, 160, 256))
    >>> out["flows"][-1].shape, out["grid"].shape
    (torch.Size([1, 2, 80, 128]), torch.Size([1, 160, 256, 2]))
    """

    def __init__(self, channels: int = FEATURES, size: tuple[int, int] = DEFAULT_SIZE):
        super().__init__()
        self.size = tuple(size)
        self.ir_common = Encoder(channels)
        self.vis_common = Encoder(channels)
        self.ir_specific = Encoder(channels, specific=True)
        self.vis_specific = Encoder(channels, specific=True)
        self.ir_cseb = CSEB(channels)
        self.vis_cseb = CSEB(channels)
        self.msrb = MSRB(channels)

    def register(self, ir_common: torch.Tensor, vis_common: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> list[torch.Tensor]:
        """Common features ``(B, C, H, W)`` → normalised fields, coarsest ``(H/64)`` first, finest ``(H/2)``."""
        moving = self.ir_cseb(F.avg_pool2d(ir_common, 2))
        fixed = self.vis_cseb(F.avg_pool2d(vis_common, 2))
        return self.msrb(moving, fixed, F.avg_pool2d(sobel_magnitude(ir), 2), F.avg_pool2d(sobel_magnitude(vis), 2))

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, specific: bool = False) -> dict[str, torch.Tensor | list]:
        """Register a deformed IR ``ir`` to ``vis``, both ``(B, 1, H, W)`` in [0, 1].

        Returns a dict with ``flows`` (list of ``(B, 2, H/2^(l+1), W/2^(l+1))`` for
        ``l = 5 … 0``, normalised displacements), ``grid`` ``(B, H, W, 2)``, the common
        features ``ir_common``/``vis_common`` ``(B, C, H, W)`` and, when ``specific``,
        ``ir_specific``/``vis_specific``.
        """
        out: dict = {"ir_common": self.ir_common(ir), "vis_common": self.vis_common(vis)}
        flows = self.register(out["ir_common"], out["vis_common"], ir, vis)
        out["flows"] = flows
        out["grid"] = flow_to_grid(flows[-1], ir.shape[-2:])
        if specific:
            out["ir_specific"] = self.ir_specific(ir)
            out["vis_specific"] = self.vis_specific(vis)
        return out

    @torch.no_grad()
    def estimate_field(self, ir: torch.Tensor, vis: torch.Tensor, ensemble: bool = True) -> torch.Tensor:
        """Normalised displacement ``(B, 2, H/2, W/2)`` (``H, W`` = :attr:`size`) bringing ``ir`` onto ``vis``.

        Args:
            ir, vis: ``(B, 1, h, w)`` in [0, 1], any size (resized to the working sizes).
            ensemble: average the fields at the :func:`ensemble_sizes` and of the
                mirrored pair (6 passes); ``False`` for one pass at :attr:`size`.
        """
        out_size = (self.size[0] // 2, self.size[1] // 2)
        mirror = ir.new_tensor([-1.0, 1.0]).view(1, 2, 1, 1)  # a mirrored field's dx changes sign
        fields = []
        for size in ensemble_sizes(self.size) if ensemble else [self.size]:
            small_ir, small_vis = resize(ir, size), resize(vis, size)
            if ensemble:
                small_ir, small_vis = torch.cat([small_ir, small_ir.flip(-1)]), torch.cat([small_vis, small_vis.flip(-1)])
            field = F.interpolate(self(small_ir, small_vis)["flows"][-1], size=out_size, mode="bilinear", align_corners=False)
            if ensemble:
                plain, mirrored = field.chunk(2)
                field = (plain + mirrored.flip(-1) * mirror) / 2
            fields.append(field)
        return torch.stack(fields).mean(0)

    def estimate_grid(self, ir: torch.Tensor, vis: torch.Tensor, ensemble: bool = True) -> torch.Tensor:
        """Sampling grid that brings ``ir`` onto ``vis``'s pixel grid, for any image size.

        Args:
            ir: ``(B, 1, H, W)`` moving image in [0, 1].
            vis: ``(B, 1, H, W)`` fixed image (luminance) in [0, 1].
            ensemble: see :meth:`estimate_field`.

        Returns:
            ``(B, H, W, 2)`` normalised grid, ``align_corners=False``;
            ``registered = grid_sample(ir, grid)``.
        """
        return flow_to_grid(self.estimate_field(ir, vis, ensemble), ir.shape[-2:])


def ensemble_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Working sizes of the test-time ensemble: ``size`` scaled by ``ENSEMBLE_SCALES``, nearest multiples of 32.

    >>> ensemble_sizes((192, 320))
    [(160, 256), (192, 320), (224, 384)]
    """
    return [tuple(max(32, round(n * scale / 32) * 32) for n in size) for scale in ENSEMBLE_SCALES]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(B, C, H, W)`` to ``size`` ``(h, w)``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def save_state(module: nn.Module, path: str | Path, channels: int, size: tuple[int, int]) -> None:
    """Write ``module``'s state dict as safetensors with its config in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"channels": str(channels), "size": f"{size[0]},{size[1]}"})


def state_config(path: str | Path, kind: str, meta: dict[str, str]) -> dict:
    """The constructor arguments :func:`save_state` recorded: ``{"channels", "size"}``; ``WeightsError`` if unreadable."""
    try:
        return {"channels": int(meta.get("channels", FEATURES)),
                "size": tuple(int(v) for v in meta.get("size", "160,256").split(","))}
    except ValueError:
        raise invalid(path, kind, f"metadata channels={meta.get('channels')!r} size={meta.get('size')!r}") from None


def load_state(path: str | Path, kind: str = "register") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_state`: ``(state_dict, {"channels", "size"})``, header checked first."""
    config = state_config(path, kind, read_header(path, kind)[1])
    return load_file(str(path)), config


def load_registration_net(weights: str | Path | None = None, device: str | torch.device = "cpu") -> RegistrationNet:
    """A :class:`RegistrationNet` in eval mode with ``weights`` (default: the packaged file), checked before loading."""
    path = Path(weights or WEIGHTS)
    net = load_checked(path, "register", lambda meta: RegistrationNet(**state_config(path, "register", meta)))
    return net.to(device).eval()
