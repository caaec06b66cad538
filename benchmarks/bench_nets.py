"""Shipped networks on the CPU: GFLOPs per 640x480 pair, achieved GFLOP/s, and the ratio to a measured 3x3-conv ceiling.

    python benchmarks/bench_nets.py [--methods refinefuse,dfh-base,...] [--runs N] [--limit N] [--compile]

Each learned method fuses one MSRS pair (640x480 luminance) through its registry
callable, as `fuse fuse` runs it. FLOPs are counted by ``torch.utils.flop_counter``
(convolutions, matrix products and attention; element-wise work is not counted).
The ceiling is the best GFLOP/s of a 64->64-channel 3x3 convolution on a 240x320
map (NCHW or channels-last), measured in the same run with the same threads.

Variants, each checked against the shipped path (max |difference| of the fused
image): weights and inputs in contiguous (NCHW) memory instead of the fusers'
channels-last (:class:`~stages.methods.learned.NetworkFuser`; networks without such a
fuser run as they are), one torch thread instead of all, and the network as trained,
its BatchNorm layers not folded into the convolutions (:mod:`stages.nets.inference`),
and with ``--compile`` the network compiled by ``torch.compile`` (inductor; the first call
compiles, or loads the compiled code from inductor's cache of an earlier run). Wall times are medians of
``--runs``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.core.images import luminance, read_image  # noqa: E402
from stages.methods.learned import load_network  # noqa: E402
from stages.methods.registry import get_method, list_methods  # noqa: E402

MSRS = ROOT.parent / "shared" / "data" / "msrs"
PAIR = "00004N"


def modules_of(fuse) -> list[torch.nn.Module]:
    """The networks behind a registry callable: its ``model`` attribute or the modules its closure holds."""
    if isinstance(getattr(fuse, "model", None), torch.nn.Module):
        return [fuse.model]
    cells = getattr(fuse, "__closure__", None) or ()
    return [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.nn.Module)]


def unfolded_network(name: str, fuse) -> torch.nn.Module | None:
    """The fuser's network as trained, BatchNorm not folded (``stages.nets.inference``), or None where the
    fuser holds no ``model`` of :func:`load_network`'s or its network has no BatchNorm."""
    if not isinstance(getattr(fuse, "model", None), torch.nn.Module) or name == "mgfusion":
        return None
    network = load_network(name)
    return network if any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()) else None


def median_s(call, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_ceiling(runs: int) -> float:
    """Best GFLOP/s of a 3x3, 64->64 convolution on 1x64x240x320, NCHW or channels-last."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.rand(1, 64, 240, 320)
    flops = 2 * 64 * 64 * 9 * 240 * 320
    best = 0.0
    with torch.inference_mode():
        for fmt in (torch.contiguous_format, torch.channels_last):
            c, xx = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            c(xx)
            best = max(best, flops / median_s(lambda: c(xx), runs) / 1e9)
    return best


def _is_matmul(op: str) -> bool:
    return any(key in op for key in ("mm", "attention", "linear"))


def where_time_goes(call, counter: FlopCounterMode) -> dict[str, tuple[float, float]]:
    """{"convolution" | "matmul, attention" | "other": (share of CPU time, GFLOP/s)} from one profiled call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    seconds = {"convolution": 0.0, "matmul, attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = "convolution" if "convolution" in event.key else "matmul, attention" if _is_matmul(event.key) else "other"
        seconds[kind] += event.self_cpu_time_total / 1e6
    flops = {"convolution": 0, "matmul, attention": 0, "other": 0}
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        flops["convolution" if "convolution" in str(op) else "matmul, attention" if _is_matmul(str(op)) else "other"] += count
    total = sum(seconds.values()) or 1.0
    return {kind: (seconds[kind] / total, flops[kind] / seconds[kind] / 1e9 if seconds[kind] else 0.0)
            for kind in seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(m.name for m in list_methods("learned")))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many runs (run.py's smoke option)")
    parser.add_argument("--compile", action="store_true",
                        help="add a torch.compile variant (its first call, which compiles, is reported apart)")
    args = parser.parse_args()
    runs = min(args.runs, args.limit or args.runs)
    if not MSRS.is_dir():
        raise SystemExit(f"bench_nets: {MSRS} not found (needs ../shared/data)")
    to_tensor = lambda img: torch.from_numpy(luminance(img).copy())[None, None]  # noqa: E731
    ir = to_tensor(read_image(MSRS / "ir" / f"{PAIR}.png"))
    vis = to_tensor(read_image(MSRS / "vis" / f"{PAIR}.png"))
    threads = torch.get_num_threads()
    print(f"\nMSRS {PAIR}, 640x480, CPU, {os.cpu_count()} CPUs, {threads} torch threads, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    ceiling = conv_ceiling(runs)
    torch.set_num_threads(1)
    ceiling_1 = conv_ceiling(runs)
    torch.set_num_threads(threads)
    print(f"3x3 convolution ceiling: {ceiling:.1f} GFLOP/s with {threads} threads, {ceiling_1:.1f} with 1\n")
    print("| network | GFLOPs / pair | variant | ms / pair | GFLOP/s | % of ceiling | max abs diff |")
    print("|---|---:|---|---:|---:|---:|---:|")
    split = {}
    for name in args.methods.split(","):
        try:
            fuse = get_method(name).factory(device="cpu")
        except FileNotFoundError:
            print(f"| {name} | no weights | | | | | |")
            continue
        with torch.inference_mode():
            reference = fuse(ir, vis)
        with FlopCounterMode(display=False) as counter:
            fuse(ir, vis)
        gflops = counter.get_total_flops() / 1e9
        split[name] = where_time_goes(lambda: fuse(ir, vis), counter)
        nets = modules_of(fuse)
        shipped_format = getattr(fuse, "memory_format", torch.contiguous_format)
        shipped_model = getattr(fuse, "model", None)
        variants = [("as shipped", shipped_format, threads, shipped_model),
                    ("contiguous (NCHW) weights and inputs", torch.contiguous_format, threads, shipped_model),
                    ("as shipped, 1 thread", shipped_format, 1, shipped_model)]
        unfolded = unfolded_network(name, fuse)
        if unfolded is not None:
            variants.append(("BatchNorm not folded", shipped_format, threads, unfolded))
        if args.compile and shipped_model is not None:
            variants.append(("torch.compile", shipped_format, threads, torch.compile(shipped_model, dynamic=False)))
        for label, fmt, n_threads, model in variants:
            torch.set_num_threads(n_threads)
            if model is not None:
                fuse.model = model
                nets = [model]
            for net in nets:
                net.to(memory_format=fmt)
            if hasattr(fuse, "memory_format"):
                fuse.memory_format = fmt

            def call():
                return fuse(ir, vis)

            start = time.perf_counter()
            diff = (call() - reference).abs().max().item()
            if label == "torch.compile":
                label += f" (first call {time.perf_counter() - start:.1f} s)"
            seconds = median_s(call, runs)
            best = ceiling if n_threads == threads else ceiling_1
            print(f"| {name} | {gflops:.1f} | {label} | {1e3 * seconds:.0f} | {gflops / seconds:.1f} | "
                  f"{100 * gflops / seconds / best:.0f} | {diff:.1e} |", flush=True)
        torch.set_num_threads(threads)
    print("\nWhere the time goes, as shipped (torch.profiler self CPU time; GFLOP/s of that part):\n")
    print("| network | convolution: % time | GFLOP/s | matmul, attention: % time | GFLOP/s | other (element-wise, "
          "copies, resampling): % time |\n|---|---:|---:|---:|---:|---:|")
    for name, parts in split.items():
        (conv, conv_rate), (mm, mm_rate), (other, _) = parts.values()
        print(f"| {name} | {100 * conv:.0f} | {conv_rate:.1f} | {100 * mm:.0f} | {mm_rate:.1f} | {100 * other:.0f} |")
    print(f"\nLoad average at the end {os.getloadavg()[0]:.1f}; the machine's other processes share its CPUs.")


if __name__ == "__main__":
    main()
