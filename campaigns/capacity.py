"""Data or capacity? A network trained briefly on msrs_extra alone, its own loss against pixel-max's.

    OMP_NUM_THREADS=1 python campaigns/capacity.py refinefuse --epochs 40 -o runs/capacity-refinefuse

Trains ``METHOD`` from its random start on msrs_extra less the 8 validation pairs (112 full-size MSRS
pairs, night and day: the evaluation set's own domain), then computes the method's training loss on the
26 MSRS evaluation pairs (held out: measured, never trained or selected on) for that network, the shipped
weights and pixel-max. If the network trained on the evaluation domain reaches max's loss, what the
shipped network lacks is data or steps; if it stays above, the network (or its optimisation at this
budget) cannot express what max does under its own loss. Resumes from ``OUT`` when run again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "campaigns"))
from promote import DATA, NETWORKS, folder_pairs, training_loss  # noqa: E402
from stages.methods.registry import WEIGHTS_DIR  # noqa: E402
from stages.training.loop import train  # noqa: E402

VAL_IDS = ("00111D", "00504D", "00754N", "00874N", "00988N", "01102N", "01222N", "01335N")  # campaigns/msrs.sh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=sorted(NETWORKS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    extra = DATA / "msrs_extra"
    pairs = [(p, extra / "vis" / p.name) for p in sorted((extra / "ir").glob("*.png")) if p.stem not in VAL_IDS]
    val = [(extra / "ir" / f"{i}.png", extra / "vis" / f"{i}.png") for i in VAL_IDS]
    resume = args.out / f"{args.method}.safetensors"
    weights = train(args.method, pairs, args.out, epochs=args.epochs, batch_size=8, lr=5e-4, crop=128,
                    optimizer="adam", resume=resume if resume.is_file() else None, val_pairs=val, progress=False)
    _, msrs = folder_pairs(DATA / "msrs")
    losses = {"trained on msrs_extra alone": training_loss(args.method, weights, msrs),
              "shipped": training_loss(args.method, WEIGHTS_DIR / f"{args.method}.safetensors", msrs),
              "max": training_loss(args.method, None, msrs)}
    card = json.loads(weights.with_suffix(".json").read_text())
    print(f"{args.method}, {card['epochs']} epochs on {len(pairs)} msrs_extra pairs ({card['seconds_trained'] / 60:.0f} min): "
          f"its own loss on the {len(msrs)} MSRS evaluation pairs")
    for name, value in losses.items():
        print(f"  {name}: {value:.5f}")
    (args.out / "capacity.json").write_text(json.dumps({"epochs": card["epochs"], "pairs": len(pairs),
                                                        "msrs_loss": losses}, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
