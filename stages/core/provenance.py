"""Provenance: every output file carries the recipe that made it.

A *recipe* is a flat JSON object: the stage (``"fuse"``), its settings that
change the output (``method``, the ``weights`` file's SHA-256, options such as
``bit_depth`` or ``resize``) and ``inputs``, a SHA-256 of each record input the
stage reads (file contents, or the text of a caption), plus the ``version`` of
fuse for information. The batch runner skips a pair only when its output
carries the recipe this run would use (Make's rule, by content instead of
time), and refuses to touch an output made otherwise unless ``--overwrite``.

Where the recipe lives, by the carrier file's format:

* PNG: an ``iTXt`` chunk ``fuse-recipe``; TIFF: the ImageDescription tag;
  JPEG: the comment (COM) segment — all written by :func:`stages.core.images.write_image`;
* ``.safetensors``: the ``fuse-recipe`` metadata entry;
* ``.json``: the document's ``"recipe"`` key.

>>> recipe = make_recipe("fuse", {"method": "max"}, {"ir": "ir/1.png"}, ("ir",))   # doctest: +SKIP
>>> explain(read_recipe(Path("fused/1.png")), recipe)                              # doctest: +SKIP
'was made by fuse fuse with method "laplacian", not "max"'
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from stages.core import __version__

#: The name of the PNG text chunk and of the safetensors metadata entry.
RECIPE_KEY = "fuse-recipe"
#: Record keys holding text rather than a path; their text is the input.
TEXT_KEYS = ("caption", "caption_without_keyword")


def digest_file(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's contents."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def weights_digest(path: str | os.PathLike | None) -> str | None:
    """The digest of a weights file, ``None`` when there is none (classical methods)."""
    return digest_file(path) if path is not None and Path(path).is_file() else None


def make_recipe(stage: str, settings: dict, record: dict, input_keys: tuple[str, ...]) -> dict:
    """The recipe of ``record``'s outputs: ``stage``, ``settings`` and a digest of each input in ``input_keys``.

    An input file that cannot be read raises ``OSError`` naming it.
    """
    inputs = {}
    for key in input_keys:
        value = record.get(key)
        if isinstance(value, str) and key in TEXT_KEYS:
            inputs[key] = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        elif isinstance(value, str):
            try:
                inputs[key] = digest_file(value)
            except OSError as exc:
                raise OSError(f"{value}: cannot read ({exc.strerror or exc})") from None
        elif value is not None:
            inputs[key] = value
    return {"stage": stage, **settings, "inputs": inputs, "version": __version__}


def recipe_text(recipe: dict) -> str:
    """The recipe as one line of ASCII JSON, keys sorted (what the carrier file stores)."""
    return json.dumps(recipe, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def read_recipe(path: str | os.PathLike) -> dict | None:
    """The recipe ``path`` carries, or ``None`` when it carries none (or cannot be read)."""
    path = Path(path)
    try:
        text = _stored_text(path)
        recipe = json.loads(text) if isinstance(text, (str, bytes)) else text
    except (OSError, ValueError, SyntaxError, struct.error):  # unreadable or foreign files carry no recipe
        return None
    if isinstance(recipe, dict) and isinstance(recipe.get("stage"), str) and isinstance(recipe.get("inputs"), dict):
        return recipe
    return None  # not one of ours


def _stored_text(path: Path) -> str | bytes | dict | None:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].description
    if suffix == ".safetensors":  # 8-byte little-endian header length, then the JSON header
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                return None
            return json.loads(fh.read(size)).get("__metadata__", {}).get(RECIPE_KEY)
    if suffix == ".json":
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
        return document.get("recipe") if isinstance(document, dict) else None
    from PIL import Image  # PNG text chunk, JPEG comment: read from the header, no pixels decoded

    with Image.open(path) as im:
        return im.info.get(RECIPE_KEY) or im.info.get("comment")


def made_by(recipe: dict | None) -> str:
    """Who made an output, in words: ``fuse fuse (method 'max')``."""
    if recipe is None:
        return "another program or an older fuse (the file carries no recipe)"
    method = f" (method {recipe['method']!r})" if "method" in recipe else ""
    return f"fuse {recipe.get('stage')}{method}"


def explain(found: dict | None, wanted: dict) -> str | None:
    """How the recipe ``found`` in an output differs from the ``wanted`` one; ``None`` when it is the same.

    The ``version`` of fuse is not compared: upgrading fuse does not invalidate outputs.
    """
    if found is None or found.get("stage") != wanted["stage"]:
        return f"was made by {made_by(found)}, not by fuse {wanted['stage']}"
    for key in sorted((set(found) | set(wanted)) - {"stage", "inputs", "version"}, key=lambda k: (k != "method", k)):
        if found.get(key) != wanted.get(key):
            return f"was made by fuse {wanted['stage']} with {key} {_short(found.get(key))}, not {_short(wanted.get(key))}"
    old, new = found["inputs"], wanted["inputs"]
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        verb = "differs" if len(changed) == 1 else "differ"
        return f"was made by {made_by(found)} from other inputs ({', '.join(changed)} {verb})"
    return None


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    if isinstance(value, str) and value.startswith("sha256:"):
        return text[:20] + '…"'
    return text if len(text) <= 60 else text[:59] + "…"
