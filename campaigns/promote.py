"""Promote a campaign's checkpoint to the shipped weights, only when validation improves.

    python campaigns/promote.py refinefuse campaigns/refinefuse-msrs --val runs/refinefuse-msrs/val [--dry-run]
    python campaigns/promote.py textdfh campaigns/textdfh-msrs --val runs/dfh-base-msrs/val

Every learned fusion method is scored as ``fuse fuse -m METHOD --weights FILE`` fuses (through
:func:`fuse_api.fuse`, so text-guided networks get their captions and masks as in the CLI).

Selection uses the campaign's validation pairs only (``VAL/ir``, ``VAL/vis``: held-out training-set
pairs): the candidate is promoted when its mean Qabf is higher and its VIF no lower than the shipped
weights'. The evaluation sets (MSRS's 26 pairs, TNO's 41) are then scored for the model card, as a
report: they never decide. The shipped card (``stages/weights/<method>.json``) becomes the campaign's
card plus ``lineage`` (every earlier run that led to these weights, summarised) and ``promotions``
(steps, samples seen, wall time, data, validation and evaluation at each promotion).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fuse_api import fuse  # noqa: E402
from stages.core.images import to_uint8  # noqa: E402
from stages.methods.specs import LEARNED  # noqa: E402

#: the networks the generic loop trains (their loss takes only the fused image and the pair)
NETWORKS = {name: spec for name, spec in LEARNED.items() if spec.trainer == "stages.training.loop:train"}
from stages.methods.registry import WEIGHTS_DIR  # noqa: E402
from stages.metrics import compute_metrics  # noqa: E402
from stages.training.loop import VAL_METRICS, load_pair  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EVALUATION = {"msrs": DATA / "msrs", "tno": DATA / "tno"}


def folder_pairs(root: Path) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Ids and ``(ir, vis)`` float luminance images of ``root/ir/*`` with a same-stem file in ``root/vis/``."""
    vis = {p.stem: p for p in (root / "vis").iterdir()}
    irs = [p for p in sorted((root / "ir").iterdir()) if p.stem in vis]
    return [p.stem for p in irs], [load_pair(p, vis[p.stem]) for p in irs]


def scores(method: str, weights: Path, images: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean :data:`~stages.training.loop.VAL_METRICS` (mmif) of ``method`` with ``weights`` on full-size pairs."""
    sums: dict[str, float] = {}
    for ir, vis in images:
        fused = fuse(ir, vis, method, weights=weights, device="cpu")
        for name, value in compute_metrics(to_uint8(ir), to_uint8(vis), to_uint8(fused), names=VAL_METRICS).items():
            sums[name] = sums.get(name, 0.0) + float(value)
    return {name: round(total / len(images), 4) for name, total in sums.items()}


def training_loss(method: str, weights: Path | None, images: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean of the method's own training loss on full-size pairs, for its output with ``weights`` or, with
    ``None``, for pixel-max (does the network reach the loss of the baseline it must beat?); plain networks only."""
    from stages.methods.learned import NetworkFuser, load_network

    fuser = None if weights is None else NetworkFuser(load_network(method, weights), half=False)
    losses = []
    for ir_np, vis_np in images:
        ir, vis = (torch.from_numpy(a)[None, None] for a in (ir_np, vis_np))
        fused = torch.maximum(ir, vis) if fuser is None else fuser(ir, vis)
        losses.append(float(NETWORKS[method].loss_fn(fused, ir, vis)))
    return round(sum(losses) / len(losses), 5)


def summary(card: dict) -> dict:
    """What a model card says about the run that made it, without the per-epoch lists."""
    keys = ("method", "epochs", "seconds_trained", "data", "crop", "batch_size", "lr", "optimizer", "schedule",
            "init", "salient_targets", "augmentation")
    steps_per_epoch = math.ceil(sum(card["data"]["train"].values()) / card["batch_size"])
    return {**{k: card[k] for k in keys if k in card}, "steps": card["epochs"] * steps_per_epoch,
            "samples_seen": card["epochs"] * sum(card["data"]["train"].values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("campaign", type=Path, help="folder holding METHOD.safetensors and METHOD.json")
    parser.add_argument("--val", type=Path, required=True, help="validation pairs: VAL/ir and VAL/vis")
    parser.add_argument("--dry-run", action="store_true", help="compare and report; change nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    candidate_path = args.campaign / f"{args.method}.safetensors"
    card = json.loads(candidate_path.with_suffix(".json").read_text())
    shipped_card_path = WEIGHTS_DIR / f"{args.method}.json"
    shipped_card = json.loads(shipped_card_path.read_text())
    shipped_path = WEIGHTS_DIR / f"{args.method}.safetensors"

    val_ids, val_images = folder_pairs(args.val)
    val_new, val_old = scores(args.method, candidate_path, val_images), scores(args.method, shipped_path, val_images)
    print(f"validation ({len(val_ids)} pairs): shipped Qabf {val_old['Qabf']:.4f} VIF {val_old['VIF']:.4f}; "
          f"candidate (epoch {card['epochs']}) Qabf {val_new['Qabf']:.4f} VIF {val_new['VIF']:.4f}")
    val_loss = None
    if args.method in NETWORKS:  # the text-guided losses need their guidance: not scored here
        val_loss = {"candidate": training_loss(args.method, candidate_path, val_images),
                    "shipped_before": training_loss(args.method, shipped_path, val_images),
                    "max": training_loss(args.method, None, val_images)}
        print(f"validation loss ({args.method}'s own): {val_loss}")
    if not (val_new["Qabf"] > val_old["Qabf"] and val_new["VIF"] >= val_old["VIF"]):
        print("not promoted: validation did not improve")
        return 1
    evaluation = {}
    for name, root in EVALUATION.items():
        if (root / "ir").is_dir():
            ids, images = folder_pairs(root)
            evaluation[name] = {"pairs": len(ids), "candidate": scores(args.method, candidate_path, images),
                                "shipped_before": scores(args.method, shipped_path, images)}
            print(f"{name} ({len(ids)} pairs, reported only): before {evaluation[name]['shipped_before']}, "
                  f"after {evaluation[name]['candidate']}")
    if args.dry_run:
        return 0
    run = summary(card)
    promotion = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "campaign": str(args.campaign),
                 **{k: run[k] for k in ("epochs", "steps", "samples_seen", "seconds_trained", "data")},
                 "validation": {"pairs": val_ids, "candidate": val_new, "shipped_before": val_old,
                                "loss": val_loss},
                 "evaluation_reported_only": evaluation}
    lineage = shipped_card.get("lineage", []) + ([] if shipped_card.get("lineage") else [summary(shipped_card)])
    if card.get("init") and shipped_card.get("promotions"):
        lineage.append({k: v for k, v in shipped_card["promotions"][-1].items() if k != "evaluation_reported_only"})
    card.update({"lineage": lineage, "promotions": shipped_card.get("promotions", []) + [promotion]})
    shutil.copyfile(candidate_path, shipped_path)
    shipped_card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"promoted {candidate_path} to {WEIGHTS_DIR / (args.method + '.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
