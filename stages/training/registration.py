"""Train the registration network, then the ``tard`` fusion head, on aligned pairs.

The paper's recipe (Hu et al. 2025, section 4.1): aligned IR–VI pairs; each epoch a
fresh random mix of rigid and non-rigid deformations is applied to the IR, and the
network learns to undo it, supervised by the known field. Total loss (eq. 12,
without the detection term): ``l = l_c + l_s + 10 * l_reg + 5 * l_f``, Adam,
learning rate 1e-3, batch 8.

Departure: the paper trains all terms jointly. Here phase 1 trains the
registration path (common encoders, CSEBs, MSRB) with ``l_c + 10 l_reg`` and phase 2,
with the registration frozen, the specific encoders and the reconstruction head
with ``l_s + 5 l_f`` — a third of the cost of a joint step, which matters on a
shared CPU. (``l_s`` and ``l_f`` only reach the registration through the warp.)

Choices the paper leaves open (also written to the model card):

* ``l_reg`` (eq. 5) is the mean L1 error of the field in pixels of the registration
  grid (half the working size), averaged over all MSRB scales (labels area-pooled).
* Deformation of each view, as the *correction* field ``phi_gt`` the net must output
  (``aligned = grid_sample(deformed, phi_gt)``): a random affine map in normalised
  coordinates — rotation ±12° with an anisotropy factor in [1/2, 2] (a rotation in a
  randomly stretched frame), scale 0.95–1.05, translation ±0.12 per axis — plus a
  smooth field (Gaussian noise on a 4 x 6 lattice, bicubically upsampled, std up to
  0.02); 10 % of views are left undeformed. The deformed IR is
  ``grid_sample(ir, phi_gt^-1)`` with zero padding, ``phi_gt^-1`` found by fixed-point
  iteration.
* Views: a random crop (60–100 % of the width, aspect 0.5–0.75) of a pair (held at
  most 384 wide), random horizontal flip, random gamma per modality, resized to
  ``crop`` wide and ``crop * 5 / 8`` high (the working size stored in the weights).
* The fusion head sees a random half-size window of the fused features (a 4x
  cheaper step; the head is fully convolutional).
* ``l_s`` and ``l_c`` compare the aligned IR's features with the VI features.
* BatchNorm statistics are recomputed as plain averages over 64 fresh training-size
  batches before every export (:func:`recalibrate_phase_batchnorm`; with 12, the benchmark
  EPE of one set of weights moved between 5.0 and 6.7 px with the recalibration seed).
* The data (``campaigns/register_pairs.py`` selects it): RoadScene, LLVIP and ``msrs_extra``
  pairs (90 of its 120 are night scenes); RoadScene scenes that are also in
  ``unaligned/roadscene`` (the benchmark) are found by content and left out, and so are the
  8 ``msrs_extra`` pairs held out for validation (:data:`HELD_OUT`, the same as the fusion
  campaigns'). ``msrs_train128`` is not used: its frames are squashed to 128 x 128, a fifth
  of the working width.

Run it in the background:
``python campaigns/register_pairs.py | fuse train -m register --epochs 50 -o runs/register``.
"""
from __future__ import annotations

import base64
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.core.images import atomic_file, luminance, read_image
from stages.methods.specs import learned_method
from stages.nets.registration import identity_grid, resize, save_state, to_pixels
from stages.nets.tard import TardNet, fusion_loss
from stages.training.loop import load_optimizer, optimizer_path, recalibrate_batchnorm, save_optimizer, write_json

# Validation pairs, never trained on (campaigns/register_pairs.py leaves them out, and campaigns/msrs.sh
# holds out the same for the fusion networks); the model card names them.
HELD_OUT = tuple(f"msrs_extra/{i}" for i in ("00111D", "00504D", "00754N", "00874N", "00988N", "01102N", "01222N", "01335N"))
LAMBDA_REG, LAMBDA_FUSION = 10.0, 5.0
PRELOAD_WIDTH = 384
MAX_ROTATION_DEG, MAX_ANISOTROPY, SCALE_RANGE, MAX_TRANSLATION = 12.0, 2.0, 0.05, 0.12
ELASTIC_LATTICE, MAX_ELASTIC_STD, IDENTITY_FRACTION = (4, 6), 0.02, 0.1
INVERSE_ITERATIONS = 10
BN_BATCHES = 64
MIN_LR_FRACTION = 0.02
RECIPE = learned_method("register").recipe  # phase 1's epochs, batch size, lr, crop (stages.methods.specs)


def preload(pairs: list[dict]) -> list[torch.Tensor]:
    """Each pair as a ``(2, h, PRELOAD_WIDTH)`` tensor (IR, VIS luminance), at most that wide."""
    out = []
    for rec in pairs:
        ir, vis = (torch.from_numpy(luminance(read_image(rec[k]))) for k in ("ir", "vis"))
        if ir.shape != vis.shape:
            raise ValueError(f"pair {rec.get('id')}: IR {tuple(ir.shape)} and VIS {tuple(vis.shape)} differ in size")
        pair = torch.stack([ir, vis])[None]
        h, w = pair.shape[-2:]
        if w > PRELOAD_WIDTH:
            pair = resize(pair, (round(h * PRELOAD_WIDTH / w), PRELOAD_WIDTH))
        out.append(pair[0])
    return out


def _view(pair: torch.Tensor, size: tuple[int, int], rng: random.Random) -> torch.Tensor:
    """A random crop / flip / gamma view of a ``(2, h, w)`` pair, resized to ``size``."""
    h, w = pair.shape[-2:]
    aspect = rng.uniform(0.5, 0.75)
    cw = min(w, h / aspect) * rng.uniform(0.6, 1.0)
    ch = min(h, cw * aspect)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = pair[:, int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    crop = resize(crop[None], size)[0].clamp(0, 1)
    gamma = torch.tensor([math.exp(rng.uniform(-0.3, 0.3)) for _ in range(2)]).view(2, 1, 1)
    return crop.clamp_min(1e-6) ** gamma


def random_correction(b: int, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Random correction fields ``phi_gt`` ``(B, H, W, 2)`` (normalised, ``align_corners=False``).

    An affine map (rotation in a randomly stretched frame, scale, translation) plus a
    smooth elastic field; a fraction of the batch is the identity.
    """
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    theta = torch.deg2rad(uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    stretch = torch.exp(uniform(-math.log(MAX_ANISOTROPY), math.log(MAX_ANISOTROPY)))
    scale = uniform(1 - SCALE_RANGE, 1 + SCALE_RANGE)
    tx, ty = uniform(-MAX_TRANSLATION, MAX_TRANSLATION), uniform(-MAX_TRANSLATION, MAX_TRANSLATION)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    affine = torch.stack([torch.stack([cos, -sin * stretch, tx], 1), torch.stack([sin / stretch, cos, ty], 1)], 1)
    std = uniform(0, MAX_ELASTIC_STD).view(b, 1, 1, 1)
    elastic = torch.randn(b, 2, *ELASTIC_LATTICE, generator=gen) * std
    elastic = F.interpolate(elastic, size=size, mode="bicubic", align_corners=False)
    keep = (torch.rand(b, generator=gen) >= IDENTITY_FRACTION).float()
    ident = torch.eye(2, 3).expand(b, 2, 3)
    affine = ident + (affine - ident) * keep.view(b, 1, 1)
    elastic = elastic * keep.view(b, 1, 1, 1)
    grid = F.affine_grid(affine, [b, 1, *size], align_corners=False)
    return grid + elastic.permute(0, 2, 3, 1)


def invert_grid(grid: torch.Tensor, iterations: int = INVERSE_ITERATIONS) -> torch.Tensor:
    """Inverse of a smooth sampling grid ``(B, H, W, 2)`` by fixed-point iteration.

    Solves ``grid(inv(y)) = y``: with ``u = grid - id``, iterate ``x <- y - u(x)``.
    """
    b, h, w, _ = grid.shape
    ident = identity_grid(b, h, w, grid)
    disp = (grid - ident).permute(0, 3, 1, 2)
    inv = ident - (grid - ident)
    for _ in range(iterations):
        u = F.grid_sample(disp, inv, mode="bilinear", padding_mode="border", align_corners=False)
        inv = ident - u.permute(0, 2, 3, 1)
    return inv


def grid_to_disp(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grid ``(B, H, W, 2)`` → normalised displacement ``(B, 2, h, w)`` area-pooled to ``size``."""
    b, h, w, _ = grid.shape
    return F.adaptive_avg_pool2d((grid - identity_grid(b, h, w, grid)).permute(0, 3, 1, 2), size)


def make_batch(pairs: list[torch.Tensor], idx: list[int], size: tuple[int, int], rng: random.Random, gen: torch.Generator):
    """Views ``(B, 1, H, W)`` ``ir``, ``vis``, ``ir_deformed`` and the correction ``phi_gt`` ``(B, H, W, 2)``."""
    views = torch.stack([_view(pairs[i], size, rng) for i in idx])
    ir, vis = views[:, :1], views[:, 1:]
    phi = random_correction(len(idx), size, gen)
    deformed = F.grid_sample(ir, invert_grid(phi), mode="bilinear", padding_mode="zeros", align_corners=False)
    return ir, vis, deformed, phi


def registration_losses(net: TardNet, ir, vis, deformed, phi) -> dict[str, torch.Tensor]:
    """Phase 1 terms: ``total = l_c + 10 l_reg`` (plus ``epe_px``, in working-view pixels)."""
    reg = net.registration
    out = reg(deformed, vis)
    size = ir.shape[-2:]
    reg_grid = (size[0] // 2, size[1] // 2)
    errors = [to_pixels(d - grid_to_disp(phi, d.shape[-2:]), reg_grid) for d in out["flows"]]
    l_reg = torch.stack([e.abs().mean() for e in errors]).mean()
    l_c = (reg.ir_common(ir) - out["vis_common"]).abs().mean()
    epe = (to_pixels(out["flows"][-1] - grid_to_disp(phi, out["flows"][-1].shape[-2:]), size)).norm(dim=1).mean()
    return {"total": l_c + LAMBDA_REG * l_reg, "reg": l_reg, "c": l_c, "epe_px": epe.detach()}


def fusion_losses(net: TardNet, ir, vis, deformed, phi, rng: random.Random) -> dict[str, torch.Tensor]:
    """Phase 2 terms, registration frozen: ``total = l_s + 5 l_f`` on a random half-size window."""
    reg = net.registration
    with torch.no_grad():
        out = reg(deformed, vis)
    h, w = ir.shape[-2:]
    y0, x0 = rng.randrange(h - h // 2 + 1), rng.randrange(w - w // 2 + 1)
    win = (slice(None), slice(None), slice(y0, y0 + h // 2), slice(x0, x0 + w // 2))
    feats = {"ir_common": out["ir_common"], "ir_specific": reg.ir_specific(deformed),
             "vis_common": out["vis_common"], "vis_specific": reg.vis_specific(vis)}
    fused = net.reconstruct(net.fused_features(feats, out["flows"][-1])[win])
    fl = fusion_loss(fused, ir[win], vis[win])
    l_s = -(reg.ir_specific(ir[win]) - feats["vis_specific"][win]).abs().mean()
    return {"total": l_s + LAMBDA_FUSION * fl["fusion"], "s": l_s, "fusion": fl["fusion"],
            "luminance": fl["luminance"].detach(), "gradient": fl["gradient"].detach()}


def _phase(net: TardNet, fusion: bool, lr: float, total_steps: int, done_steps: int = 0, state: Path | None = None):
    """Optimizer and cosine schedule (to 2 % of ``lr``) of a phase; sets which parameters train.

    The schedule is a closed form of the step, so a resumed run with more epochs
    continues on the longer schedule; ``state`` (a ``tard.optim.safetensors``) restores Adam's moments.
    """
    reg = net.registration
    if fusion:
        params = [*net.head.parameters(), *reg.ir_specific.parameters(), *reg.vis_specific.parameters()]
    else:
        params = [p for n, p in reg.named_parameters() if "specific" not in n]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    if state is not None:
        load_optimizer(opt, state)
    for group in opt.param_groups:
        group["initial_lr"] = lr
    total = max(1, total_steps)

    def cosine(step: int) -> float:
        return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine, last_epoch=done_steps - 1)


def _set_modes(net: TardNet, fusion: bool) -> None:
    """Train mode for the modules of the phase, eval mode (frozen BatchNorm) for the rest."""
    net.eval()
    reg = net.registration
    train = [net.head, reg.ir_specific, reg.vis_specific] if fusion else [
        reg.ir_common, reg.vis_common, reg.ir_cseb, reg.vis_cseb, reg.msrb]
    for module in train:
        module.train()


def recalibrate_phase_batchnorm(net: TardNet, data: list[torch.Tensor], size, fusion: bool, seed: int,
                          batches: int = BN_BATCHES, batch_size: int = 8) -> None:
    """Re-estimate the BatchNorm statistics of the phase's modules over ``batches`` fresh batches, in place
    (:func:`stages.training.loop.recalibrate_batchnorm`; fixed seed)."""
    _set_modes(net, fusion)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device

    def run_batch() -> None:
        idx = [rng.randrange(len(data)) for _ in range(batch_size)]
        batch = [t.to(device) for t in make_batch(data, idx, size, rng, gen)]
        fusion_losses(net, *batch, rng) if fusion else registration_losses(net, *batch)

    recalibrate_batchnorm([m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training],
                          run_batch, batches)


def train_register(
    pairs: list[dict],
    out: str | Path,
    *,
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    seed: int = 0,
    device: str = "cpu",
    crop: int = RECIPE["crop"],
    resume: str | Path | None = None,
    progress: bool = True,
    log=print,
    fusion_epochs: int = 2,
    init: str | Path | None = None,
) -> Path:
    """Train the registration network, then (``fusion_epochs`` > 0) the ``tard`` fusion head.

    Phase 1 (``epochs``): common encoders, CSEBs and MSRB with ``l_c + 10 l_reg``.
    Phase 2 (``fusion_epochs``, 0 to skip): registration frozen; specific encoders and the
    reconstruction head with ``l_s + 5 l_f``. (The paper trains everything jointly;
    on a shared CPU the two phases cost a third of one joint step.)

    Args:
        pairs: records with ``ir`` and ``vis`` paths of *aligned* pairs.
        out: folder for ``register.safetensors`` (registration net), ``tard.safetensors``
            (joint net), ``tard.optim.safetensors`` (Adam state) and ``register.json`` (model
            card, with the epoch and random streams a resumed run continues from); all
            rewritten after every epoch, the card last.
        epochs: passes over ``pairs`` (a new random deformation of each view every time).
        crop: working width in pixels; views are ``crop * 5 / 8`` x ``crop`` (multiples of 32).
        init: a ``tard.safetensors`` to start from (fine-tuning: a fresh optimiser and
            schedule; the model card records the file).
        resume: a ``tard.safetensors`` written by this function (its card and Adam state
            beside it) to continue from; ``epochs`` and ``fusion_epochs``
            count the totals and may be larger than in the first run (the cosine
            schedule then follows the longer run from where it is).
        progress: a tqdm bar on stderr; ``log`` receives one JSON line per epoch.

    Returns:
        The path of ``register.safetensors``.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = (crop * 5 // 8 // 32 * 32, crop // 32 * 32)
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    net = TardNet(size=size).to(device)
    if init and not resume:
        load_init(net, init, log)
    steps = max(1, len(pairs) // batch_size)
    history, start, seconds = [], 0, 0.0
    ckpt = load_checkpoint(resume, device) if resume else None
    if ckpt:
        net.load_state_dict(ckpt["model"])
        history, start, seconds = ckpt["history"], ckpt["epoch"], ckpt["seconds"]
        init = init or ckpt.get("init")
        rng.setstate(ckpt["rng"])
        gen.set_state(ckpt["gen"])
    data = preload(pairs)
    opt = sched = None
    for epoch in range(start, epochs + fusion_epochs):
        fusion = epoch >= epochs
        if opt is None or epoch == epochs:
            same_phase = ckpt is not None and ckpt["epoch"] == epoch and (history[-1]["phase"] == "fusion") == fusion
            opt, sched = _phase(net, fusion, lr, steps * (fusion_epochs if fusion else epochs),
                                done_steps=steps * (epoch - (epochs if fusion else 0)),
                                state=ckpt["optimizer"] if same_phase else None)
        t0 = time.time()
        _set_modes(net, fusion)
        order = list(range(len(data)))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        phase = "fusion" if fusion else "registration"
        bar = tqdm(range(steps), desc=f"{phase} epoch {epoch + 1}", disable=not progress, leave=False)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = [t.to(device) for t in make_batch(data, idx, size, rng, gen)]
            losses = fusion_losses(net, *batch, rng) if fusion else registration_losses(net, *batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 10.0)
            opt.step()
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if not fusion:
                bar.set_postfix(epe=f"{float(losses['epe_px']):.2f}")
        recalibrate_phase_batchnorm(net, data, size, fusion, seed=seed + 7919 * (epoch + 1), batch_size=batch_size)
        seconds += time.time() - t0
        row = {"epoch": epoch + 1, "phase": phase, "seconds": round(seconds, 1), **{k: round(v / steps, 4) for k, v in sums.items()}}
        history.append(row)
        log(json.dumps(row))
        save_optimizer(opt, optimizer_path(out / "tard.safetensors"))
        resume_state = {"epoch": epoch + 1, "seconds": seconds, "rng": rng.getstate(),
                        "generator": base64.b64encode(gen.get_state().numpy().tobytes()).decode()}
        _export(net, out, size, pairs, history, seconds, epochs=min(epoch + 1, epochs), fusion_epochs=max(0, epoch + 1 - epochs),
                batch_size=batch_size, lr=lr, seed=seed, crop=crop, **({"init": Path(init).name} if init else {}),
                resume=resume_state)
    return out / "register.safetensors"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The training state :func:`train_register` wrote with ``path`` (its ``tard.safetensors``), checked.

    Weights and Adam state are safetensors and the rest is the JSON model card beside them, so
    nothing is unpickled. Returns ``model`` (state dict), ``optimizer`` (the Adam state file, or
    ``None``), ``history``, ``epoch``, ``seconds``, ``rng``, ``gen`` and ``init``; a file that is not
    such a checkpoint raises :class:`~stages.nets.checkpoint.WeightsError`.
    """
    from stages.nets.checkpoint import invalid
    from stages.nets.registration import load_state

    path, kind = Path(path), "register training"
    state = {k: v.to(device) for k, v in load_state(path, kind)[0].items()}
    card_path = path.with_name("register.json")
    try:
        card = json.loads(card_path.read_text())
        resume = card["resume"]
        version, internal, gauss = resume["rng"]
        rng = (version, tuple(internal), gauss)
        gen = torch.frombuffer(bytearray(base64.b64decode(resume["generator"])), dtype=torch.uint8)
        found = {"history": card["history"], "epoch": int(resume["epoch"]), "seconds": float(resume["seconds"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise invalid(path, kind, f"{card_path.name} beside it is not the model card of a fuse train -m register run "
                                  f"({type(exc).__name__}: {exc})") from None
    optimizer = optimizer_path(path)
    return {"model": state, "optimizer": optimizer if optimizer.is_file() else None, **found, "rng": rng, "gen": gen,
            "init": card.get("init")}


def load_init(net: TardNet, init: str | Path, log=print) -> None:
    """Start ``net`` from the weights of a ``tard.safetensors``, or of a ``register.safetensors``
    (the registration network alone: the fusion head keeps its initialisation).

    Modules the file lacks (a level added to the network since) keep their
    initialisation, which for a field head is "no correction", so the network starts
    as the one in the file; they are named through ``log``. A weight the network does
    not have is an error.
    """
    from stages.nets.registration import load_state

    state = load_state(init)[0]
    if not any(key.startswith(("registration.", "head.")) for key in state):
        state = {f"registration.{key}": value for key, value in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{init}: weights this network does not have: {', '.join(unexpected)}")
    if missing:
        log(f"{init}: new modules start from their initialisation: {', '.join(new_modules(missing, state))}")


def new_modules(missing: list[str], loaded) -> list[str]:
    """The shortest name prefixes of ``missing`` keys that no ``loaded`` key shares.

    >>> new_modules(["a.fine.0.weight", "a.fine.1.bias"], ["a.coarse.0.weight"])
    ['a.fine']
    """
    names = set()
    for key in missing:
        parts = key.split(".")
        prefix = next(".".join(parts[:n]) for n in range(1, len(parts) + 1)
                      if not any(k.startswith(".".join(parts[:n]) + ".") for k in loaded))
        names.add(prefix)
    return sorted(names)


def _export(net: TardNet, out: Path, size, pairs, history, seconds, **settings) -> None:
    """Write the weights and the model card (after every epoch, so a stopped run still ships)."""
    channels = net.registration.ir_common[0][0].out_channels
    with atomic_file(out / "register.safetensors") as tmp:
        save_state(net.registration, tmp, channels, size)
    with atomic_file(out / "tard.safetensors") as tmp:
        save_state(net, tmp, channels, size)
    sets = sorted({Path(r["ir"]).parent.parent.name for r in pairs})  # <set>/ir/<id>.<ext>
    card = {
        "model": "registration network of 'Target-aware unregistered infrared and visible image fusion' "
        "(Hu et al., Front. Phys. 2025) + its fusion reconstruction head (tard)",
        "files": {"register.safetensors": "RegistrationNet", "tard.safetensors": "TardNet (registration + fusion head)"},
        "parameters": {"registration": sum(p.numel() for p in net.registration.parameters()),
                       "fusion_head": sum(p.numel() for p in net.head.parameters())},
        "working_size_hw": list(size),
        "pairs_held_at_most_px_wide": PRELOAD_WIDTH,
        "data": {"sets": sets, "pairs": len(pairs),
                 "excluded": "RoadScene scenes of unaligned/roadscene (benchmark) and the validation pairs "
                             f"{', '.join(HELD_OUT)}; msrs, tno and all evaluation sets unused"},
        "deformation": {"rotation_deg": MAX_ROTATION_DEG, "anisotropy": MAX_ANISOTROPY, "scale": [1 - SCALE_RANGE, 1 + SCALE_RANGE],
                        "translation_normalised": MAX_TRANSLATION, "elastic_lattice": list(ELASTIC_LATTICE),
                        "elastic_std_normalised": MAX_ELASTIC_STD, "identity_fraction": IDENTITY_FRACTION},
        "loss": {"registration_phase": "l_c + 10 l_reg", "fusion_phase": "l_s + 5 l_f, registration frozen", "gamma": 2.0,
                 "l_reg": "mean L1 of the field in pixels of the registration grid (half the working size), all scales",
                 "not_used": "detection loss l_ob (no detector)"},
        "optimizer": "Adam per phase, cosine decay to 2% of lr, grad-norm clip 10",
        **settings,
        "seconds": round(seconds, 1),
        "device": str(next(net.parameters()).device),
        "history": history,
    }
    write_json(card, out / "register.json")
