"""Registration quality and speed on the pairs of ``unaligned/roadscene`` (20), or on aligned pairs deformed here.

``--deform FOLDER`` (e.g. ``../shared/data/msrs``: 26 night and day pairs) takes the
aligned pairs of ``FOLDER/ir`` and ``FOLDER/vis`` and deforms each IR the way the
network's training views are deformed (:func:`stages.training.registration.random_correction`:
rotation, anisotropy, scale, translation and a smooth field, in normalised coordinates,
so about 30 px at 640 x 480), with a seed per pair id: the same pairs get the same
fields on every run and machine. Without it, the known fields of ``unaligned/roadscene``.

For each method (``none`` = the identity grid, ``ecc``, ``net``, ``net-single-pass`` =
``net`` with ``--single-pass``, ``net-ecc``) and pair the stage's grid is estimated
from ``ir_warp`` and ``vis`` and scored against the known deformation ``grid/<id>.npy``:

* EPE — end-point error in pixels, :func:`stages.metrics.registration.residual_displacement`
  (the deformation composed with the estimate, against the identity), mean over
  valid pixels (sampled inside both images);
* MAE — mean absolute difference, in grey levels (0–255), between the registered IR
  and the aligned IR ``ir/<id>.png`` over the same valid pixels, and NCC of the
  same two images (:func:`stages.metrics.registration.registration_metrics`);
* pairs/s — grid estimation + warp, images already in memory, one thread.

Then what registration does to fusion (``--fusion METHOD``, default ``laplacian``;
``--fusion none`` skips it): each method's registered IR is written by the
register stage into ``CACHE/<method>/``, fused with VIS by the fuse stage (the
unaligned IR as it is, and the aligned IR, as the two bounds), and scored by the
score stage against the *aligned* IR and VIS — so a fused image that shows the IR
in the wrong place scores lower, as it should (scored against the IR it was made
from, misalignment would be invisible to the reference-based metrics).

Prints markdown tables (and per-pair rows with ``--per-pair``)::

    python benchmarks/bench_register.py [--data ../shared/data] [--methods none ecc net net-single-pass net-ecc] [--per-pair]
                                        [--limit N] [--fusion laplacian|none] [--cache build/bench/register]
                                        [--deform FOLDER] [--weights register.safetensors]

Notes from building ``ecc`` (same pairs, mean EPE): affine ECC on gradient
magnitude, single start, no padding mask: 8.1 px; with the black-padding mask and
six coarse starts: 5.6 px. A dense refinement after it (Farneback flow between the
gradient images, Gaussian-smoothed with sigma 15 or 31 px, composed with the ECC
grid) raised the error to 7.2 / 6.8 px, so ``ecc`` has none.

Notes from building ``net`` (same pairs, mean EPE, single pass unless said):
the first network (finest field at a quarter of its 160 x 256 working size, 30
epochs) 7.51 px. Applying it again to its own output: 7.90 px (two passes), 8.85
(three). With a finer MSRB level (field at half the working size) and a 60-epoch
fine-tune at 192 x 320: 5.76 px, and 4.68 px as the mean of six passes (3 working
sizes x mirrored; the shipped weights). Checkpoints of that run at epochs 17, 30
and 45 gave 5.1, 7.4 and 5.4 px single pass: with BatchNorm re-estimated over 12
batches, the recalibration seed alone moved one checkpoint between 5.0 and 6.7 px
(over 60 batches 5.4–5.6), hence 64. Tried, not shipped: the mean weights of 20
more epochs at a lower rate (4.74 px ensemble, 5.65 single); l_reg weighting each
scale in its own pixels (4.46 / 5.65); training at 256 x 448 from the shipped
weights (6.09 / 7.01 after 11 of 22 epochs, stopped); five ensemble sizes
(4/6 … 8/6 of the working size) 4.43 px for 10 passes. On MSRS + M3FD pairs
deformed like the training views (night scenes, larger motion) the network is
far weaker: 30.6 px unregistered, 19.6 single pass, 17.6 ensemble (ECC diverges
there: 92 px).

Notes from the night campaign (``campaigns/register-night.sh``: msrs_extra's pairs added,
fine-tuned from those weights at lr 3e-4, 24 registration + 3 fusion epochs; ``--deform
../shared/data/msrs``, the 26 evaluation pairs, 34.96 px unregistered): the weights before
17.28 px; epoch 10 10.65 px (validation 9.57 px, so promoted), epoch 27 11.87 px
(validation 9.92); RoadScene 3.69 and 3.99 px. ECC at night: 85.9 px, net-ecc 47.4.
Tried after it, on the validation pairs only (9.566 px with the shipped weights): a new cycle from
the shipped registration at lr 1e-4, seed 1 (``RUN=register-cycle2 EPOCHS=6 FUSION_EPOCHS=3 LR=1e-4
SEED=1 INIT=stages/weights/register.safetensors``, 15 min) 9.675 px, not promoted; five ensemble
sizes (4/6 … 8/6) 11.39 px; applying the network again to its output 10.22 (two passes), 11.62 (three).
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages.core.images import luminance, read_image
from stages.core.records import pair_directories
from stages.metrics.registration import registration_metrics
from stages.metrics.registration import residual_displacement
from stages.register import RegisterStage, apply_grid
from stages.training.registration import invert_grid, random_correction

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FUSION_METRICS = ["EN", "SF", "SSIM", "Qabf", "VIF", "MI"]


def identity_grid(h: int, w: int) -> np.ndarray:
    """``(h, w, 2)`` grid sampling every pixel at its centre (``align_corners=False``)."""
    xs, ys = (np.arange(w) + 0.5) * 2 / w - 1, (np.arange(h) + 0.5) * 2 / h - 1
    return np.stack(np.meshgrid(xs, ys), -1).astype(np.float32)


def load_pairs(root: Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` unaligned pairs: ``id``, ``ir`` (deformed), ``vis``, ``aligned``, ``deformation``."""
    pairs = []
    grids = sorted((root / "grid").glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    for grid in grids[:limit]:
        pid = grid.stem
        pairs.append({
            "id": pid,
            "ir": read_image(root / "ir_warp" / f"{pid}.png"),
            "vis": luminance(read_image(root / "vis" / f"{pid}.png")),
            "aligned": read_image(root / "ir" / f"{pid}.png"),
            "deformation": np.load(grid),
        })
    return pairs


def deformed_pairs(folder: Path, limit: int | None = None) -> list[dict]:
    """Aligned pairs of ``folder`` with the IR deformed like a training view; the keys of :func:`load_pairs`.

    The correction field ``phi`` of each pair comes from a generator seeded with the
    CRC-32 of its id; the deformed IR is ``grid_sample(ir, phi^-1)`` (zero padding), so
    ``phi^-1`` is the deformation in the dataset convention.
    """
    pairs = []
    for rec in pair_directories({"ir": folder / "ir", "vis": folder / "vis"}).records[:limit]:
        ir, vis = luminance(read_image(rec["ir"])), luminance(read_image(rec["vis"]))
        gen = torch.Generator().manual_seed(zlib.crc32(rec["id"].encode()))
        deformation = invert_grid(random_correction(1, ir.shape, gen))
        warped = F.grid_sample(torch.from_numpy(ir)[None, None], deformation, mode="bilinear",
                               padding_mode="zeros", align_corners=False)[0, 0].numpy()
        pairs.append({"id": rec["id"], "ir": warped, "vis": vis, "aligned": ir, "deformation": deformation[0].numpy()})
    return pairs


METHODS = {"none": None, "ecc": {"method": "ecc"}, "net": {"method": "net"},
           "net-single-pass": {"method": "net", "single_pass": True}, "net-ecc": {"method": "net-ecc"}}


def evaluate(method: str, pairs: list[dict], weights: Path | None) -> tuple[list[dict], float]:
    """Per-pair ``{"id", "epe", "mae", "ncc"}`` and pairs per second for one method (a key of ``METHODS``)."""
    stage = None if method == "none" else RegisterStage(Path("unused"), weights=weights, **METHODS[method])
    rows, seconds = [], 0.0
    for pair in pairs:
        t0 = time.perf_counter()
        grid = identity_grid(*pair["vis"].shape) if stage is None else stage.estimate_grid(pair["ir"], pair["vis"])
        registered, _ = apply_grid(pair["ir"], grid)
        seconds += time.perf_counter() - t0
        err, valid = residual_displacement(grid, pair["deformation"])
        scores = registration_metrics(registered=registered * 255, aligned=pair["aligned"] * 255, valid=valid)
        rows.append({"id": pair["id"], "epe": float(err[valid].mean()), "mae": scores["MAE"], "ncc": scores["NCC"]})
    return rows, len(pairs) / seconds


def fusion_table(root: Path, methods: list[str], fusion: str, cache: Path, weights: Path | None, limit: int | None) -> str:
    """Markdown table: ``fusion`` of VIS with the unaligned, each method's registered, and the aligned IR.

    Every fused image is scored against the aligned IR and VIS (``mmif`` convention).
    """
    from bench_quality import fuse_method, score_table
    from fuse_cli.options import RunOptions
    from stages.core.records import pair_directories
    from fuse_cli.runner import Reporter, run_stage

    records = pair_directories({"ir": root / "ir_warp", "vis": root / "vis"}).records[:limit]
    aligned = {r["id"]: r["ir"] for r in pair_directories({"ir": root / "ir", "vis": root / "vis"}).records}
    inputs = {"unaligned": records}  # what is fused with VIS, by the name of its row
    for method in (m for m in methods if m != "none"):
        stage = RegisterStage(cache / method, weights=weights, min_confidence=0, **METHODS[method])  # score every pair
        registered: list[dict] = []
        run_stage(stage, records, RunOptions(batch_size=1, overwrite=True, quiet=True), Reporter("register", quiet=True),
                  emit=registered.append)
        inputs[f"registered by {method}"] = registered
    inputs["aligned (ground truth)"] = [{**r, "ir": aligned[r["id"]]} for r in records]
    fused: list[dict] = []
    for i, (name, recs) in enumerate(inputs.items()):
        out, _ = fuse_method(recs, fusion, cache / "fused" / str(i), "cpu", overwrite=True)
        fused += [{**r, "ir": aligned[r["id"]], "method": f"{fusion}, IR {name}"} for r in out]
    return score_table(fused, FUSION_METRICS, workers=1, total=len(records))[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--weights", type=Path, help="net weights (default: packaged)")
    parser.add_argument("--per-pair", action="store_true")
    parser.add_argument("--limit", type=int, help="use only the first N pairs")
    parser.add_argument("--fusion", default="laplacian", help="fusion method of the second table, or 'none'")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "register")
    parser.add_argument("--deform", type=Path, metavar="FOLDER",
                        help="aligned pairs (FOLDER/ir, FOLDER/vis) deformed like the training views, instead of "
                             "unaligned/roadscene; no fusion table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.deform:
        pairs, where = deformed_pairs(args.deform, args.limit), f"{args.deform}, deformed like the training views"
    else:
        pairs, where = load_pairs(args.data / "unaligned" / "roadscene", args.limit), "unaligned/roadscene"
    results = {m: evaluate(m, pairs, args.weights) for m in args.methods}
    base = np.mean([r["epe"] for r in results["none"][0]]) if "none" in results else None
    print(f"Registration on {where} ({len(pairs)} pairs, CPU, 1 thread)\n")
    print("| method | EPE px mean | EPE px median | EPE cut vs none | MAE grey levels | NCC | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for method, (rows, speed) in results.items():
        epe = [r["epe"] for r in rows]
        cut = f"{100 * (1 - np.mean(epe) / base):.0f} %" if base else "–"
        mae, ncc = np.mean([r["mae"] for r in rows]), np.mean([r["ncc"] for r in rows])
        print(f"| {method} | {np.mean(epe):.2f} | {np.median(epe):.2f} | {cut} | {mae:.1f} | {ncc:.3f} | {speed:.2f} |")
    if args.per_pair:
        print("\n| pair | " + " | ".join(f"{m} EPE / MAE" for m in results) + " |")
        print("|---|" + "---|" * len(results))
        for i, pair in enumerate(pairs):
            cells = " | ".join(f"{results[m][0][i]['epe']:.2f} / {results[m][0][i]['mae']:.1f}" for m in results)
            print(f"| {pair['id']} | {cells} |")
    if args.fusion != "none" and not args.deform:
        print(f"\nFusion ({args.fusion}) of VIS with each IR, scored against the aligned IR and VIS (mmif convention)\n")
        print(fusion_table(args.data / "unaligned" / "roadscene", args.methods, args.fusion, args.cache, args.weights, args.limit))


if __name__ == "__main__":
    main()
