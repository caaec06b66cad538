"""The ``score`` stage: fusion metrics per pair, and the table of them.

Each record needs ``ir``, ``vis`` and ``fused``. Images are read as 8-bit, as
every reference implementation does (:func:`stages.core.images.read_uint8`); the
metric definitions and the colour handling of each convention live in
:mod:`stages.metrics`.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from stages.core.images import ImageError, luminance, read_image, read_uint8
from stages.core.provenance import read_recipe
from stages.core.stage import Stage, StageError, record_path
from stages.metrics import DEFAULT_CONVENTION, METRICS, REGISTRATION_METRICS, compute_metrics, registration_metrics
from stages.metrics.registration import residual_displacement
from stages.methods.registry import unknown_name


def parse_metric_names(text: str | None, registration: bool = False) -> list[str]:
    """``"en,SD,qabf"`` → canonical names; ``ValueError`` naming the valid ones.

    With ``registration`` (ground truth given) the default is the registration
    metrics only, and their names are accepted too.
    """
    if not text:
        return list(REGISTRATION_METRICS) if registration else list(METRICS)
    known = [*METRICS, *REGISTRATION_METRICS] if registration else list(METRICS)
    canonical = {name.lower(): name for name in known}
    names = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lower() not in canonical:
            raise ValueError(unknown_name("metric", part, known))
        names.append(canonical[part.lower()])
    return names


class ScoreStage(Stage):
    """Compute the chosen metrics for each record; adds ``scores``.

    Fusion metrics need ``ir``, ``vis`` and ``fused``. Registration metrics need
    ``grid_gt`` and/or ``aligned``, folders holding per id the dataset's deformation
    ``<id>.npy`` (the grid that made the unaligned IR from the aligned one, as in
    ``unaligned/roadscene/grid``) and the aligned IR image:

    * EPE — mean end-point error in VIS pixels of the record's ``grid`` (from
      ``fuse register``; identity when absent, i.e. the unregistered error)
      composed with the deformation, over pixels that stay inside both images;
    * MAE, NCC — of the record's ``ir`` (the registered image) against the
      aligned IR, on 0–255 luminance, over the valid pixels (the record's
      ``valid`` mask when ``--mask-invalid`` made one).
    """

    name = "score"

    def __init__(self, metrics: list[str], convention: str = DEFAULT_CONVENTION,
                 grid_gt: Path | None = None, aligned: Path | None = None, workers: int = 1):
        self.metrics, self.convention = metrics, convention
        self.grid_gt, self.aligned = grid_gt, aligned
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # a copy sent to a worker or actor starts its own pool

    def process(self, records: list[dict]) -> list[dict | Exception]:
        """Score the records, over ``workers`` processes when there are more than one (results in input order)."""
        if self.workers <= 1 or len(records) <= 1:
            return super().process(records)
        if self._pool is None:
            # spawned, not forked: a fork copies OpenCV's and OpenBLAS's thread pools mid-state, and the
            # workers then hung waiting on a lock that no thread of theirs would release
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self,))
        return list(self._pool.map(_score_in_worker, records))

    def process_one(self, record: dict) -> dict:
        pair = record.get("id", "?")
        scores = {}
        try:
            if [m for m in self.metrics if m not in REGISTRATION_METRICS]:
                scores.update(self._fusion_scores(record))
            if self.grid_gt or self.aligned:
                scores.update(self._registration_scores(record))
        except ImageError as exc:
            raise StageError(f"pair {pair}: {exc}") from None
        return {"scores": scores, **method_label(record)}

    def _fusion_scores(self, record: dict) -> dict:
        images = [read_uint8(record_path(record, key)) for key in ("ir", "vis", "fused")]
        if len({img.shape[:2] for img in images}) != 1:
            sizes = ", ".join(f"{k} {img.shape[1]}x{img.shape[0]}" for k, img in zip(("ir", "vis", "fused"), images))
            raise StageError(f"pair {record.get('id', '?')}: sizes differ ({sizes}); {record['fused']}")
        names = [m for m in self.metrics if m not in REGISTRATION_METRICS]
        return compute_metrics(*images, names=names, convention=self.convention)

    def _registration_scores(self, record: dict) -> dict:
        pair = str(record.get("id", "?"))
        registered = luminance(read_image(record_path(record, "ir"))) * 255.0
        h, w = registered.shape
        valid = np.ones((h, w), bool)
        if isinstance(record.get("valid"), str):
            valid = luminance(read_image(record["valid"])) > 0.5
            if valid.shape != (h, w):
                raise StageError(f"pair {pair}: {record['valid']}: valid mask is {valid.shape[1]}x{valid.shape[0]}, "
                                 f"the registered IR {record['ir']} is {w}x{h}")
        scores = {}
        if self.grid_gt:
            gt_path = self.grid_gt / f"{pair}.npy"
            if not gt_path.is_file():
                raise StageError(f"pair {pair}: {gt_path}: no ground-truth grid")
            deformation = _load_grid(gt_path, (h, w), pair)
            grid = _load_grid(Path(record["grid"]), (h, w), pair) if isinstance(record.get("grid"), str) else _identity_grid(h, w)
            error, inside = residual_displacement(grid, deformation)
            inside &= valid
            if not inside.any():
                raise StageError(f"pair {pair}: {gt_path}: no pixel of the grid falls inside both images; EPE undefined")
            scores["EPE"] = float(error[inside].mean())
        if self.aligned:
            matches = sorted(p for p in self.aligned.glob(f"{glob.escape(pair)}.*")
                             if p.stem == pair and not p.name.startswith("."))
            if not matches:
                raise StageError(f"pair {pair}: no aligned image {self.aligned}/{pair}.*")
            aligned = luminance(read_image(matches[0])) * 255.0
            try:
                scores.update(registration_metrics(registered=registered, aligned=aligned, valid=valid))
            except ValueError as exc:
                raise StageError(f"pair {pair}: {matches[0]}: {exc}") from None
        return scores


def _load_grid(path: Path, size: tuple[int, int], pair: str) -> np.ndarray:
    """A sampling grid ``(H, W, 2)`` from ``path``; :class:`StageError` unless it fits ``size`` and is finite."""
    try:
        grid = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StageError(f"pair {pair}: {path}: not a readable .npy grid ({exc})") from None
    h, w = size
    if grid.shape != (h, w, 2) or not np.issubdtype(grid.dtype, np.floating):
        raise StageError(f"pair {pair}: {path}: grid of shape {grid.shape} ({grid.dtype}) does not fit the "
                         f"{w}x{h} pair (expected float ({h}, {w}, 2))")
    bad = int(np.count_nonzero(~np.isfinite(grid)))
    if bad:
        raise StageError(f"pair {pair}: {path}: {bad} of {grid.size} grid values are NaN or infinite")
    return grid


def method_label(record: dict) -> dict:
    """``{"method": ...}`` from the recipe the fused file carries, when the record's label does not name that method.

    The file says what made it (:mod:`stages.core.provenance`); a record's label
    that starts with that method (a variant's name, ``"textdfh (fixed text)"``)
    is kept, any other label is replaced. Files without a recipe (published
    methods' outputs) keep the record's label.
    """
    made = read_recipe(record["fused"]) if isinstance(record.get("fused"), str) else None
    if made is None or made.get("stage") != "fuse" or not isinstance(made.get("method"), str):
        return {}
    label = record.get("method")
    return {} if isinstance(label, str) and label.startswith(made["method"]) else {"method": made["method"]}


_WORKER_STAGE: ScoreStage | None = None


def _start_worker(stage: ScoreStage) -> None:
    """Process-pool initializer: keep this worker's copy of the stage; one OpenCV thread per process."""
    import cv2

    global _WORKER_STAGE
    cv2.setNumThreads(1)
    _WORKER_STAGE = stage


def _score_in_worker(record: dict) -> dict | Exception:
    return Stage.process(_WORKER_STAGE, [record])[0]


def _identity_grid(h: int, w: int) -> np.ndarray:
    """The sampling grid that leaves an ``h × w`` image where it is (align_corners=False)."""
    xs, ys = (np.arange(w) + 0.5) * 2 / w - 1, (np.arange(h) + 0.5) * 2 / h - 1
    return np.stack(np.meshgrid(xs, ys), axis=-1).astype(np.float32)


def score_rows(records: list[dict], metrics: list[str], convention: str) -> list[dict]:
    """Per-image rows then one ``mean`` row per method, in first-seen method order."""
    rows = [image_row(record, convention) for record in records if "scores" in record]
    return rows + mean_rows(records, metrics, convention)


def image_row(record: dict, convention: str) -> dict:
    """The row of one scored record."""
    return {"id": record["id"], "method": record.get("method", ""), "convention": convention, **record["scores"]}


def mean_rows(records: list[dict], metrics: list[str], convention: str) -> list[dict]:
    """One ``mean`` row per method of the scored records, in first-seen method order."""
    by_method: dict[str, list[dict]] = {}
    for record in records:
        if "scores" in record:
            by_method.setdefault(record.get("method", ""), []).append(record["scores"])
    return [{"id": "mean", "method": method, "convention": convention,
             **{m: _nanmean([s.get(m, math.nan) for s in scores]) for m in metrics}}
            for method, scores in by_method.items()]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def format_rows(rows: list[dict], metrics: list[str], fmt: str, header: bool = True) -> str:
    """Render rows as ``csv``, ``json`` (JSON Lines) or ``table`` (aligned text); ``header=False``: csv without it.

    The paper table of means (markdown, LaTeX) is :mod:`stages.report.table`.
    """
    columns = ["id", "method", "convention", *metrics]
    if fmt == "json":  # strict JSON: a missing number (NaN) is null
        return "".join(json.dumps({c: _json_value(row.get(c)) for c in columns}, allow_nan=False) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
        return buffer.getvalue()
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "".join("  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) + "\n" for r in cells)


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def plot_means(rows: list[dict], metrics: list[str], path) -> None:
    """Bar chart per metric, one bar per method (the mean rows), saved atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.core.images import atomic_file

    means = [row for row in rows if row["id"] == "mean"]
    methods = [row["method"] or "fused" for row in means]
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes.flat, metrics):
        values = [row[metric] for row in means]
        ax.bar(range(len(methods)), values, color=[colours[i % 10] for i in range(len(methods))])
        arrow = "↑" if (METRICS[metric].higher_is_better if metric in METRICS else metric == "NCC") else "↓"
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
