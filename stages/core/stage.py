"""The contract every stage follows.

A stage is built once (it loads its model on the chosen device), then called
on batches of records. It never prints, never reads stdin and never decides
about skipping, sharding or error reporting: the batch runner in
:mod:`fuse_cli.runner` owns all of that, so every stage behaves the same way
and runs unchanged under a local loop, ``--shard K/N`` or a distributed engine.

A record is a ``dict`` parsed from one JSON line (``{"id", "ir", "vis", ...}``).
"""
from __future__ import annotations

from pathlib import Path

from stages.core.provenance import make_recipe
from stages.core.records import shown_id


class StageError(Exception):
    """A per-record failure; the message names the pair and the file at fault."""


class Stage:
    """Base class: override :meth:`process_one` (or :meth:`process`).

    A stage that writes one file per pair, ``out_dir/<id><output_suffix>``, and
    records its path under ``output_key`` only sets those three attributes;
    others override :meth:`outputs` and :meth:`skip_update`.

    A stage that writes files also says what makes them (:mod:`stages.core.provenance`):
    ``settings`` (set in ``__init__``) and ``input_keys``. The first of
    :meth:`outputs` carries the :meth:`recipe` and is written last, so it vouches
    for the others.
    """

    #: Name used in messages.
    name = "stage"
    #: One-file-per-pair stages: the record key of the file and its suffix (``"mask"``, ``".png"``).
    output_key = ""
    output_suffix = ""
    out_dir: Path
    #: What changes the outputs besides the inputs: ``method``, the ``weights`` digest, pixel-changing options.
    settings: dict = {}
    #: Record keys the stage reads; their contents identify the inputs in the recipe.
    input_keys: tuple[str, ...] = ("ir", "vis")

    def output_path(self, record: dict) -> Path:
        """``out_dir/<id><output_suffix>``."""
        return self.out_dir / f"{record['id']}{self.output_suffix}"

    def outputs(self, record: dict) -> list[Path]:
        """The files this stage will write for ``record`` (used for skip/--dry-run).

        An empty list means the stage writes no files and always runs.
        """
        return [self.output_path(record)] if self.output_key else []

    def recipe(self, record: dict) -> dict:
        """What makes ``record``'s outputs: this stage, its settings and a digest of each input (``OSError`` if unreadable)."""
        return make_recipe(self.name, self.settings, record, self.input_keys)

    def process(self, records: list[dict]) -> list[dict | Exception]:
        """Run on a batch; returns, per record, the keys to add or an exception.

        The default calls :meth:`process_one` per record and captures
        :class:`StageError` and image errors so that one bad pair never stops
        the others. Stages that batch on the GPU override this.
        """
        results: list[dict | Exception] = []
        for record in records:
            try:
                results.append(self.process_one(record))
            except (StageError, OSError, ValueError) as exc:
                results.append(exc)
        return results

    def process_one(self, record: dict) -> dict:
        raise NotImplementedError

    def skip_update(self, record: dict) -> dict:
        """Keys to add to a record whose outputs already exist (skipped without --overwrite)."""
        return {self.output_key: str(self.output_path(record))} if self.output_key else {}


def record_path(record: dict, key: str, pair_id: str | None = None) -> Path:
    """The path stored under ``key``, or a :class:`StageError` naming the pair."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise StageError(f"pair {pair_id or record.get('id', '?')}: record has no {key!r} path")
    return Path(value)


def error_text(record: dict, exc: BaseException) -> str:
    """The error line for a failed pair: the exception's message, starting with ``pair <id>:``."""
    message = str(exc) or type(exc).__name__
    pair = shown_id(record.get("id", "?"))
    return message if message.startswith(f"pair {pair}") else f"pair {pair}: {message}"


def process_safely(stage: Stage, records: list[dict]) -> list[dict | Exception]:
    """``stage.process``, except that an exception the stage did not catch fails only the record that raised it.

    The batch is then retried one record at a time, so the others still complete.
    """
    try:
        return stage.process(records)
    except Exception as exc:  # noqa: BLE001 — whatever one record provokes must not stop the run
        if len(records) > 1:
            return [result for record in records for result in process_safely(stage, [record])]
        return [StageError(f"pair {shown_id(records[0].get('id', '?'))}: failed unexpectedly "
                           f"({type(exc).__name__}: {exc})")]
