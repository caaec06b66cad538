"""Training of the learned fusion networks (:data:`stages.methods.specs.LEARNED`).

:func:`run_epochs` is the one training loop of every crop-trained network (those whose spec's
trainer is :func:`train`, :mod:`stages.training.text`'s ``tesg`` and ``textdfh``,
:mod:`stages.training.mgfusion`): seeded epochs, cropping in a background thread, one checkpoint format (weights, optimiser state,
model card) written after every epoch, exact resume. Each trainer gives it the network's batches,
loss, learning-rate schedule and weights writer.

:func:`train` follows the papers' recipes: random crops, random flips and 90°
rotations (the same for both modalities), the paper's optimiser and learning
rate (the spec's ``recipe``), one random crop per training pair per
epoch. Visible RGB images are reduced to their BT.601 luminance.

After every epoch it writes, atomically, into ``out``:

* ``<method>.safetensors`` — the weights (loadable by ``fuse fuse --weights``);
* ``<method>.optim.safetensors`` — the optimiser state, for ``resume``;
* ``<method>.json`` — the model card: method, data used, hyper-parameters,
  seconds trained, per-epoch training loss and validation metrics (computed with
  :mod:`stages.metrics` on ``val_pairs`` fused at full size), library versions.

Detection-driven training (``det_loss``, ``det_weight``): a frozen detector's
training loss on each fused batch is added, weighted, to the fusion loss, as
the detection-driven fusion papers do; boxes follow each patch's crop, flips
and turn (:class:`Crop`, :func:`stages.detection.loss.patch_affine`), pair ids
are the IR file stems. The card then also records the detector, labels and
weight (``detection``) and the per-epoch ``train_fusion_loss`` and unweighted
``train_det_loss``; ``train_loss`` is always the loss minimised.

On CPU a run is deterministic for a given ``seed`` (the crops of epoch ``e``
are drawn from a generator seeded with ``(seed, e)``, so a resumed run draws
the same crops as an uninterrupted one).
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from queue import Queue
from threading import Thread
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from stages.core.images import atomic_file, luminance, read_image, to_uint8
from stages.methods.learned import NetworkFuser, load_network
from stages.methods.specs import learned_method
from stages.nets.checkpoint import save_weights, write_checkpoint
from stages.nets.losses import salient_mask

if TYPE_CHECKING:
    from stages.detection.loss import DetectionLoss

VAL_METRICS = ["EN", "SD", "SF", "AG", "SSIM", "Qabf", "VIF"]
MIN_LR_FRACTION = 0.01  # cosine schedules end at 1 % of the initial rate

Pair = tuple[str | os.PathLike, str | os.PathLike]


def load_pair(ir_path: str | os.PathLike, vis_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair as two float32 ``(H, W)`` luminance arrays in [0, 1]; ``ValueError`` if sizes differ."""
    ir = luminance(read_image(ir_path)).astype(np.float32)
    vis = luminance(read_image(vis_path)).astype(np.float32)
    if ir.shape != vis.shape:
        raise ValueError(f"pair {Path(ir_path).stem}: IR is {ir.shape[1]}×{ir.shape[0]} but VIS is "
                         f"{vis.shape[1]}×{vis.shape[0]}")
    return ir, vis


# MSRS segmentation classes that are thermal targets (RefineFuse's salient objects): 1 car, 2 person, 3 bike.
SALIENT_CLASSES = (1, 2, 3)


def segmentation_path(ir_path: str | os.PathLike) -> Path:
    """Where a pair's segmentation labels sit by the dataset convention: ``<set>/segmentation/<id>.png``."""
    ir_path = Path(ir_path)
    return ir_path.parent.parent / "segmentation" / f"{ir_path.stem}.png"


def load_training_pair(ir_path: str | os.PathLike, vis_path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """A pair as held in memory for training: ``(ir, vis)`` uint8 ``(H, W)`` luminance, plus a third uint8
    ``(H, W)`` {0, 1} salient-target mask when the pair has segmentation labels (:func:`segmentation_path`)."""
    ir, vis = (to_uint8(image) for image in load_pair(ir_path, vis_path))
    labels_path = segmentation_path(ir_path)
    if not labels_path.is_file():
        return ir, vis
    labels = read_image(labels_path)
    if labels.shape != ir.shape:
        raise ValueError(f"pair {Path(ir_path).stem}: segmentation {labels_path} is not the pair's size")
    return ir, vis, np.isin(to_uint8(labels), SALIENT_CLASSES).astype(np.uint8)


class Crop(NamedTuple):
    """Where one sample of :func:`random_crop_batch` came from: crop at column ``x``, row ``y`` of the (padded)
    image whose unpadded size is ``full_size`` ``(W, H)``, then ``hflip``, ``vflip``, then ``rot90`` quarter-turns."""

    full_size: tuple[int, int]
    x: int
    y: int
    crop: int
    hflip: bool
    vflip: bool
    rot90: int

    def affine(self) -> np.ndarray:
        """The 2×3 map from normalised full-image coordinates to patch pixels (:func:`stages.detection.loss.patch_affine`)."""
        from stages.detection.loss import patch_affine

        return patch_affine(self.full_size, self.x, self.y, self.crop, self.hflip, self.vflip, self.rot90)


def random_crop_batch(images: Sequence[tuple[np.ndarray, ...]], crop: int, rng: np.random.Generator, *,
                      with_crops: bool = False) -> tuple:
    """One augmented ``crop × crop`` patch per pair: ``(B, 1, crop, crop)`` IR and VIS tensors.

    Each item of ``images`` is ``(ir, vis)`` or more same-size ``(H, W)`` arrays
    (e.g. a mask); the result has one tensor per array of the first item, of
    the arrays' dtype. Images smaller than ``crop`` are reflect-padded first (at the bottom and
    right, so full-image coordinates still hold). The same position, flips and
    quarter-turn rotation apply to all arrays of a pair. Draws from ``rng``, per
    pair: row, column, horizontal flip, vertical flip, quarter turns.

    With ``with_crops`` a last item lists each sample's :class:`Crop` (what a
    detection loss needs to move boxes into the patch); the draws are the same.
    """
    patches, crops = [], []
    for arrays in images:
        ir = arrays[0]
        full_size = (int(ir.shape[1]), int(ir.shape[0]))
        pad_h, pad_w = max(0, crop - ir.shape[0]), max(0, crop - ir.shape[1])
        patch = np.stack(arrays)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < ir.shape[0] and pad_w < ir.shape[1] else "edge"
            patch = np.pad(patch, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
        y = int(rng.integers(0, patch.shape[1] - crop + 1))
        x = int(rng.integers(0, patch.shape[2] - crop + 1))
        patch = patch[:, y:y + crop, x:x + crop]
        hflip = bool(rng.random() < 0.5)
        if hflip:
            patch = patch[:, :, ::-1]
        vflip = bool(rng.random() < 0.5)
        if vflip:
            patch = patch[:, ::-1, :]
        turns = int(rng.integers(0, 4))
        patches.append(np.rot90(patch, k=turns, axes=(1, 2)))
        crops.append(Crop(full_size, x, y, crop, hflip, vflip, turns))
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(patches)))  # (B, arrays, crop, crop)
    tensors = tuple(batch[:, i:i + 1] for i in range(batch.shape[1]))
    return (*tensors, crops) if with_crops else tensors


UNLABELLED = 255  # mask value of pixels whose salient targets are unknown (no segmentation labels)


def salient_targets(ir: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RefineFuse's salient-target mask of a batch: the labels where known, estimated from the IR elsewhere.

    ``ir``: ``(B, 1, H, W)`` float; ``labels``: ``(B, 1, H, W)`` uint8, 0/1 or :data:`UNLABELLED`.
    Returns ``(B, 1, H, W)`` float in {0, 1}.
    """
    return torch.where(labels == UNLABELLED, salient_mask(ir), labels.to(ir.dtype))


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` ahead (batches are cropped while the network trains)."""
    queue: Queue = Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                queue.put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)
        queue.put(done)

    Thread(target=produce, daemon=True).start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


LOW_LIGHT_GAIN, LOW_LIGHT_GAMMA, LOW_LIGHT_IR_GAIN = (0.15, 0.6), (1.0, 1.8), (0.2, 1.0)


def _uniform(u: np.ndarray, bounds: tuple[float, float]) -> torch.Tensor:
    return torch.from_numpy(bounds[0] + u * (bounds[1] - bounds[0])).float().view(-1, 1, 1, 1)


def darken_as_night(ir: torch.Tensor, vis: torch.Tensor, rng: np.random.Generator,
                    probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Night-scene augmentation of a batch: each sample, with probability ``probability``,
    gets ``vis → g · vis^gamma`` and ``ir → g_ir · ir``.

    Night sets (MSRS, LLVIP) have a dark visible image and often a dim IR one (MSRS
    IR averages 15/255); RoadScene is mostly daylight. ``g``, ``gamma`` and ``g_ir`` are
    drawn from ``LOW_LIGHT_GAIN``, ``LOW_LIGHT_GAMMA`` and ``LOW_LIGHT_IR_GAIN``. The loss
    then targets the darkened pair, so the network learns to keep a dark scene's
    intensities and faint edges instead of pulling them to a daylight range.
    ``ir``, ``vis``: ``(B, 1, H, W)``; draws four numbers per sample from ``rng``.
    """
    draws = rng.random((vis.shape[0], 4))
    apply = torch.from_numpy(draws[:, 0] < probability).view(-1, 1, 1, 1)
    dark_vis = _uniform(draws[:, 1], LOW_LIGHT_GAIN) * vis.clamp(0, 1) ** _uniform(draws[:, 2], LOW_LIGHT_GAMMA)
    dark_ir = _uniform(draws[:, 3], LOW_LIGHT_IR_GAIN) * ir
    return torch.where(apply, dark_ir, ir), torch.where(apply, dark_vis, vis)


def _dataset_counts(pairs: Sequence[Pair]) -> dict[str, int]:
    """Pairs per dataset folder (the folder holding ``ir/``), e.g. ``{"roadscene": 200}``."""
    counts: dict[str, int] = {}
    for ir_path, _ in pairs:
        name = Path(ir_path).resolve().parent.parent.name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _versions() -> dict[str, str]:
    import kornia
    import safetensors

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "kornia": kornia.__version__, "safetensors": safetensors.__version__}


def _make_optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str | None) -> None:
    """``ValueError`` unless ``schedule`` is ``None`` (the recipe's) or one of :data:`SCHEDULES`."""
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose {' or '.join(SCHEDULES)}")


def schedule_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The rate of epoch ``epoch`` (0-based) of ``epochs``: ``constant``, or ``cosine`` from ``lr`` towards 1 % of it at ``epochs``."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = epoch / max(1, epochs)
        return lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}; choose {' or '.join(SCHEDULES)}")


def optimizer_path(weights: Path) -> Path:
    """Where the optimiser state of ``weights`` (``NAME.safetensors``) lives: ``NAME.optim.safetensors``."""
    return weights.with_name(weights.name.replace(".safetensors", ".optim.safetensors"))


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimiser state as safetensors: tensors ``state.<param>.<key>``, param groups in the metadata."""
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
    write_checkpoint(tensors, {"param_groups": json.dumps(state["param_groups"])}, path)


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Restore a state written by :func:`save_optimizer` into ``optimizer`` (same parameters, same order)."""
    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict] = {}
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = f.get_tensor(name)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def recalibrate_batchnorm(norms: Sequence[torch.nn.BatchNorm2d], run_batch: Callable[[], object], batches: int) -> None:
    """Recompute ``norms``' running statistics as plain averages over ``batches`` calls of ``run_batch()``, in place.

    Running averages (momentum 0.1) lag behind weights that still move fast, so an eval-mode
    network does worse than in training; the trainers call this before exporting. ``run_batch``
    runs one fresh batch forward (its own fixed seed, so the training random streams are
    untouched), under :func:`torch.no_grad`; the momenta are restored afterwards.
    """
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(batches):
            run_batch()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def write_json(data: dict, path: Path) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def validate(fuser: Callable[..., torch.Tensor], images: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float] | None:
    """Mean :data:`VAL_METRICS` of ``fuser`` (``(1, 1, H, W)`` IR, VIS in [0, 1] → fused) on full-size pairs.

    ``None`` while :mod:`stages.metrics` is missing.
    """
    try:
        from stages.metrics import compute_metrics
    except ImportError:
        return None
    sums: dict[str, float] = {}
    for ir, vis in images:
        fused = fuser(torch.from_numpy(ir)[None, None], torch.from_numpy(vis)[None, None])[0, 0].cpu().numpy()
        scores = compute_metrics(to_uint8(ir), to_uint8(vis), to_uint8(fused), names=VAL_METRICS)
        for name, value in scores.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    return {name: round(total / len(images), 4) for name, total in sums.items()}


def run_epochs(method: str, model: torch.nn.Module, opt: torch.optim.Optimizer, card: dict, out: Path, *,
               samples: int, batch_size: int, epochs: int, seed: int,
               batches: Callable[[int, np.random.Generator, list[np.ndarray]], Iterator],
               step_loss: Callable[[object], tuple[torch.Tensor, dict[str, float]]],
               lr_at: Callable[[float], float], save: Callable[[Path], object],
               validate: Callable[[], dict | None] | None = None, max_steps: int | None = None,
               max_seconds: float | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> Path:
    """The training loop every crop-trained network shares; returns ``out/<method>.safetensors``.

    Epoch ``e`` draws from ``numpy.random.default_rng([seed, e])``: first the order of the
    ``samples`` training pairs, then whatever ``batches(e, rng, chunks)`` draws while it yields one
    batch per chunk of indices (cropping runs in a background thread, :func:`prefetch`). So a run
    resumed after epoch ``e`` (``card["epochs"]``) draws what an uninterrupted one would.
    ``step_loss(batch)`` gives the loss to minimise and named parts to record (``train_det_loss`` …);
    ``lr_at(epochs_done)`` the learning rate, set before every step (fractional epochs).

    After every epoch, atomically, into ``out``: the weights (``save(path)``), the optimiser state
    (``<method>.optim.safetensors``) and the model card (``<method>.json``: ``card`` with the epochs,
    seconds, per-epoch mean losses and, with ``validate``, ``val_metrics``); the weights and card of
    the epoch with the highest validation Qabf so far also go to ``out/best/``. ``max_steps`` caps the
    steps of an epoch (smoke runs); ``max_seconds`` stops after the epoch that spends the budget.
    """
    weights_path = out / f"{method}.safetensors"
    steps = math.ceil(samples / batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    started_all = time.perf_counter()
    for epoch in range(card["epochs"], epochs):
        started = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(samples)
        chunks = [order[step * batch_size:(step + 1) * batch_size] for step in range(steps)]
        sums: dict[str, float] = {"train_loss": 0.0}
        running = None
        bar = tqdm(total=steps, desc=f"{method} epoch {epoch + 1}/{epochs}", file=sys.stderr, disable=not progress,
                   leave=False)
        for step, batch in enumerate(prefetch(batches(epoch, rng, chunks))):
            step_lr = lr_at(epoch + step / steps)
            for group in opt.param_groups:
                group["lr"] = step_lr
            loss, parts = step_loss(batch)
            value = optimiser_step(opt, loss)
            for key, part in {"train_loss": value, **parts}.items():
                sums[key] = sums.get(key, 0.0) + part
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}")
            bar.update()
        bar.close()
        for key in {*sums, *(k for k, v in card.items() if k.startswith("train_") and isinstance(v, list))}:
            values = card.setdefault(key, [None] * epoch)
            values.append(round(sums[key] / steps, 5) if key in sums else None)
        metrics = validate() if validate is not None else None
        if validate is not None:
            card.setdefault("val_metrics", [None] * epoch).append(metrics)
            model.train()
        card["epochs"] = epoch + 1
        card["seconds_trained"] = round(card["seconds_trained"] + time.perf_counter() - started, 1)
        save(weights_path)
        save_optimizer(opt, optimizer_path(weights_path))
        write_json(card, weights_path.with_suffix(".json"))
        if metrics and metrics.get("Qabf") is not None and metrics["Qabf"] >= max(
                (m["Qabf"] for m in card["val_metrics"] if m and m.get("Qabf") is not None), default=0.0):
            (out / "best").mkdir(exist_ok=True)
            save(out / "best" / weights_path.name)
            write_json(card, out / "best" / weights_path.with_suffix(".json").name)
        parts = ", ".join(f"{k[6:-5]} {sums[k] / steps:.4f}" for k in sorted(sums) if k != "train_loss")
        shown = "" if metrics is None else "  " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        log(f"{method} epoch {epoch + 1}/{epochs}: loss {card['train_loss'][-1]:.4f}{f' ({parts})' if parts else ''} "
            f"lr {step_lr:.2e} ({time.perf_counter() - started:.0f} s){shown}")
        if max_seconds is not None and time.perf_counter() - started_all > max_seconds:
            log(f"{method}: stopping after epoch {epoch + 1}, the time budget of {max_seconds:.0f} s is spent")
            break
    return weights_path



def train(method: str, pairs: Sequence[Pair], out: str | os.PathLike, *, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, seed: int = 0,
          device: str | torch.device = "cpu", crop: int | None = None,
          resume: str | os.PathLike | None = None, val_pairs: Sequence[Pair] | None = None,
          progress: bool = True, log: Callable[[str], None] = print, optimizer: str | None = None,
          init: str | os.PathLike | None = None, det_loss: DetectionLoss | None = None,
          det_weight: float = 0.0, low_light: float = 0.0, schedule: str | None = None) -> Path:
    """Train network ``method`` on ``pairs`` (``(ir_path, vis_path)``); returns ``out/<method>.safetensors``.

    Args:
        epochs: total epochs; a resumed run continues until this many are done.
        epochs, batch_size, lr, crop, optimizer, schedule: ``None`` takes the paper's (the spec's ``recipe``;
            a resumed run keeps its card's schedule); ``optimizer`` is ``"sgd"`` or ``"adam"``,
            ``schedule`` ``"constant"`` or ``"cosine"`` (:func:`schedule_lr`).
        resume: a checkpoint written by this function (its ``.json`` card and
            ``.optim.safetensors`` beside it) to continue from.
        init: weights to start from (e.g. the shipped ones, for fine-tuning):
            a fresh optimiser and epoch count, unlike ``resume``.
        det_loss: a frozen detector's loss (:func:`stages.detection.loss.detection_loss_fn`);
            each batch then minimises ``fusion_loss + det_weight · det_loss(fused, ids, affines)``,
            ids being the IR file stems and the affines following each sample's crop,
            flips and turn. Only the fusion network is optimised.
        det_weight: λ, the weight of ``det_loss``.
        low_light: probability of darkening a sample (:func:`darken_as_night`); 0 leaves
            the paper's augmentation as it is (the crops drawn do not depend on it).
        val_pairs: pairs scored after every epoch (fused at full size).
        progress: show a tqdm bar with the running loss on stderr.
        log: called with one line per epoch.
    """
    spec = learned_method(method)
    recipe = spec.recipe
    epochs, batch_size, lr, crop = (recipe[k] if v is None else v for k, v in
                                    (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("crop", crop)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer_name = optimizer or recipe["optimizer"]
    momentum = recipe["momentum"]
    if not pairs:
        raise ValueError("no training pairs given")
    if resume is not None and init is not None:
        raise ValueError("give resume or init, not both")
    check_schedule(schedule)

    torch.manual_seed(seed)
    images = [load_training_pair(ir, vis) for ir, vis in pairs]
    labelled_pairs = sum(len(arrays) == 3 for arrays in images)
    if spec.salient_targets:  # every pair carries a mask; UNLABELLED where it has no segmentation labels
        images = [arrays if len(arrays) == 3 else (*arrays, np.full_like(arrays[0], UNLABELLED)) for arrays in images]
    else:
        images = [arrays[:2] for arrays in images]
    ids = [Path(ir).stem for ir, _ in pairs]
    val_images = [load_pair(ir, vis) for ir, vis in (val_pairs or [])]  # scored at full size, float

    if resume is not None:
        resume = Path(resume)
        model = load_network(method, resume, device).train()
        card = json.loads(resume.with_suffix(".json").read_text())
        schedule = schedule or card.get("schedule")
        opt = _make_optimizer(optimizer_name, model.parameters(), lr, momentum)
        if optimizer_path(resume).is_file():
            load_optimizer(opt, optimizer_path(resume))
        log(f"resuming {method} from {resume} after epoch {card['epochs']}")
    else:
        model = (spec.model() if init is None else load_network(method, init, "cpu")).to(device).train()
        opt = _make_optimizer(optimizer_name, model.parameters(), lr, momentum)
        card = {"epochs": 0, "seconds_trained": 0.0, "train_loss": []}
        if init is not None:
            card["init"] = str(init)
            log(f"starting {method} from {init}")
    schedule = schedule or recipe["schedule"]
    if det_loss is not None:
        labelled = sum(1 for i in ids if det_loss.labels.get(i) is not None)
        card["detection"] = {**det_loss.source, "weight": det_weight, "pairs_labelled": labelled,
                             "dropped_classes": dict(det_loss.dropped)}
        log(f"detection loss ×{det_weight:g} from {det_loss.source.get('model')}: {labelled} of {len(ids)} "
            "training pairs have labels")
        if not labelled:
            log("no training pair has labels (ids are IR file stems): the detection term only sees background")

    card.update({
        "method": method,
        "model": type(model).__name__,
        "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"train": _dataset_counts(pairs), "val": _dataset_counts(val_pairs or [])},
        "crop": crop, "batch_size": batch_size, "lr": lr, "optimizer": optimizer_name,
        "momentum": momentum if optimizer_name == "sgd" else None, "schedule": schedule,
        "epochs_planned": epochs, "seed": seed, "device": str(device),
        "salient_targets": (f"segmentation labels (classes {list(SALIENT_CLASSES)}) for {labelled_pairs} pairs, "
                            "estimated from the IR for the others") if spec.salient_targets else None,
        "augmentation": "random crop, horizontal/vertical flips, 90° rotations"
                        + (f", low light (p={low_light:g}: VIS gain {LOW_LIGHT_GAIN}, gamma {LOW_LIGHT_GAMMA}; "
                           f"IR gain {LOW_LIGHT_IR_GAIN})" if low_light else ""),
        "versions": _versions(),
        "memory_format": "channels_last",
    })
    # Channels-last weights and batches: 1.16-1.33x the samples/s of contiguous ones on CPU
    # (python benchmarks/bench_training.py); the files written are the same (saved contiguous).
    # torch.compile on top was measured there too and left out: minutes of compilation for little more.
    model = model.to(memory_format=torch.channels_last)

    def epoch_batches(epoch: int, rng: np.random.Generator, chunks: list[np.ndarray]) -> Iterator:
        light_rng = np.random.default_rng([seed, epoch, 1])
        for indices in chunks:
            *arrays, crops = random_crop_batch([images[i] for i in indices], crop, rng, with_crops=True)
            ir, vis = (a.float().div_(255.0) for a in arrays[:2])
            if low_light:
                ir, vis = darken_as_night(ir, vis, light_rng, low_light)
            yield indices, ir, vis, arrays[2:], crops

    loss_fn = spec.loss_fn

    def step_loss(batch) -> tuple[torch.Tensor, dict[str, float]]:
        indices, ir, vis, labels, crops = batch
        ir, vis = (x.to(device).contiguous(memory_format=torch.channels_last) for x in (ir, vis))
        extra = {"salient": salient_targets(ir, labels[0].to(device))} if spec.salient_targets else {}
        fused = model(ir, vis)
        loss = loss_fn(fused, ir, vis, **extra)
        if det_loss is None:
            return loss, {}
        detection = det_loss(fused, [ids[i] for i in indices], [c.affine() for c in crops])
        parts = {"train_fusion_loss": float(loss.detach()), "train_det_loss": float(detection.detach())}
        return loss + det_weight * detection.to(loss.device), parts

    return run_epochs(method, model, opt, card, out, samples=len(images), batch_size=batch_size, epochs=epochs,
                      seed=seed, batches=epoch_batches, step_loss=step_loss,
                      lr_at=lambda progress: schedule_lr(lr, schedule, int(progress), epochs),
                      save=lambda path: save_weights(model, method, path),
                      validate=(lambda: validate(NetworkFuser(model, device, half=False), val_images)) if val_images else None,
                      progress=progress, log=log)
