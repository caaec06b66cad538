"""Text guidance ablation: the shipped text-guided networks with their advisor captions against one fixed text.

    python benchmarks/bench_text.py [--sets tno msrs] [--methods textdfh tesg] [--limit N] [--workers N]
                                    [--cache build/bench/fused] [--fixed-text "..."]

The papers' ablations retrain without the text (Text-DFH with a fixed text, TeSG without
mask guidance); a retraining costs this CPU about 40 minutes per network, so this bench
asks the cheaper question first: how much do the shipped weights use the text they are
given? Each method fuses every pair twice through the fuse stage — with the ``advisor``
caption of each pair (what ``fuse fuse -m NAME`` does; read from ``bench_quality.py``'s
cache) and with ``--fixed-text`` for every pair (the method factory's ``fixed_text``) —
and both are scored with the score stage (``mmif`` convention, mean over pairs). The
reference rows are ``dfh-base`` (Text-DFH's frozen first stage, no text at all) and
``max``. A retrained ablation is ``fuse train -m textdfh --fixed-text "..."`` /
``fuse train -m tesg --no-mask-guidance``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_quality import DATA, ROOT, fuse_method, score_table  # noqa: E402
from stages.core.records import pair_directories  # noqa: E402
from stages.score import parse_metric_names  # noqa: E402

FIXED_TEXT = "an infrared and visible image of a scene"
METRICS = "EN,SD,SF,AG,SSIM,Qabf,VIF"
REFERENCES = ("max", "dfh-base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=["tno", "msrs"])
    parser.add_argument("--methods", nargs="+", default=["textdfh", "tesg"], choices=["textdfh", "tesg"])
    parser.add_argument("--fixed-text", default=FIXED_TEXT)
    parser.add_argument("--limit", type=int, help="use only the first N pairs of each set")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads for scoring")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "fused")
    args = parser.parse_args(argv)
    metrics = parse_metric_names(METRICS)
    status = 0
    print(f'Fixed text: "{args.fixed_text}". Shipped weights, CPU; the advisor rows are `fuse fuse -m NAME` as shipped.')
    for name in args.sets:
        root = args.data / name
        if not (root / "ir").is_dir():
            sys.exit(f"bench_text: {root} not found (needs ../shared/data)")
        records = pair_directories({"ir": root / "ir", "vis": root / "vis"}).records[: args.limit]
        fused = []
        for method in (*REFERENCES, *args.methods):
            fused += fuse_method(records, method, args.cache / name / method, "cpu", False)[0]
        for method in args.methods:
            variant = f"{method} (fixed text)"
            result = fuse_method(records, method, args.cache / name / f"{method}-fixed-text", "cpu", False,
                                 {"fixed_text": args.fixed_text})
            fused += [{**r, "method": variant} for r in result[0]]
        print(f"\n### {name.upper()}: {len(records)} pairs, mean over pairs\n")
        table, set_status = score_table(fused, metrics, args.workers, len(records))
        print(table)
        status = max(status, set_status)
    return status


if __name__ == "__main__":
    sys.exit(main())
