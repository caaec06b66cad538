"""The registration campaign's training pairs, as JSON records for ``fuse train -m register``.

    python campaigns/register_pairs.py --data ../shared/data | fuse train -m register -o runs/register

RoadScene, LLVIP and ``msrs_extra`` pairs, in that order, each set sorted by IR file name, less the
RoadScene scenes that are also in ``unaligned/roadscene`` (the benchmark, found by content) and the
validation pairs :data:`stages.training.registration.HELD_OUT`. Prints one ``{"id", "ir", "vis"}``
per line, as ``fuse pairs`` does; stderr says how many and which pairs were left out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.core.images import luminance, read_image  # noqa: E402
from stages.core.records import write_records  # noqa: E402
from stages.training.registration import HELD_OUT  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TRAIN_SETS = ("roadscene", "llvip", "msrs_extra")


def training_pairs(data: Path = DATA, exclude_set: str = "unaligned/roadscene") -> tuple[list[dict], list[str]]:
    """Records ``{"id", "ir", "vis"}`` of the training sets, without the benchmark's scenes and :data:`HELD_OUT`.

    A RoadScene pair is left out when its visible image equals (mean absolute
    difference < 2/255, same size) a visible image of ``exclude_set``.
    Returns ``(records, excluded_ids)``.
    """
    excluded_vis = [luminance(read_image(p)) for p in sorted((data / exclude_set / "vis").glob("*"))]
    records, excluded = [], []
    for name in TRAIN_SETS:
        for ir in sorted((data / name / "ir").glob("*")):
            vis = next((data / name / "vis").glob(ir.stem + ".*"), None)
            if vis is None:
                continue
            rec = {"id": f"{name}/{ir.stem}", "ir": str(ir), "vis": str(vis)}
            if rec["id"] in HELD_OUT:
                excluded.append(rec["id"])
                continue
            if name == "roadscene":
                v = luminance(read_image(vis))
                if any(e.shape == v.shape and float(np.abs(e - v).mean()) < 2 / 255 for e in excluded_vis):
                    excluded.append(rec["id"])
                    continue
            records.append(rec)
    return records, excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: %(default)s)")
    records, excluded = training_pairs(parser.parse_args().data)
    print(f"{len(records)} training pairs; left out {len(excluded)}: {' '.join(excluded)}", file=sys.stderr, flush=True)
    write_records(records)


if __name__ == "__main__":
    main()
