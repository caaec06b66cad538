"""Records: one JSON object per image pair, one per line, paths never pixels.

Input may be plain JSON Lines or RFC 7464 JSON text sequences (each text
prefixed by the record separator ``\\x1e``, as ``jq --seq`` writes). A line
that cannot be parsed does not stop the stream: it becomes an *error record*
(``{"id": "line-N", "error": ...}``) so the caller reports it and carries on
with the next line, as Fiona's ``fio`` does.

A record's ``id`` names its output files (``OUT/<id>.png``), so it must be a
plain file name: :func:`id_problem` states the rule every stage applies.

Pairing directories (:func:`pair_directories`) matches files by stem across
extensions (``FLIR_00006.jpg`` ↔ ``FLIR_00006.png``), never by sort order, and
reports what did not match.
"""
from __future__ import annotations

import io
import json
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

RS = "\x1e"
#: Longest id, in UTF-8 bytes: with a stage's suffix (``.overlay.png``) and a temporary
#: name's tag it stays under the 255-byte file-name limit of common file systems.
MAX_ID_BYTES = 200
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


def id_problem(pair_id: object) -> str | None:
    """Why ``pair_id`` cannot name output files (a phrase after "it"), or ``None`` when it can.

    An id is a string (or an integer) of 1 to :data:`MAX_ID_BYTES` UTF-8 bytes
    that is a plain file name: no ``/`` or ``\\`` (no sub-folders), no NUL, other
    control character or lone surrogate, and no leading ``.`` (which rules out ``.``,
    ``..``, hidden files and this tool's temporaries). So ``OUT/<id>.<ext>``
    always lies inside ``OUT``.

    >>> id_problem("FLIR_00006"), id_problem("../escape")
    (None, "contains a path separator ('/'): ids are plain file names, without folders")
    """
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)):
        return f"is {json.dumps(pair_id)}, not a string"
    text = str(pair_id)
    if not text:
        return "is empty"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return "contains a NUL, another control character or a lone surrogate"
    size = len(text.encode("utf-8"))
    if size > MAX_ID_BYTES:
        return f"is {size} bytes long (at most {MAX_ID_BYTES})"
    for sep in ("/", "\\"):
        if sep in text:
            return f"contains a path separator ({sep!r}): ids are plain file names, without folders"
    if text.startswith("."):
        return "starts with '.' (as '.', '..', hidden files and temporaries do)"
    return None


def shown_id(pair_id: object) -> str:
    """An id as error lines show it: as it is when usable, else as (at most 60 characters of) JSON."""
    if id_problem(pair_id) is None:
        return str(pair_id)
    text = json.dumps(pair_id, ensure_ascii=True)
    return text if len(text) <= 60 else text[:59] + "…"


#: Record keys that hold file paths (those a records file's folder can resolve).
PATH_KEYS = ("ir", "vis", "fused", "mask", "grid", "valid", "embedding", "detections", "ir_unregistered")


def read_records_file(path: str | Path) -> Iterable[dict]:
    """Records from any readable path — a file, a FIFO, ``/dev/stdin``, ``<(cmd)`` — or ``-`` for stdin.

    The file is opened now, so one that cannot be read raises ``OSError`` here
    rather than mid-run. Bytes that are not UTF-8 become U+FFFD (the line then
    fails as a record of its own instead of stopping the stream). A relative
    path in a record that does not exist as given but does in the records
    file's folder is read from there (:func:`resolve_paths`), so a records file
    works from any directory. A regular file is read whole and returned as a
    list (its length gives the progress bar a total); a pipe streams.
    """
    if str(path) == "-":
        return read_stdin_records()
    stream = open(path, encoding="utf-8", errors="replace")
    records = (resolve_paths(record, Path(path).parent) for record in _records_then_close(stream, str(path)))
    return list(records) if Path(path).is_file() else records


def resolve_paths(record: dict, folder: Path) -> dict:
    """``record`` with each relative path of :data:`PATH_KEYS` that is missing as given but present under ``folder`` joined to it."""
    for key in PATH_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and not Path(value).exists():
            candidate = folder / value
            if candidate.exists():
                record[key] = str(candidate)
    return record


def read_stdin_records() -> Iterator[dict]:
    """Records from stdin, with bytes that are not UTF-8 replaced as in :func:`read_records_file`."""
    if isinstance(sys.stdin, io.TextIOWrapper):  # not a test's StringIO
        sys.stdin.reconfigure(errors="replace")
    return parse_records(sys.stdin)


def _records_then_close(stream: IO[str], source: str) -> Iterator[dict]:
    with stream:
        yield from parse_records(stream, source=source)


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
    missing: dict[Path, list[str]]  # per folder holding images, the stems other folders have and it lacks
    found: int  # stems seen in any folder
    empty: list[Path]  # folders holding no image file


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
    every = set.union(*(set(t) for t in tables.values()))
    missing = {Path(folders[key]): sorted(every - set(table), key=natural_key) for key, table in tables.items()}
    records = [
        {"id": stem, **{key: str(tables[key][stem]) for key in folders}} for stem in sorted(common, key=natural_key)
    ]
    empty = [Path(folders[key]) for key, table in tables.items() if not table]
    missing = {folder: stems for folder, stems in missing.items() if stems and folder not in empty}
    return Pairing(records, unmatched, duplicates, missing, len(every), empty)


def natural_key(text: str) -> list:
    """Sort key putting ``img2`` before ``img10``."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
