"""Train the ``tard`` joint network together with its detection head (eq. 12 with ``l_ob``).

Hu et al. 2025, eq. 12: ``l = l_c + l_s + 10 l_reg + 5 l_f + lambda_3 l_ob`` with
``lambda_3 = 5`` (section 4.1.1.2), every term at once. Here the joint network starts
from a trained ``tard.safetensors`` (the packaged one: :mod:`stages.training.registration`,
without ``l_ob``) and a fresh :class:`~stages.nets.tard_detection.TardDetector`; each
step, on a batch of labelled aligned pairs:

* views: the whole pair resized to the working size, flipped left–right at random
  (the boxes follow). No random crop: :mod:`stages.training.registration`'s views do not
  report their window, so boxes could not follow it.
* the IR is deformed with :mod:`stages.training.registration`'s random correction fields
  (same rigid + elastic mix). Boxes are in VIS coordinates and VIS is the fixed image,
  so they do not move.
* loss: :func:`~stages.training.registration.registration_losses` (``l_c + 10 l_reg``) +
  :func:`~stages.training.registration.fusion_losses` (``l_s + 5 l_f``; the registration
  under ``no_grad`` there, as in its phase 2) + ``det_weight * l_ob`` on ``F_f`` of the
  deformed IR and the VIS view, which reaches every part of the joint network through
  the warp and the field. Adam on all parameters — the head at ``lr``, the trained
  joint network at a tenth of it (at the full rate the random head's gradients undo
  the registration: end-point error 6.5 → 13.6 px in the first epoch on MSRS) —
  cosine decay to 2 %, gradient-norm clip 10.
* BatchNorm of the joint network keeps its trained statistics (eval mode: batches of
  4 are too small to re-estimate them); the head's BatchNorm trains, and before every
  export its statistics are recomputed as plain averages over 64 fresh batches
  (:func:`recalibrate_head_batchnorm`: the running averages lag behind the weights).

Labels are looked up by IR file stem (as ``fuse train`` does). Files in ``out``:
``tard.safetensors`` (joint net), ``tard_detector.safetensors`` (head),
``tard_detector.json`` (model card), rewritten after every epoch.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages.core.images import atomic_file
from stages.detection.evaluation import GroundTruth, load_ground_truth
from stages.detection.loss import DetectionLoss, match_classes
from stages.methods.specs import learned_method
from stages.nets.registration import identity_grid, resize, save_state
from stages.nets.tard import WEIGHTS as TARD_WEIGHTS
from stages.nets.tard import load_tard
from stages.nets.tard_detection import YAML, TardDetector, save_detector
from stages.training.registration import (
    BN_BATCHES,
    MIN_LR_FRACTION,
    preload,
    fusion_losses,
    invert_grid,
    random_correction,
    registration_losses,
)
from stages.training.loop import recalibrate_batchnorm

RECIPE = learned_method("tard").recipe  # epochs, batch size, the head's learning rate (stages.methods.specs)
LAMBDA_DET = 5.0  # lambda_3 of eq. 12 (section 4.1.1.2)
NET_LR_FRACTION = 0.1  # the trained joint network learns at this fraction of the head's learning rate
CLIP_NORM = 10.0


def object_loss_fn(detector: TardDetector, gt: GroundTruth, device: str | torch.device = "cpu") -> DetectionLoss:
    """``l_ob`` (eq. 8): ``loss(F_f (B, 4C, h, w), ids, affines=None) -> scalar``, ultralytics' loss of ``detector``.

    ``gt`` (:func:`stages.detection.evaluation.load_ground_truth`) gives the boxes by id;
    label classes match the detector's names. Boxes follow ``affines`` as in
    :class:`~stages.detection.loss.DetectionLoss` (normalised full image → pixels of ``F_f``).
    Gradients reach the detector and ``F_f``.
    """
    labels, class_index, dropped = match_classes(gt, detector.model.names)
    return DetectionLoss(detector.model, labels, class_index, str(device), dropped)


def labelled_batch(data: list[torch.Tensor], idx: list[int], rng: random.Random, gen: torch.Generator, deform: bool = True):
    """Views of pairs ``data[i]`` ``(2, h, w)`` at the working size, and how boxes follow them.

    Returns ``ir``, ``vis``, ``ir_deformed`` ``(B, 1, h, w)``, the correction field
    ``phi_gt`` ``(B, h, w, 2)`` (the identity without ``deform``) and per view a 2×3
    affine: normalised full-image ``(u, v)`` → view pixels (a left–right flip or not).
    """
    h, w = data[0].shape[-2:]
    views, affines = [], []
    for i in idx:
        flip = rng.random() < 0.5
        views.append(data[i].flip(-1) if flip else data[i])
        affines.append(np.array([[-w, 0.0, w], [0.0, h, 0.0]]) if flip else np.array([[w, 0.0, 0.0], [0.0, h, 0.0]]))
    batch = torch.stack(views)
    ir, vis = batch[:, :1], batch[:, 1:]
    if not deform:
        return ir, vis, ir, identity_grid(len(idx), h, w, ir), affines
    phi = random_correction(len(idx), (h, w), gen)
    deformed = F.grid_sample(ir, invert_grid(phi), mode="bilinear", padding_mode="zeros", align_corners=False)
    return ir, vis, deformed, phi, affines


def recalibrate_head_batchnorm(net, detector: TardDetector, data: list[torch.Tensor], seed: int, deform: bool,
                               batch_size: int, device: str, batches: int = BN_BATCHES) -> None:
    """Recompute the head's BatchNorm statistics over ``batches`` fresh batches, in place
    (:func:`stages.training.loop.recalibrate_batchnorm`; fixed seed). Leaves the head in train mode."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    detector.train()

    def run_batch() -> None:
        idx = [rng.randrange(len(data)) for _ in range(batch_size)]
        _, vis, deformed, _, _ = labelled_batch(data, idx, rng, gen, deform)
        detector(net.features(deformed.to(device), vis.to(device)))

    recalibrate_batchnorm([m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)], run_batch, batches)


def train_tard_detection(
    pairs: list[dict],
    labels_dir: str | Path,
    out: str | Path,
    *,
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    seed: int = 0,
    device: str = "cpu",
    init: str | Path | None = None,
    classes_file: str | Path | None = None,
    class_map: dict[str, str] | None = None,
    det_weight: float = LAMBDA_DET,
    net_lr_fraction: float = NET_LR_FRACTION,
    deform: bool = True,
    progress: bool = True,
    log=print,
) -> Path:
    """Fine-tune the joint network with a new detection head on labelled aligned pairs.

    Args:
        pairs: records with ``ir`` and ``vis`` paths of *aligned* pairs; labels by IR file stem.
        labels_dir: YOLO txt (+ ``classes.txt`` beside it or ``classes_file``), VOC xml
            or a COCO json; the head's classes are the label classes (after ``class_map``).
        out: folder for ``tard.safetensors``, ``tard_detector.safetensors`` and
            ``tard_detector.json`` (rewritten after every epoch).
        init: the ``tard.safetensors`` to start from (default: the packaged one); its
            working size is the training size.
        det_weight: ``lambda_3``, the weight of ``l_ob`` (the paper's 5).
        lr: the head's learning rate; the joint network learns at ``lr * net_lr_fraction``.
        deform: deform the IR (the paper's training); ``False`` trains on the pairs as aligned.
        progress: a tqdm bar on stderr; ``log`` receives one JSON line per epoch.

    Returns:
        The path of ``tard_detector.safetensors``.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(init or TARD_WEIGHTS)
    gt = load_ground_truth(labels_dir, classes_file=classes_file, class_map=class_map)
    if not gt.classes:
        raise ValueError(f"{labels_dir}: no label classes found")
    ids = [Path(rec["ir"]).stem for rec in pairs]
    labelled = sum(1 for i in ids if len(gt.boxes.get(i, ())))
    if not labelled:
        raise ValueError(f"no training pair has boxes in {labels_dir} (labels are looked up by IR file stem)")
    torch.manual_seed(seed)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    net = load_tard(init, device)
    size = net.registration.size
    channels = net.registration.ir_common[0][0].out_channels
    detector = TardDetector(gt.classes, 4 * channels).to(device)
    ob_loss = object_loss_fn(detector, gt, device)
    data = [resize(pair[None], size)[0].clamp(0, 1) for pair in preload(pairs)]
    params = [*net.parameters(), *detector.parameters()]
    opt = torch.optim.Adam([{"params": list(net.parameters()), "lr": lr * net_lr_fraction},
                            {"params": list(detector.parameters()), "lr": lr}])
    steps = max(1, len(data) // batch_size)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    net.eval()  # BatchNorm statistics as trained; the weights still learn
    detector.train()
    history, seconds = [], 0.0
    settings = {"init": init.name, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "net_lr_fraction": net_lr_fraction, "seed": seed, "det_weight": det_weight, "deform": deform}
    log(f"tard detection: {labelled} of {len(pairs)} pairs have boxes; classes {', '.join(gt.classes)}; "
        f"dropped {dict(ob_loss.dropped) or 'none'}")
    for epoch in range(epochs):
        t0 = time.time()
        order = list(range(len(data)))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"tard detection epoch {epoch + 1}", disable=not progress, leave=False)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            ir, vis, deformed, phi, affines = labelled_batch(data, idx, rng, gen, deform)
            ir, vis, deformed, phi = (t.to(device) for t in (ir, vis, deformed, phi))
            reg = registration_losses(net, ir, vis, deformed, phi)
            fus = fusion_losses(net, ir, vis, deformed, phi, rng)
            l_ob = ob_loss(net.features(deformed, vis), [ids[i] for i in idx], affines)
            loss = reg["total"] + fus["total"] + det_weight * l_ob
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            sched.step()
            terms = {"total": loss, "reg": reg["reg"], "c": reg["c"], "s": fus["s"], "fusion": fus["fusion"],
                     "ob": l_ob, "epe_px": reg["epe_px"]}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(ob=f"{terms['ob'].item():.3f}")
        recalibrate_head_batchnorm(net, detector, data, seed + 7919 * (epoch + 1), deform, batch_size, device)
        seconds += time.time() - t0
        row = {"epoch": epoch + 1, "seconds": round(seconds, 1), **{k: round(v / steps, 4) for k, v in sums.items()}}
        history.append(row)
        log(json.dumps(row))
        _export(net, detector, out, size, channels, pairs, labelled, labels_dir, history, seconds, settings)
    return out / "tard_detector.safetensors"


def _export(net, detector: TardDetector, out: Path, size, channels: int, pairs, labelled: int, labels_dir, history,
            seconds: float, settings: dict) -> None:
    """Write the joint net, the head and the model card."""
    with atomic_file(out / "tard.safetensors") as tmp:
        save_state(net, tmp, channels, size)
    with atomic_file(out / "tard_detector.safetensors") as tmp:
        save_detector(detector, tmp)
    sets = sorted({Path(r["ir"]).parent.parent.name for r in pairs})  # <set>/ir/<id>.<ext>
    card = {
        "model": "'Target-aware unregistered infrared and visible image fusion' (Hu et al., Front. Phys. 2025): "
                 "joint registration + fusion network (tard) with its detection head on the fused features",
        "files": {"tard.safetensors": "TardNet (registration + fusion head), fine-tuned with the detection loss",
                  "tard_detector.safetensors": f"TardDetector: ultralytics {YAML} on F_f ({4 * channels} channels)"},
        "parameters": {"joint_network": sum(p.numel() for p in net.parameters()),
                       "detection_head": sum(p.numel() for p in detector.parameters())},
        "working_size_hw": list(size),
        "classes": detector.names,
        "data": {"sets": sets, "pairs": len(pairs), "pairs_with_boxes": labelled, "labels": str(labels_dir),
                 "ids": "IR file stems", "views": "whole pair at the working size, random left-right flip",
                 "held_out": "none: every pair given trains, so detection scores on these pairs are train = eval"},
        "loss": {"total": "l_c + 10 l_reg + l_s + 5 l_f + det_weight * l_ob", "gamma": 2.0,
                 "l_ob": "ultralytics v8DetectionLoss (box 7.5, cls 0.5, dfl 1.5) per image, on F_f of the deformed IR",
                 "l_s, l_f": "on a random half-size window of F_f; registration under no_grad for these two terms"},
        "batchnorm": f"joint network: statistics of the init weights (eval mode); head: trained, recomputed over "
                     f"{BN_BATCHES} batches before each export",
        "optimizer": f"Adam on all parameters (joint network at net_lr_fraction * lr), cosine decay to "
                     f"{MIN_LR_FRACTION:.0%}, grad-norm clip {CLIP_NORM:g}",
        **settings,
        "seconds": round(seconds, 1),
        "device": str(next(net.parameters()).device),
        "history": history,
    }
    with atomic_file(out / "tard_detector.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
