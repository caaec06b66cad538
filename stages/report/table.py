"""Mean-score tables as papers print them: one row per method, one column per metric.

Each column marks its best value in bold and the second best underlined, in the
metric's own direction (lower is better for CE, MSE, RMSE, Nabf, Qcv, EPE, MAE),
and its header carries ↑ or ↓. Marks compare the values as printed (rounded to
``precision`` decimals), so cells that read the same are marked the same: a tie for
best makes every tied cell bold, and the second best is the next distinct value.

    >>> rank_marks([6.78, 6.34, 6.93], higher_is_better=True, precision=2)
    ['second', '', 'best']
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

from stages.metrics import METRICS

#: Registration metrics and their direction (see stages.metrics.registration).
REGISTRATION_HIGHER_IS_BETTER = {"EPE": False, "MAE": False, "NCC": True}

#: What each convention reproduces, for the caption.
CONVENTION_NAMES = {
    "mmif": "the mmif convention (CDDFuse's Evaluator.py)",
    "vifb": "the vifb convention (the VIFB benchmark's MATLAB metrics)",
}

#: How papers typeset the metrics whose plain names are ASCII stand-ins.
LATEX_NAMES = {"Qabf": "$Q^{AB/F}$", "Nabf": "$N^{AB/F}$", "Qcv": "$Q_{CV}$", "Qcb": "$Q_{CB}$"}

LAYOUTS = ("columns", "tables")


def higher_is_better(metric: str) -> bool:
    """The direction of a fusion or registration metric; ``KeyError`` for unknown names."""
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    return REGISTRATION_HIGHER_IS_BETTER[metric]


def rank_marks(values: list[float], higher_is_better: bool, precision: int) -> list[str]:
    """``"best"``, ``"second"`` or ``""`` per value; NaN is never marked.

    Values are compared rounded to ``precision`` decimals; all cells equal to the
    best are ``best``, all equal to the next distinct value are ``second``.
    """
    shown = [None if math.isnan(v) else round(v, precision) for v in values]
    distinct = sorted({v for v in shown if v is not None}, reverse=higher_is_better)
    marks = {v: mark for v, mark in zip(distinct, ("best", "second"))}
    return [marks.get(v, "") if v is not None else "" for v in shown]


def record_dataset(record: dict) -> str:
    """The record's ``dataset``, else the folder that holds its IR folder (``tno/ir/x.png`` → ``tno``)."""
    if record.get("dataset"):
        return str(record["dataset"])
    ir = Path(str(record.get("ir", "")))
    return ir.parent.parent.name or ir.parent.name


@dataclass
class MeanTable:
    """Means per (group, method) of the scored records, in first-seen order.

    ``group`` is ``""`` when the table is not grouped; ``pairs`` counts the
    scored pairs of each group (the most any one method has).
    """

    groups: list[str]
    methods: list[str]
    metrics: list[str]
    means: dict[tuple[str, str], dict[str, float]]
    pairs: dict[str, int]

    @classmethod
    def from_records(cls, records: list[dict], metrics: list[str], group_by: str | None = None) -> MeanTable:
        """Records carrying ``scores`` (failed pairs, without them, are left out)."""
        collected: dict[tuple[str, str], list[dict]] = {}
        groups: list[str] = []
        methods: list[str] = []
        for record in records:
            if "scores" not in record:
                continue
            group = record_dataset(record) if group_by == "dataset" else ""
            method = str(record.get("method") or "fused")
            groups += [group] if group not in groups else []
            methods += [method] if method not in methods else []
            collected.setdefault((group, method), []).append(record["scores"])
        means = {key: {m: _nanmean([s.get(m, math.nan) for s in scores]) for m in metrics}
                 for key, scores in collected.items()}
        pairs = {g: max(len(s) for (group, _), s in collected.items() if group == g) for g in groups}
        return cls(groups, methods, metrics, means, pairs)

    def column(self, group: str, metric: str) -> list[float]:
        """One value per method (NaN where the method has no score in this group)."""
        return [self.means.get((group, method), {}).get(metric, math.nan) for method in self.methods]

    def marks(self, group: str, metric: str, precision: int) -> list[str]:
        return rank_marks(self.column(group, metric), higher_is_better(metric), precision)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


#: How each caption style writes: escape, the two arrows, bold and underline.
_CAPTION_STYLES = {
    "latex": (lambda t: latex_escape(t), "$\\uparrow$", "$\\downarrow$", r"\textbf{bold}", r"\underline{underlined}"),
    "markdown": (str, "↑", "↓", "**bold**", "<u>underlined</u>"),
    "html": (html.escape, "↑", "↓", "<b>bold</b>", "<u>underlined</u>"),
}


def caption(table: MeanTable, convention: str, style: str = "markdown") -> str:
    """One sentence naming what is averaged, the convention and the marks, as ``latex``, ``markdown`` or ``html``."""
    escape, up, down, best, second = _CAPTION_STYLES[style]
    if len(table.groups) == 1:
        group = table.groups[0]
        over = f"over {table.pairs[group]} pairs" + (f" of {escape(group)}" if group else "")
    else:
        over = "over the pairs of each dataset (counts in its header)"
    return (f"Mean scores {over}, {escape(CONVENTION_NAMES.get(convention, convention + ' convention'))}. "
            f"Best in {best}, second best {second}; {up} higher is better, {down} lower is better.")


def _cell(value: float, mark: str, precision: int, latex: bool) -> str:
    if math.isnan(value):
        return "--" if latex else ""
    text = f"{value:.{precision}f}"
    if latex:
        return {"best": f"\\textbf{{{text}}}", "second": f"\\underline{{{text}}}"}.get(mark, text)
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


def _arrow(metric: str, latex: bool) -> str:
    up = higher_is_better(metric)
    return ("$\\uparrow$" if up else "$\\downarrow$") if latex else ("↑" if up else "↓")


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (method and dataset names)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in text)


def _group_title(table: MeanTable, group: str) -> str:
    return f"{group} ({table.pairs[group]})"


def latex_table(table: MeanTable, convention: str, precision: int = 3, layout: str = "columns") -> str:
    """A booktabs ``table`` environment (several with ``layout="tables"``); needs ``\\usepackage{booktabs}``."""
    if layout == "tables" and len(table.groups) > 1:
        return "\n".join(latex_table(_only(table, g), convention, precision) for g in table.groups)
    k = len(table.metrics)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption(table, convention, 'latex')}}}",
             r"\label{tab:fusion-scores" + (f"-{_label(table.groups[0])}" if len(table.groups) == 1 and table.groups[0] else "") + "}",
             r"\begin{tabular}{l" + "r" * (k * len(table.groups)) + "}", r"\toprule"]
    if table.groups != [""]:
        spans = [rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(_group_title(table, g))}}}" for g in table.groups]
        lines.append(" & " + " & ".join(spans) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(table.groups))))
    header = [f"{LATEX_NAMES.get(m, latex_escape(m))} {_arrow(m, True)}" for _ in table.groups for m in table.metrics]
    lines += ["Method & " + " & ".join(header) + r" \\", r"\midrule"]
    for row in _body(table, precision, latex=True):
        lines.append(" & ".join([latex_escape(row[0]), *row[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def markdown_table(table: MeanTable, convention: str, precision: int = 3, layout: str = "columns") -> str:
    """A GitHub-flavoured Markdown table (``<u>`` for the underline), its caption below it."""
    if layout == "tables" and len(table.groups) > 1:
        return "\n".join(f"**{_group_title(table, g)}**\n\n" + markdown_table(_only(table, g), convention, precision)
                         for g in table.groups)
    grouped = len(table.groups) > 1
    header = [f"{_group_title(table, g) + ' ' if grouped else ''}{m} {_arrow(m, False)}"
              for g in table.groups for m in table.metrics]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _body(table, precision, latex=False)]
    return "\n".join(lines) + "\n\n" + caption(table, convention, "markdown") + "\n"


def _body(table: MeanTable, precision: int, latex: bool) -> list[list[str]]:
    """Rows of cell text: the method name, then every group's metrics."""
    columns = []
    for group in table.groups:
        for metric in table.metrics:
            values, marks = table.column(group, metric), table.marks(group, metric, precision)
            columns.append([_cell(v, mark, precision, latex) for v, mark in zip(values, marks)])
    return [[method, *(col[i] for col in columns)] for i, method in enumerate(table.methods)]


def _only(table: MeanTable, group: str) -> MeanTable:
    """The part of ``table`` for one group, keeping its group name for the header and label."""
    methods = [m for m in table.methods if (group, m) in table.means]
    means = {key: v for key, v in table.means.items() if key[0] == group}
    return MeanTable([group], methods, table.metrics, means, {group: table.pairs[group]})


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())
