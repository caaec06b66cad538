"""Promote a registration campaign's weights to the shipped ones, only when validation improves.

    python campaigns/promote_register.py campaigns/register-night --val runs/register-night/val [--dry-run]

Selection uses the campaign's validation pairs only (``VAL/ir``, ``VAL/vis``: held-out msrs_extra pairs,
deformed like the training views by ``benchmarks/bench_register.py --deform``): ``register.safetensors``
is promoted when ``fuse register -m net``'s mean end-point error is lower than the shipped weights'.
``tard.safetensors`` (the same registration + the fusion head), when the folder has one, goes with
it only when its fused validation pairs also keep their Qabf and VIF. The evaluation sets (``unaligned/roadscene``, MSRS's
26 pairs deformed the same way) are then measured for the model card, as a report: they never decide.
The shipped card (``stages/weights/register.json``) becomes the campaign's card plus ``lineage`` and
``promotions``, as ``campaigns/promote.py`` writes them for the fusion networks.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_register import deformed_pairs, evaluate, load_pairs  # noqa: E402
from promote import folder_pairs, scores  # noqa: E402
from stages.methods.registry import WEIGHTS_DIR  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def mean_epe(pairs: list[dict], weights: Path | None) -> float:
    """Mean end-point error (px) over ``pairs`` of ``fuse register -m net`` with ``weights``, or unregistered (``None``)."""
    rows = evaluate("none", pairs, None)[0] if weights is None else evaluate("net", pairs, weights)[0]
    return round(float(np.mean([row["epe"] for row in rows])), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="folder holding register.safetensors, tard.safetensors, register.json")
    parser.add_argument("--val", type=Path, required=True, help="validation pairs: VAL/ir and VAL/vis (aligned)")
    parser.add_argument("--dry-run", action="store_true", help="compare and report; change nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    card = json.loads((args.campaign / "register.json").read_text())
    shipped_card_path = WEIGHTS_DIR / "register.json"
    shipped_card = json.loads(shipped_card_path.read_text())
    candidate, shipped = args.campaign / "register.safetensors", WEIGHTS_DIR / "register.safetensors"

    val_pairs = deformed_pairs(args.val)
    val = {"pairs": [p["id"] for p in val_pairs], "unregistered": mean_epe(val_pairs, None),
           "candidate": mean_epe(val_pairs, candidate), "shipped_before": mean_epe(val_pairs, shipped)}
    print(f"validation EPE px ({len(val_pairs)} pairs): unregistered {val['unregistered']}, "
          f"shipped {val['shipped_before']}, candidate {val['candidate']}")
    if not val["candidate"] < val["shipped_before"]:
        print("not promoted: validation did not improve")
        return 1
    tard, tard_promoted = None, False
    if (args.campaign / "tard.safetensors").is_file():  # a folder may hold the registration network alone
        val_images = folder_pairs(args.val)[1]
        tard = {"candidate": scores("tard", args.campaign / "tard.safetensors", val_images),
                "shipped_before": scores("tard", WEIGHTS_DIR / "tard.safetensors", val_images)}
        tard_promoted = (tard["candidate"]["Qabf"] >= tard["shipped_before"]["Qabf"]
                         and tard["candidate"]["VIF"] >= tard["shipped_before"]["VIF"])
        print(f"tard on the aligned validation pairs: shipped {tard['shipped_before']}, candidate {tard['candidate']}"
              f" -> {'promoted' if tard_promoted else 'kept'}")
    evaluation = {}
    for name, pairs in {"unaligned/roadscene": load_pairs(DATA / "unaligned" / "roadscene"),
                        "msrs (deformed like the training views)": deformed_pairs(DATA / "msrs")}.items():
        if pairs:
            evaluation[name] = {"pairs": len(pairs), "unregistered": mean_epe(pairs, None),
                                "candidate": mean_epe(pairs, candidate), "shipped_before": mean_epe(pairs, shipped)}
            print(f"{name} EPE px (reported only): {evaluation[name]}")
    if args.dry_run:
        return 0
    promotion = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "campaign": str(args.campaign),
                 "epochs": card["epochs"], "fusion_epochs": card["fusion_epochs"], "seconds_trained": card["seconds"],
                 "data": card["data"], "files": ["register.safetensors"] + (["tard.safetensors"] if tard_promoted else []),
                 "validation_epe_px": val, "validation_tard": tard, "evaluation_reported_only": evaluation}
    summary_keys = ("data", "epochs", "fusion_epochs", "batch_size", "lr", "crop", "init", "seconds")
    earlier = [shipped_card.get("init_card"), shipped_card] if not shipped_card.get("lineage") else []
    lineage = shipped_card.get("lineage", []) + [{k: c[k] for k in summary_keys if k in c} for c in earlier if c]
    card.pop("resume", None)
    card.update({"lineage": lineage, "promotions": shipped_card.get("promotions", []) + [promotion]})
    shutil.copyfile(candidate, shipped)
    shipped_card_path.write_text(json.dumps(card, indent=2) + "\n")
    if tard_promoted:  # one run made both files: the tard card is the same
        shutil.copyfile(args.campaign / "tard.safetensors", WEIGHTS_DIR / "tard.safetensors")
        (WEIGHTS_DIR / "tard.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"promoted {', '.join(promotion['files'])} from {args.campaign}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
