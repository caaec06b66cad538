"""A campaign's learning curve (validation against steps) and the steps projected to reach a target.

    python campaigns/curve.py campaigns/refinefuse-msrs/refinefuse.json --msrs-target 0.68
    python campaigns/curve.py campaigns/tesg-msrs/tesg.json campaigns/tesg-cosine/tesg.json --msrs-target 0.70

Reads only model cards (no image): each card's per-epoch ``val_metrics`` (the 8 held-out msrs_extra
pairs), ``batch_size`` and ``data`` give validation Qabf and VIF against optimiser steps. Several cards
are one run after another (a fine-tune started with ``--init`` from the run before): their steps add up.

The MSRS target (the issue's, on the 26 evaluation pairs) is translated to the validation pairs by the
gap between the two at the method's last promotion (``stages/weights/<method>.json``: MSRS Qabf minus
validation Qabf, both measured on the same weights); the evaluation pairs are never read here. The
projection fits ``Qabf = a + b · ln(steps)`` to the last half of the epochs and solves it for the target:
the usual shape of these curves, which flatten as the rate decays; a plateau (``b`` ≤ 0) projects never.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def curve(cards: list[Path]) -> list[dict]:
    """One row per epoch over ``cards`` in order: cumulative steps, hours, validation Qabf and VIF."""
    rows, steps, seconds = [], 0, 0.0
    for path in cards:
        card = json.loads(path.read_text())
        per_epoch = math.ceil(sum(card["data"]["train"].values()) / card["batch_size"])
        epoch_seconds = card["seconds_trained"] / max(1, card["epochs"])
        for epoch, metrics in enumerate(card.get("val_metrics", []), 1):
            rows.append({"run": path.parent.name, "epoch": epoch, "steps": steps + epoch * per_epoch,
                         "hours": (seconds + epoch * epoch_seconds) / 3600, "lr": card["lr"],
                         "schedule": card["schedule"], "Qabf": metrics["Qabf"], "VIF": metrics["VIF"]})
        steps += card["epochs"] * per_epoch
        seconds += card["seconds_trained"]
    return rows


def msrs_gap(method: str) -> float:
    """MSRS Qabf minus validation Qabf at the last promotion of ``method``'s shipped weights."""
    promotion = json.loads((ROOT / "stages" / "weights" / f"{method}.json").read_text())["promotions"][-1]
    return promotion["evaluation_reported_only"]["msrs"]["candidate"]["Qabf"] - promotion["validation"]["candidate"]["Qabf"]


def projection(rows: list[dict], target: float) -> tuple[float, float, float | None]:
    """``(a, b, steps)`` of the fit ``Qabf = a + b · ln(steps)`` over the last half of ``rows``; steps ``None`` if flat."""
    tail = rows[len(rows) // 2:]
    b, a = np.polyfit(np.log([r["steps"] for r in tail]), [r["Qabf"] for r in tail], 1)
    return a, b, (math.exp((target - a) / b) if b > 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cards", nargs="+", type=Path, help="campaign model cards, in the order they ran")
    parser.add_argument("--msrs-target", type=float, required=True, help="the MSRS Qabf to reach")
    args = parser.parse_args()
    method = json.loads(args.cards[0].read_text())["method"]
    rows = curve(args.cards)
    gap = msrs_gap(method)
    target = args.msrs_target - gap
    print(f"{method}: validation Qabf (8 held-out msrs_extra pairs) against steps; MSRS - validation at the last "
          f"promotion {gap:+.3f}, so MSRS {args.msrs_target} ~ validation {target:.3f}\n")
    print("| run | epoch | steps | hours (CPU) | lr | val Qabf | val VIF |\n|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['epoch']} | {r['steps']} | {r['hours']:.2f} | {r['lr']:g} {r['schedule']} | "
              f"{r['Qabf']:.4f} | {r['VIF']:.4f} |")
    a, b, steps = projection(rows, target)
    last = rows[-1]
    print(f"\nfit over the last {len(rows) - len(rows) // 2} epochs: Qabf = {a:.4f} + {b:.4f} ln(steps)")
    if steps is None:
        print("the curve is flat or falling there: no projection")
    elif steps > 1000 * last["steps"]:
        print(f"the fit is nearly flat there: validation {target:.3f} lies beyond 1000x the {last['steps']} steps so far")
    elif steps <= last["steps"]:
        print(f"validation {target:.3f} reached by the fit at {steps:.0f} steps")
    else:
        hours = last["hours"] / last["steps"] * steps
        print(f"projected: validation Qabf {target:.3f} at {steps:.3g} steps ({steps / last['steps']:.1f}x the "
              f"{last['steps']} so far; about {hours:.0f} h at this run's CPU rate)")


if __name__ == "__main__":
    main()
