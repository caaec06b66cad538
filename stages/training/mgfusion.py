"""Training of MGFusion (:mod:`stages.nets.mgfusion`) with the paper's recipe (Sect. 4.1–4.2).

* Data: random ``crop × crop`` patches (256 in the paper), random horizontal and
  vertical flips and quarter-turn rotations, the same for both modalities; one
  patch per training pair per epoch. The network sees the IR luminance and the
  visible BT.601 luminance; the frozen CLIP sees the IR patch (gray → RGB) and
  the visible patch in colour when the file is RGB. Pairs are held in memory
  as 8-bit (16-bit radiometric IR is quantised to 8 bits for training).
* Optimiser: Adam, batch 16, 100 epochs. Learning rate: rises linearly from
  ``lr / 10`` (1e-4) to ``lr`` (1e-3) over the first 20 % of the epochs (20 of
  100), then falls linearly back to ``lr / 10`` at the end; updated every step.
* Loss: :func:`stages.nets.mgfusion.mgfusion_loss` (``L_g + 0.2·L_i``).
* CLIP: built once from ``clip_model`` / ``pretrained``, frozen
  (``requires_grad=False``, always in eval mode), not in the optimiser and not
  in the checkpoint.

After every epoch it writes, atomically, into ``out``:

* ``mgfusion.safetensors`` — the trainable weights; the metadata names the
  CLIP model and pretrained tag (``fuse fuse -m mgfusion --weights ...`` loads the same CLIP);
* ``mgfusion.optim.safetensors`` — the optimiser state, for ``resume``;
* ``mgfusion.json`` — the model card: data, hyper-parameters, CLIP, per-epoch
  loss, seconds trained, library versions.

On CPU a run is deterministic for a given ``seed``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from stages.core.images import LUMA_WEIGHTS, read_image, to_uint8
from stages.nets.clip import ClipImageEncoder, parse_pretrained, pretrained_label
from stages.nets.mgfusion import LOSS_WEIGHT, METHOD, MGFusion, mgfusion_loss, save_mgfusion
from stages.methods.mgfusion import load_mgfusion
from stages.methods.specs import learned_method

DEFAULTS = learned_method(METHOD).recipe  # the paper's, with the CLIP (stages.methods.specs)
WARMUP_FRACTION = 0.2  # 20 of 100 epochs
START_FRACTION = 0.1  # 1e-4 → 1e-3 → 1e-4

Pair = tuple[str | os.PathLike, str | os.PathLike]


def lr_at(progress: float, epochs: int, lr: float) -> float:
    """Learning rate after ``progress`` epochs (fractional): linear warm-up to ``lr``, then linear decay.

    >>> [round(lr_at(e, 100, 1e-3), 6) for e in (0, 10, 20, 60, 100)]
    [0.0001, 0.00055, 0.001, 0.00055, 0.0001]
    """
    low = lr * START_FRACTION
    warm = WARMUP_FRACTION * epochs
    if progress < warm:
        return low + (lr - low) * progress / warm
    return lr - (lr - low) * min(1.0, (progress - warm) / max(epochs - warm, 1e-9))


def load_training_pair(ir_path: str | os.PathLike, vis_path: str | os.PathLike) -> np.ndarray:
    """A pair as one ``(4, H, W)`` uint8 array: IR luminance, visible R, G, B (gray visible repeated).

    Kept as 8-bit so that a training set of hundreds of megapixel pairs fits in memory.
    """
    ir = read_image(ir_path)
    vis = read_image(vis_path)
    if ir.ndim == 3:
        ir = ir @ LUMA_WEIGHTS
    if vis.ndim == 2:
        vis = np.repeat(vis[..., None], 3, axis=-1)
    if ir.shape != vis.shape[:2]:
        raise ValueError(f"pair {Path(ir_path).stem}: IR is {ir.shape[1]}×{ir.shape[0]} but VIS is "
                         f"{vis.shape[1]}×{vis.shape[0]}")
    return to_uint8(np.concatenate([ir[None], np.moveaxis(vis, -1, 0)]))


def split_patch(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 4, h, w)`` → IR ``(B, 1, h, w)``, visible luminance ``(B, 1, h, w)``, visible RGB ``(B, 3, h, w)``."""
    weights = torch.as_tensor(LUMA_WEIGHTS, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    rgb = batch[:, 1:]
    return batch[:, :1], (rgb * weights).sum(1, keepdim=True), rgb


def train_mgfusion(pairs: Sequence[Pair], out: str | os.PathLike, *, epochs: int = DEFAULTS["epochs"],
                   batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = 0,
                   device: str | torch.device = "cpu", crop: int = DEFAULTS["crop"],
                   clip_model: str = DEFAULTS["clip_model"], pretrained: str | None = DEFAULTS["pretrained"],
                   resume: str | os.PathLike | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, config: dict | None = None,
                   max_steps: int | None = None) -> Path:
    """Train MGFusion on ``pairs`` (``(ir_path, vis_path)``); returns ``out/mgfusion.safetensors``.

    Args:
        epochs: total epochs; a resumed run continues until this many are done.
        lr: the peak learning rate (reached after the warm-up); starts and ends at ``lr / 10``.
        clip_model, pretrained: the frozen CLIP (open_clip name; tag, local file, or
            ``None``/``"none"`` for a random CLIP — tests only). A resumed run uses the checkpoint's.
        resume: a checkpoint written by this function (``.json`` card and
            ``.optim.safetensors`` beside it) to continue from.
        config: MGFusion constructor arguments (``dim``, ``blocks``, ``heads``,
            ``expansion``); the defaults of :class:`MGFusion` otherwise.
        max_steps: stop each epoch after this many steps (smoke tests).
        progress: a tqdm bar with the running loss on stderr.
        log: called with one line per epoch.
    """
    from stages.training.loop import _dataset_counts, load_optimizer, optimizer_path, _versions, random_crop_batch, run_epochs

    if not pairs:
        raise ValueError("no training pairs given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = parse_pretrained(pretrained)
    torch.manual_seed(seed)
    images = [load_training_pair(ir, vis) for ir, vis in pairs]

    if resume is not None:
        resume = Path(resume)
        model = load_mgfusion(resume, device)
        clip_model, pretrained = model.clip.model_name, model.clip.pretrained
        card = json.loads(resume.with_suffix(".json").read_text())
        log(f"resuming {METHOD} from {resume} after epoch {card['epochs']}")
    else:
        clip = ClipImageEncoder.load(clip_model, pretrained, device)
        model = MGFusion(**(config or {}), clip=clip).to(device)
        card = {"epochs": 0, "seconds_trained": 0.0, "train_loss": []}
    model.train()
    params = model.trainable_parameters()
    opt = torch.optim.Adam(params, lr=lr * START_FRACTION)
    if resume is not None and optimizer_path(resume).is_file():
        load_optimizer(opt, optimizer_path(resume))

    card.update({
        "method": METHOD,
        "model": type(model).__name__,
        "config": model.config,
        "parameters": sum(p.numel() for p in params),
        "clip": {"model": clip_model, "pretrained": pretrained_label(pretrained), "frozen": True,
                 "image_size": model.clip.image_size, "embed_dim": model.clip.embed_dim},
        "data": {"train": _dataset_counts(pairs)},
        "crop": crop, "batch_size": batch_size, "lr": lr, "optimizer": "adam",
        "schedule": f"linear warm-up {lr * START_FRACTION:g}→{lr:g} over the first {WARMUP_FRACTION:.0%} of epochs, "
                    f"then linear decay to {lr * START_FRACTION:g}",
        "loss": f"L_g + {LOSS_WEIGHT}·L_i (max-gradient Sobel L1 + max-intensity L1)",
        "epochs_planned": epochs, "seed": seed, "device": str(device),
        "augmentation": "random crop, horizontal/vertical flips, 90° rotations",
        "versions": _versions(),
    })

    def epoch_batches(epoch: int, rng: np.random.Generator, chunks: list[np.ndarray]):
        for chosen in chunks:
            channels = random_crop_batch([tuple(images[i]) for i in chosen], crop, rng)  # 4 × (B, 1, crop, crop)
            yield split_patch(torch.cat(channels, dim=1).float().div_(255.0))

    def step_loss(batch) -> tuple[torch.Tensor, dict[str, float]]:
        ir, vis, vis_rgb = (t.to(device) for t in batch)
        return mgfusion_loss(model(ir, vis, vis_rgb=vis_rgb), ir, vis), {}

    return run_epochs(METHOD, model, opt, card, out, samples=len(images), batch_size=batch_size, epochs=epochs,
                      seed=seed, batches=epoch_batches, step_loss=step_loss,
                      lr_at=lambda progress: lr_at(progress, epochs, lr),
                      save=lambda path: save_mgfusion(model, path, clip_model, pretrained),
                      max_steps=max_steps, progress=progress, log=log)
