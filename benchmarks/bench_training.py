"""Where a training step's time goes, per crop-trained network, and samples/s of the loop's data paths.

    python benchmarks/bench_training.py [--networks refinefuse dfh-base] [--steps 6] [--threads 1]
                                        [--crop 128] [--batch-size 8] [--compile]

For each network: milliseconds per step spent cropping the batch (from pairs held in memory), in the
forward pass, the loss, the backward pass and the optimiser step (Adam), measured one after another
on real MSRS training pairs (``msrs_extra``; synthetic pairs when ``../shared/data`` is absent).
Then samples/s of whole steps three ways: crops cut from float32 images in the step (the loop as it
was), from uint8 images in a background thread (:func:`stages.training.loop.prefetch`), and the latter with
channels-last weights and batches (the loop now), and (``--compile``) that with the step's forward
through ``torch.compile`` (the compilation, minutes, is in the warm-up step and not counted; the loop
does not compile: for little more speed, if any). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages.methods.specs import LEARNED  # noqa: E402

#: the networks the generic loop trains (their loss takes only the fused image and the pair)
NETWORKS = {name: spec for name, spec in LEARNED.items() if spec.trainer == "stages.training.loop:train"}
from stages.training.loop import UNLABELLED, load_training_pair, prefetch, random_crop_batch, salient_targets  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrs_extra"


def training_images(count: int) -> list[tuple[np.ndarray, ...]]:
    """``count`` uint8 ``(ir, vis, labels)`` triples: real msrs_extra pairs, or random 480×640 ones."""
    paths = sorted((DATA / "ir").glob("*.png"))[:count]
    if paths:
        triples = [load_training_pair(p, DATA / "vis" / p.name) for p in paths]
        return [t if len(t) == 3 else (*t, np.full_like(t[0], UNLABELLED)) for t in triples]
    rng = np.random.default_rng(0)
    return [tuple(rng.integers(0, 256, (480, 640), dtype=np.uint8) for _ in range(2)) + (np.zeros((480, 640), np.uint8),)
            for _ in range(count)]


def _loss_kwargs(name: str, ir: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"salient": salient_targets(ir, labels)} if NETWORKS[name].salient_targets else {}


def phases(name: str, images, steps: int, crop: int, batch: int) -> dict[str, float]:
    """Mean ms per step of each phase, timed one after another."""
    torch.manual_seed(0)
    model = NETWORKS[name].model().train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    rng = np.random.default_rng(0)
    totals = dict.fromkeys(["crop", "forward", "loss", "backward", "optimiser"], 0.0)
    for step in range(steps + 1):  # the first step warms up and is not counted
        marks = [time.perf_counter()]
        chosen = [images[i % len(images)] for i in range(step * batch, (step + 1) * batch)]
        ir, vis, labels = random_crop_batch(chosen, crop, rng)
        ir, vis = ir.float() / 255, vis.float() / 255
        marks.append(time.perf_counter())
        fused = model(ir, vis)
        marks.append(time.perf_counter())
        loss = NETWORKS[name].loss_fn(fused, ir, vis, **_loss_kwargs(name, ir, labels))
        marks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        opt.step()
        marks.append(time.perf_counter())
        if step:
            for key, begin, end in zip(totals, marks, marks[1:]):
                totals[key] += (end - begin) * 1000 / steps
    return totals


def samples_per_second(name: str, images, steps: int, crop: int, batch: int, *, uint8: bool, background: bool,
                       channels_last: bool, compiled: bool = False) -> float:
    """Whole training steps per second × batch, for one way of feeding the network."""
    torch.manual_seed(0)
    model = NETWORKS[name].model().train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    forward = torch.compile(model) if compiled else model
    source = images if uint8 else [tuple(a.astype(np.float32) / 255 for a in t) for t in images]
    rng = np.random.default_rng(0)
    batches = (random_crop_batch([source[i % len(source)] for i in range(s * batch, (s + 1) * batch)], crop, rng)
               for s in range(steps + 1))
    if background:
        batches = prefetch(batches)
    started = None
    for step, (ir, vis, labels) in enumerate(batches):
        if step == 1:
            started = time.perf_counter()
        ir, vis = (x.float().div(255) if uint8 else x for x in (ir, vis))
        labels = labels.to(torch.uint8) if not uint8 else labels
        ir, vis = ir.contiguous(memory_format=fmt), vis.contiguous(memory_format=fmt)
        loss = NETWORKS[name].loss_fn(forward(ir, vis), ir, vis, **_loss_kwargs(name, ir, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=sorted(NETWORKS), choices=sorted(NETWORKS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="add a column with torch.compile (minutes per network)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = training_images(16)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size} × {args.crop}², "
          f"{args.steps} steps after one warm-up\n")
    print("| network | crop ms | forward ms | loss ms | backward ms | optimiser ms | float32, in step: samples/s "
          "| uint8, background: samples/s | + channels-last: samples/s |" + (" + compile: samples/s |" if args.compile else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.compile else ""))
    for name in args.networks:
        t = phases(name, images, args.steps, args.crop, args.batch_size)
        rates = [samples_per_second(name, images, args.steps, args.crop, args.batch_size, uint8=u, background=b,
                                    channels_last=c) for u, b, c in [(False, False, False), (True, True, False),
                                                                     (True, True, True)]]
        if args.compile:
            rates.append(samples_per_second(name, images, args.steps, args.crop, args.batch_size, uint8=True,
                                            background=True, channels_last=True, compiled=True))
        print(f"| {name} | " + " | ".join(f"{t[k]:.0f}" for k in t) + " | " + " | ".join(f"{r:.1f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
