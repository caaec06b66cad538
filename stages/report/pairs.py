"""Fused records regrouped by pair: one entry per id with its sources and every method's output."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairOutputs:
    """The sources of one pair and the fused image of each method (method → path), in first-seen order."""

    pair_id: str
    ir: str
    vis: str
    fused: dict[str, str] = field(default_factory=dict)


def group_by_pair(records: list[dict]) -> tuple[list[PairOutputs], list[str]]:
    """Pairs in first-seen order and the methods in first-seen order.

    Records need ``id``, ``ir`` and ``vis``; those with ``fused`` add a column named by
    their ``method`` (``fused`` when absent). Records carrying ``error`` are left out.
    """
    pairs: dict[str, PairOutputs] = {}
    methods: list[str] = []
    for record in records:
        if record.get("error") or not all(isinstance(record.get(k), str) for k in ("id", "ir", "vis")):
            continue
        pair = pairs.setdefault(record["id"], PairOutputs(record["id"], record["ir"], record["vis"]))
        if isinstance(record.get("fused"), str):
            method = str(record.get("method") or "fused")
            pair.fused.setdefault(method, record["fused"])
            methods += [method] if method not in methods else []
    return list(pairs.values()), methods
