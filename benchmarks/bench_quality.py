"""Fusion quality on TNO, MSRS and M3FD: every method's mean score per metric, one table per set.

    python benchmarks/bench_quality.py [--sets tno msrs m3fd] [--methods mean max ...] [--metrics EN SSIM ...]
                                       [--limit N] [--workers N] [--cache build/bench/fused] [--overwrite]

Each registered method fuses the pairs through the real stage (``FuseStage`` under the
batch runner) into ``CACHE/<set>/<method>/<id>.png``; pairs already there are reused,
so a re-run only fuses what is missing (``--overwrite`` fuses them again); images
another recipe made (other packaged weights, options, or a fuse that kept no recipes)
are fused again. A learned
method without weights is skipped with a note. The fused images are scored by the
score stage (``ScoreStage``, ``mmif`` convention); the table holds the mean over pairs,
the best value of each column in bold. On TNO the published methods' own outputs
(``tno/published/<Method>/``) are scored too, as rows marked "(published)".
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuse_cli.options import RunOptions  # noqa: E402
from stages.core.provenance import explain, read_recipe  # noqa: E402
from stages.core.records import pair_directories  # noqa: E402
from fuse_cli.runner import Reporter, run_stage  # noqa: E402
from stages.fuse import FuseStage  # noqa: E402
from stages.metrics import DEFAULT_CONVENTION, METRICS  # noqa: E402
from stages.methods.registry import list_methods  # noqa: E402
from stages.score import ScoreStage, parse_metric_names, score_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PUBLISHED = " (published)"
# What the papers report on MSRS (their full 361-pair test split; ours is 26 of its pairs), mmif-style metrics.
PAPER_MSRS = {
    "RefineFuse (its Table 1)": {"Qabf": 0.719, "VIF": 1.055},
    "TeSG (its Table 1)": {"Qabf": 0.733, "VIF": 1.080},
    "Text-DFH (MLLM-guided paper, Table 3)": {"Qabf": 0.637},
}


def weights_stamp(method: str) -> str | None:
    """The first 16 hex digits of the SHA-256 of ``method``'s packaged weights; ``None`` when it has none."""
    path = ROOT / "stages" / "weights" / f"{method}.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def fuse_method(records: list[dict], method: str, out_dir: Path, device: str, overwrite: bool,
                options: dict | None = None) -> tuple[list[dict], int] | None:
    """Fused records of ``method`` (cached outputs reused) and how many were fused now; ``None`` without weights.

    ``options`` go to the method's factory (e.g. ``{"fixed_text": "..."}`` for the text-guided networks).
    Cached outputs another recipe made (other weights or options, or a fuse that kept no recipes) are fused again.
    """
    try:
        stage = FuseStage(out_dir, method, device, method_options=options)
    except FileNotFoundError:
        return None
    overwrite = overwrite or made_otherwise(stage, records)
    fused: list[dict] = []
    todo = len(records) if overwrite else sum(not stage.output_path(r).exists() for r in records)
    run_stage(stage, records, RunOptions(overwrite=overwrite, batch_size=1, quiet=True),
              Reporter("fuse", quiet=True), emit=fused.append)
    return fused, todo


def made_otherwise(stage: FuseStage, records: list[dict]) -> bool:
    """Whether a cached output of ``records`` carries another recipe than ``stage``'s (:mod:`stages.core.provenance`)."""
    return any(explain(read_recipe(path), stage.recipe(r)) for r in records if (path := stage.output_path(r)).exists())


def published_records(root: Path, records: list[dict]) -> list[dict]:
    """Records of ``root/published/<Method>/<id>.*`` for the selected pairs, method ``"<Method> (published)"``."""
    folder = root / "published"
    if not folder.is_dir():
        return []
    wanted = {r["id"] for r in records}
    out = []
    for method in sorted(p for p in folder.iterdir() if p.is_dir()):
        pairs = pair_directories({"ir": root / "ir", "vis": root / "vis", "fused": method}).records
        out += [{**r, "method": method.name + PUBLISHED} for r in pairs if r["id"] in wanted]
    return out


def markdown_table(means: list[dict], metrics: list[str], counts: dict[str, int], total: int) -> str:
    """Rows = methods (with ``k/total`` where pairs failed), columns = metrics; the best per column in bold."""
    best = {}
    for metric in metrics:
        values = [row[metric] for row in means if not math.isnan(row[metric])]
        if values:
            best[metric] = max(values) if METRICS[metric].higher_is_better else min(values)
    arrows = [f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in metrics]
    lines = ["| method | " + " | ".join(arrows) + " |", "|---|" + "---:|" * len(metrics)]
    for row in means:
        name = row["method"] + ("" if counts[row["method"]] == total else f" ({counts[row['method']]}/{total})")
        cells = []
        for metric in metrics:
            text = f"{row[metric]:.4g}"
            cells.append(f"**{text}**" if row[metric] == best.get(metric) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_table(fused: list[dict], metrics: list[str], workers: int, total: int) -> tuple[str, int]:
    """Score fused records (``ScoreStage``, default convention): the markdown table of means per method, exit status."""
    scored: list[dict] = []
    opts = RunOptions(batch_size=4 * workers, workers=workers, quiet=True)
    status = run_stage(ScoreStage(metrics), fused, opts, Reporter("score", quiet=True), emit=scored.append)
    means = [row for row in score_rows(scored, metrics, DEFAULT_CONVENTION) if row["id"] == "mean"]
    counts = {row["method"]: 0 for row in means}
    for record in scored:
        if "scores" in record:
            counts[record["method"]] += 1
    return markdown_table(means, metrics, counts, total), status


def bench_set(name: str, args: argparse.Namespace, metrics: list[str]) -> int:
    """Fuse, score and print the table of one set; returns 1 when any pair failed."""
    root = args.data / name
    records = pair_directories({"ir": root / "ir", "vis": root / "vis"}).records[: args.limit]
    fused, fused_now, no_weights = [], [], []
    for method in args.methods:
        result = fuse_method(records, method, args.cache / name / method, args.device, args.overwrite)
        if result is None:
            no_weights.append(method)
            continue
        fused += result[0]
        fused_now.append(f"{method} {result[1]}")
    if name == "tno":
        fused += published_records(root, records)
    print(f"\n### {name.upper()}: {len(records)} pairs, {DEFAULT_CONVENTION} convention, mean over pairs\n")
    table, status = score_table(fused, metrics, args.workers, len(records))
    print(table)
    cache = args.cache / name
    shown = cache.relative_to(ROOT) if cache.is_relative_to(ROOT) else cache
    print(f"\nFused now (the rest read from `{shown}`): {', '.join(fused_now)}.")
    if no_weights:
        print(f"Skipped, no weights: {', '.join(no_weights)}.")
    if name == "msrs":
        print("\nAs the papers report on MSRS (361 test pairs; the 26 here are some of them):\n")
        print("| paper | Qabf ↑ | VIF ↑ |\n|---|---:|---:|")
        for paper, values in PAPER_MSRS.items():
            print(f"| {paper} | {values.get('Qabf', '—')} | {values.get('VIF', '—')} |")
    return status


def main(argv: list[str] | None = None) -> int:
    methods = [m.name for m in list_methods()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=["tno", "msrs", "m3fd"])
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--metrics", nargs="+", help="metric names (default: all 19)")
    parser.add_argument("--limit", type=int, help="use only the first N pairs of each set")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads for scoring")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench" / "fused")
    parser.add_argument("--overwrite", action="store_true", help="fuse cached pairs again")
    args = parser.parse_args(argv)
    try:
        metrics = parse_metric_names(",".join(args.metrics or []))
    except ValueError as exc:
        parser.error(str(exc))
    missing = [s for s in args.sets if not (args.data / s / "ir").is_dir()]
    if missing:
        sys.exit(f"bench_quality: {', '.join(str(args.data / s) for s in missing)} not found (needs ../shared/data)")
    return max(bench_set(name, args, metrics) for name in args.sets)


if __name__ == "__main__":
    sys.exit(main())
