"""Training of the text-guided networks: ``tesg`` and ``textdfh``.

The guidance is computed here, offline, per training pair (on the full image,
once, and cached in memory and — with ``cache`` — on disk):

* the ``salient`` mask (:func:`stages.methods.guidance.salient_mask`), TeSG's ``M``;
* the ``advisor`` caption (:func:`stages.methods.guidance.advise`) — TeSG's ``T`` and the
  MLLM answer of the Text-DFH paper — encoded by :mod:`stages.nets.text_features`
  (MiniLM by default) into text tokens.

Pairs larger than :data:`MAX_SIDE` (LLVIP's 1280×1024) are halved first (area
averaging), so a crop covers a comparable part of the scene in every dataset.
Crops, flips and rotations are :func:`stages.training.loop.random_crop_batch`'s, applied
identically to the mask; the loop is :func:`stages.training.loop.run_epochs`. Text tokens are per pair.

Recipes (the papers', in :data:`stages.methods.specs.LEARNED`; shortened by ``epochs`` on a CPU):

* ``tesg``: AdamW, lr 1e-4, batch 8, 96×96 crops, 140 epochs (Sect. 4.1).
* ``textdfh``: Adam, lr 1e-3, batch 16, 200 epochs (Sect. 4.2); the crop size is
  not given (128 here); the base network is frozen and taken from ``base_weights``
  (default the shipped ``dfh-base``).

After every epoch ``out/<method>.safetensors``, ``out/<method>.optim.safetensors``
and the model card ``out/<method>.json`` are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.methods.specs import learned_method
from stages.training.loop import (_dataset_counts, _versions, check_schedule, load_optimizer, load_pair, optimizer_path,
                                  random_crop_batch, run_epochs, schedule_lr, validate)

MAX_SIDE = 800


def _halve(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x)[None, None]
    return F.interpolate(t, scale_factor=0.5, mode="area")[0, 0].numpy()


def prepare_pair(ir_path, vis_path, cache: Path | None = None) -> dict:
    """One training sample: ``ir``, ``vis`` (H, W) float32, ``mask`` (H, W) float32, ``caption``."""
    key = None
    if cache is not None:
        stat = [os.stat(ir_path).st_mtime_ns, os.stat(vis_path).st_mtime_ns]
        key = hashlib.sha1(json.dumps([str(Path(ir_path).resolve()), str(Path(vis_path).resolve()), stat,
                                       MAX_SIDE]).encode()).hexdigest()[:16]
        path = cache / f"{key}.npz"
        if path.is_file():
            data = np.load(path)
            return {"ir": data["ir"], "vis": data["vis"], "mask": data["mask"], "caption": str(data["caption"])}
    from stages.methods.guidance import advise
    from stages.methods.guidance import salient_mask

    ir, vis = load_pair(ir_path, vis_path)
    while max(ir.shape) > MAX_SIDE:
        ir, vis = _halve(ir), _halve(vis)
    sample = {"ir": ir, "vis": vis, "mask": salient_mask(ir, vis).astype(np.float32), "caption": advise(ir, vis)}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.part-{os.getpid()}.npz"
        np.savez_compressed(tmp, **sample)
        os.replace(tmp, cache / f"{key}.npz")
    return sample


def build_model(method: str, *, base_weights=None, text_dim: int, text_backend: str, mask_guidance: bool = True):
    """A fresh ``tesg``, or a ``textdfh`` on the frozen ``dfh-base`` of ``base_weights`` (default the shipped one)."""
    model_cls = learned_method(method).model
    if method == "tesg":
        return model_cls(text_dim=text_dim, text_backend=text_backend, mask_guidance=mask_guidance)
    from stages.methods.learned import load_network

    base = load_network("dfh-base", base_weights, "cpu")
    model = model_cls(widths=base.config["widths"], text_dim=text_dim, text_backend=text_backend)
    model.load_base(base)
    return model


def train_text_fusion(method: str, pairs: Sequence[tuple], out, *, epochs: int | None = None,
                      batch_size: int | None = None, lr: float | None = None, seed: int = 0,
                      device: str | torch.device = "cpu", crop: int | None = None, resume=None,
                      progress: bool = True, log: Callable[[str], None] = print, base_weights=None,
                      text_backend: str = "minilm", mask_guidance: bool = True, fixed_text: str | None = None,
                      cache: str | os.PathLike | None = None, max_seconds: float | None = None,
                      det_loss=None, det_weight: float = 0.0, init=None,
                      val_pairs: Sequence[tuple] | None = None, schedule: str | None = None) -> Path:
    """Train ``tesg`` or ``textdfh`` on ``pairs`` (``(ir_path, vis_path)``); returns ``out/<method>.safetensors``.

    Unset hyper-parameters take the spec's ``recipe`` (:data:`stages.methods.specs.LEARNED`). ``base_weights``: the ``dfh-base``
    checkpoint Text-DFH refines. ``mask_guidance=False`` trains TeSG's "w/o MGCA"
    ablation; ``fixed_text`` replaces every caption (Text-DFH's fixed-text
    ablation). ``cache``: a folder for the per-pair masks and captions.
    ``schedule``: ``"constant"`` or ``"cosine"`` (:func:`stages.training.loop.schedule_lr`); ``None``
    takes the recipe's, or a resumed run's. ``max_seconds``: stop after the epoch that passes this wall-clock budget.
    ``det_loss``, ``det_weight``: a frozen detector's loss on the fused patches
    (:func:`stages.detection.loss.detection_loss_fn`, labels by IR file stem), added
    with weight λ as in :func:`stages.training.loop.train` — the Text-DFH paper trains its
    second stage through the frozen detector this way.
    ``init``: weights to start from (fine-tuning: a fresh optimiser and epoch count, unlike
    ``resume``). ``val_pairs``: scored after every epoch at full size, fused as ``fuse fuse``
    fuses (each pair's ``salient`` mask and ``advisor`` caption), into the card's ``val_metrics``.
    """
    from stages.methods.learned import load_network
    from stages.methods.text import TextFuser
    from stages.nets.checkpoint import save_weights
    from stages.nets.text_features import shared_encoder

    if method not in ("tesg", "textdfh"):
        raise ValueError(f"unknown text-guided network {method!r}; choose tesg or textdfh")
    spec = learned_method(method)
    recipe = spec.recipe
    epochs, batch_size = epochs or recipe["epochs"], batch_size or recipe["batch_size"]
    lr, crop = lr or recipe["lr"], crop or recipe["crop"]
    if not pairs:
        raise ValueError("no training pairs given")
    if resume is not None and init is not None:
        raise ValueError("give resume or init, not both")
    check_schedule(schedule)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    started_all = time.perf_counter()

    ids = [Path(ir).stem for ir, _ in pairs]
    samples = []
    prep = tqdm(pairs, desc=f"{method}: masks and captions", file=sys.stderr, disable=not progress, leave=False)
    for ir_path, vis_path in prep:
        samples.append(prepare_pair(ir_path, vis_path, Path(cache) if cache else None))
    encoder = shared_encoder(text_backend, device)
    captions = [fixed_text if fixed_text is not None else s["caption"] for s in samples]
    text_tokens = encoder.tokens(captions).cpu()  # (N, L, D)
    log(f"{method}: {len(samples)} pairs prepared in {time.perf_counter() - started_all:.0f} s "
        f"(mean mask cover {np.mean([s['mask'].mean() for s in samples]):.3f})")

    if resume is not None or init is not None:
        model = load_network(method, resume or init, device).train()
    else:
        model = build_model(method, base_weights=base_weights, text_dim=encoder.dim, text_backend=text_backend,
                            mask_guidance=mask_guidance).to(device).train()
    if resume is not None:
        card = json.loads(Path(resume).with_suffix(".json").read_text())
        schedule = schedule or card.get("schedule")
    else:
        card = {"epochs": 0, "seconds_trained": 0.0, "train_loss": []}
        if init is not None:
            card["init"] = str(init)
            log(f"starting {method} from {init}")
    schedule = schedule or recipe["schedule"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=lr) if recipe["optimizer"] == "adamw" else torch.optim.Adam(params, lr=lr))
    if resume is not None and optimizer_path(Path(resume)).is_file():
        load_optimizer(opt, optimizer_path(Path(resume)))
    loss_fn = spec.loss_fn
    card.update({
        "method": method, "model": type(model).__name__, "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in params),
        "data": {"train": _dataset_counts(pairs), "val": _dataset_counts(val_pairs or [])}, "crop": crop, "batch_size": batch_size, "lr": lr,
        "optimizer": recipe["optimizer"], "schedule": schedule, "epochs_planned": epochs, "seed": seed,
        "device": str(device), "guidance": {"mask": "salient (stages.mask)", "text": fixed_text or "advisor captions",
                                             "text_encoder": text_backend},
        "max_side": MAX_SIDE, "augmentation": "random crop, horizontal/vertical flips, 90° rotations",
        "versions": _versions(),
    })
    if det_loss is not None:
        card["detection"] = {**det_loss.source, "weight": det_weight,
                             "pairs_labelled": sum(1 for i in ids if det_loss.labels.get(i) is not None)}
    if method == "textdfh":
        card["base_weights"] = str(base_weights or "stages/weights/dfh-base.safetensors")

    def epoch_batches(epoch: int, rng: np.random.Generator, chunks: list[np.ndarray]):
        for chosen in chunks:
            ir, vis, mask, crops = random_crop_batch([(samples[i]["ir"], samples[i]["vis"], samples[i]["mask"])
                                                      for i in chosen], crop, rng, with_crops=True)
            yield chosen, ir, vis, (mask > 0.5).float(), crops

    def step_loss(batch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, ir, vis, mask, crops = batch
        ir, vis, mask = ir.to(device), vis.to(device), mask.to(device)
        text = text_tokens[chosen].to(device)
        if spec.guidance == "mask+text":  # TeSG: the mask guides the network and its loss
            fused = model(ir, vis, mask=mask, text=text)
            loss = loss_fn(fused, ir, vis, mask)
        else:
            fused = model(ir, vis, text=text)
            loss = loss_fn(fused, ir, vis)
        if det_loss is None:
            return loss, {}
        detection = det_loss(fused, [ids[i] for i in chosen], [c.affine() for c in crops])
        return loss + det_weight * detection.to(loss.device), {"train_det_loss": float(detection.detach())}

    val_images = [load_pair(ir, vis) for ir, vis in (val_pairs or [])]  # scored at full size, float

    def validate_epoch() -> dict | None:
        return validate(TextFuser(model, device, fixed_text=fixed_text), val_images)

    return run_epochs(method, model, opt, card, out, samples=len(samples), batch_size=batch_size, epochs=epochs,
                      seed=seed, batches=epoch_batches, step_loss=step_loss,
                      lr_at=lambda progress: schedule_lr(lr, schedule, int(progress), epochs),
                      save=lambda path: save_weights(model, method, path, None if fixed_text is None else {"fixed_text": fixed_text}),
                      validate=validate_epoch if val_images else None,
                      max_seconds=max_seconds, progress=progress, log=log)

