"""The ``score`` stage: fusion metrics per pair, and the table of them.

Each record needs ``ir``, ``vis`` and ``fused``. Images are read as 8-bit, as
every reference implementation does (:func:`fuse_cli.images.read_uint8`); the
metric definitions and the colour handling of each convention live in
:mod:`stages.metrics`.
"""
from __future__ import annotations

import csv
import io
import json
import math

from fuse_cli.images import ImageError, read_uint8
from stages.base import Stage, StageError, record_path
from stages.metrics import DEFAULT_CONVENTION, METRICS, compute_metrics


def parse_metric_names(text: str | None) -> list[str]:
    """``"en,SD,qabf"`` → canonical names; ``ValueError`` naming the valid ones."""
    if not text:
        return list(METRICS)
    canonical = {name.lower(): name for name in METRICS}
    names = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lower() not in canonical:
            raise ValueError(f"unknown metric {part!r}; choose from: {', '.join(METRICS)}")
        names.append(canonical[part.lower()])
    return names


class ScoreStage(Stage):
    """Compute the chosen metrics for each record; adds ``scores``."""

    name = "score"

    def __init__(self, metrics: list[str], convention: str = DEFAULT_CONVENTION):
        self.metrics, self.convention = metrics, convention

    def process_one(self, record: dict) -> dict:
        pair = record.get("id", "?")
        try:
            images = [read_uint8(record_path(record, key)) for key in ("ir", "vis", "fused")]
        except ImageError as exc:
            raise StageError(f"pair {pair}: {exc}") from None
        if len({img.shape[:2] for img in images}) != 1:
            sizes = ", ".join(f"{k} {img.shape[1]}x{img.shape[0]}" for k, img in zip(("ir", "vis", "fused"), images))
            raise StageError(f"pair {pair}: sizes differ ({sizes}); {record['fused']}")
        return {"scores": compute_metrics(*images, names=self.metrics, convention=self.convention)}


def score_rows(records: list[dict], metrics: list[str], convention: str) -> list[dict]:
    """Per-image rows then one ``mean`` row per method, in first-seen method order."""
    rows, by_method = [], {}
    for record in records:
        if "scores" not in record:
            continue
        method = record.get("method", "")
        rows.append({"id": record["id"], "method": method, "convention": convention, **record["scores"]})
        by_method.setdefault(method, []).append(record["scores"])
    for method, scores in by_method.items():
        mean = {m: _nanmean([s.get(m, math.nan) for s in scores]) for m in metrics}
        rows.append({"id": "mean", "method": method, "convention": convention, **mean})
    return rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def format_rows(rows: list[dict], metrics: list[str], fmt: str) -> str:
    """Render rows as ``csv``, ``json`` (JSON Lines), ``table`` (aligned text) or ``markdown``."""
    columns = ["id", "method", "convention", *metrics]
    if fmt == "json":
        return "".join(json.dumps({c: row.get(c) for c in columns}) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
        return buffer.getvalue()
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in columns) + "|")
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "".join("  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) + "\n" for r in cells)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def plot_means(rows: list[dict], metrics: list[str], path) -> None:
    """Bar chart per metric, one bar per method (the mean rows), saved atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fuse_cli.images import atomic_file

    means = [row for row in rows if row["id"] == "mean"]
    methods = [row["method"] or "fused" for row in means]
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes.flat, metrics):
        values = [row[metric] for row in means]
        ax.bar(range(len(methods)), values, color=[colours[i % 10] for i in range(len(methods))])
        arrow = "↑" if METRICS[metric].higher_is_better else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=10)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    convention = means[0]["convention"] if means else ""
    fig.suptitle(f"mean scores ({convention} convention)", fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
