"""Records: one JSON object per image pair, one per line, paths never pixels.

Input may be plain JSON Lines or RFC 7464 JSON text sequences (each text
prefixed by the record separator ``\\x1e``, as ``jq --seq`` writes). A line
that cannot be parsed does not stop the stream: it becomes an *error record*
(``{"id": "line-N", "error": ...}``) so the caller reports it and carries on
with the next line, as Fiona's ``fio`` does.

Pairing directories (:func:`pair_directories`) matches files by stem across
extensions (``FLIR_00006.jpg`` ↔ ``FLIR_00006.png``), never by sort order, and
reports what did not match.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

RS = "\x1e"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class MalformedRecord(dict):
    """An error record standing in for an input line that could not be parsed."""


def parse_records(stream: IO[str], source: str = "<stdin>") -> Iterator[dict]:
    """Yield records from JSON Lines or RS-framed text; bad lines become error records."""
    for number, line in enumerate(stream, start=1):
        for text in line.split(RS):
            text = text.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield MalformedRecord(id=f"line-{number}", error=f"{source} line {number}: not a JSON record ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield MalformedRecord(id=f"line-{number}", error=f"{source} line {number}: a record must be a JSON object")
                continue
            if "id" not in record:
                record["id"] = _default_id(record, number)
            yield record


def _default_id(record: dict, number: int) -> str:
    for key in ("vis", "ir", "fused"):
        if isinstance(record.get(key), str):
            return Path(record[key]).stem
    return f"line-{number}"


def read_records_file(path: Path) -> Iterator[dict]:
    """Records from a ``.jsonl`` file (RS framing accepted)."""
    with open(path, encoding="utf-8") as fh:
        yield from parse_records(fh, source=str(path))


def format_record(record: dict, rs: bool = False) -> str:
    """One output line: compact JSON, ``\\x1e``-prefixed when ``rs``."""
    text = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
    return f"{RS}{text}\n" if rs else f"{text}\n"


def write_records(records: Iterable[dict], out: IO[str] = sys.stdout, rs: bool = False) -> None:
    for record in records:
        out.write(format_record(record, rs))
        out.flush()


@dataclass
class Pairing:
    """Result of matching files of several folders by stem."""

    records: list[dict]
    unmatched: list[Path]  # files with no partner in the other folder(s)
    duplicates: list[Path]  # a second file with the same stem in one folder


def _images_by_stem(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    by_stem: dict[str, Path] = {}
    duplicates = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in by_stem:
                duplicates.append(path)
            else:
                by_stem[path.stem] = path
    return by_stem, duplicates


def pair_directories(folders: dict[str, Path]) -> Pairing:
    """Match image files of ``{"ir": dir, "vis": dir, ...}`` by stem.

    Returns one record per stem present in every folder, in natural stem order,
    with the paths under the same keys.
    """
    tables = {}
    duplicates: list[Path] = []
    for key, folder in folders.items():
        tables[key], dups = _images_by_stem(Path(folder))
        duplicates += dups
    common = set.intersection(*(set(t) for t in tables.values()))
    unmatched = sorted(p for t in tables.values() for stem, p in t.items() if stem not in common)
    records = [
        {"id": stem, **{key: str(tables[key][stem]) for key in folders}} for stem in sorted(common, key=natural_key)
    ]
    return Pairing(records, unmatched, duplicates)


def natural_key(text: str) -> list:
    """Sort key putting ``img2`` before ``img10``."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
