"""Load a network's safetensors weights file only after checking it fits the network.

A safetensors file is an 8-byte little-endian header length, a JSON header (each
tensor's dtype, shape and byte offsets, plus ``__metadata__``: string → string),
then the raw tensor bytes. :func:`read_header` reads and checks the header alone;
:func:`load_checked` builds the network on the ``meta`` device (no memory), compares
every tensor's name and shape with the header, and only then builds the network for
real and reads the tensors. So a file of another network, of wrong shapes, truncated,
empty, a pickle renamed ``.safetensors``, or with metadata asking for a huge network,
gives one :class:`WeightsError` — ``FILE: not valid NAME weights (reason)`` — before
the network is allocated. Nothing here unpickles. :func:`save_weights` writes the files
(:func:`write_checkpoint`: atomically, the method and the model's constructor arguments
in the metadata).

>>> build = lambda meta: RefineFuse(**config_of(path, "refinefuse", meta))   # doctest: +SKIP
>>> net = load_checked(path, "refinefuse", build)                            # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a network is loaded, not when the CLI catches WeightsError
    from torch import nn

#: The ``format`` metadata of a fusion network's weights file (every learned method's own networks).
CHECKPOINT_FORMAT = "fuse-network-1"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
PICKLE_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save's zip, a bare pickle


class WeightsError(ValueError):
    """A weights file that is not valid for the network; the message names the file and why."""


def invalid(path: str | os.PathLike, kind: str, reason: str) -> WeightsError:
    """The :class:`WeightsError` ``FILE: not valid KIND weights (REASON)``."""
    return WeightsError(f"{path}: not valid {kind} weights ({reason})")


def read_header(path: str | os.PathLike, kind: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``({tensor name: shape}, metadata)`` of a safetensors file, reading no tensor data.

    ``kind`` names the network in the error. Raises :class:`WeightsError` for an
    empty, truncated or non-safetensors file (a pickle says so) and for a header
    that is not JSON or whose metadata is not a table of strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    size = path.stat().st_size
    if size == 0:
        raise invalid(path, kind, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        pickle = "a pickle (torch.save) file, not safetensors; it is not loaded, as unpickling runs code"
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise invalid(path, kind, pickle if head.startswith(PICKLE_STARTS) else
                          f"not a safetensors file: its first 8 bytes declare a {length}-byte header in a {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise invalid(path, kind, pickle if head.startswith(PICKLE_STARTS) else
                          "not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise invalid(path, kind, "not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid(path, kind, "its metadata is not a table of strings")
    data_bytes, shapes = size - 8 - length, {}
    for name, info in header.items():
        try:
            shape = tuple(int(n) for n in info["shape"])
            end = int(info["data_offsets"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise invalid(path, kind, f"tensor {name!r} lacks a shape or data offsets") from None
        if end > data_bytes:
            raise invalid(path, kind, f"truncated: tensor {name!r} ends at byte {end}, the file holds {data_bytes}")
        shapes[name] = shape
    return shapes, metadata


def config_of(path: str | os.PathLike, kind: str, metadata: dict[str, str], key: str = "config") -> dict:
    """The JSON object stored under ``metadata[key]`` (``{}`` when absent); :class:`WeightsError` when not JSON."""
    text = metadata.get(key)
    if text is None:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise invalid(path, kind, f"its {key!r} metadata is not JSON: {text[:60]!r}") from None
    if not isinstance(config, dict):
        raise invalid(path, kind, f"its {key!r} metadata is not a JSON object: {text[:60]!r}")
    return config


def check_method(path: str | os.PathLike, kind: str, metadata: dict[str, str], fmt: str | None = None) -> None:
    """:class:`WeightsError` when the metadata names another network than ``kind`` (or another ``format``)."""
    saved = metadata.get("method", kind)
    if saved != kind:
        raise invalid(path, kind, f"the file holds {saved!r} weights")
    if fmt is not None and metadata.get("format", fmt) != fmt:
        raise invalid(path, kind, f"format {metadata['format']!r}, not {fmt!r}")


def load_checked(path: str | os.PathLike, kind: str, build: Callable[[dict[str, str]], nn.Module], *,
                 unsaved: str | None = None) -> nn.Module:
    """``build(metadata)`` with the file's tensors loaded, after checking names and shapes on a meta copy.

    ``build`` constructs the network from the file's metadata (it may raise
    :class:`WeightsError` itself); it runs once on the ``meta`` device and once for
    real. ``unsaved``: the prefix of network tensors the file does not hold (a frozen
    part built by ``build`` itself, e.g. ``"clip."``); every other tensor must be in the file.
    """
    import torch
    from safetensors import safe_open

    path = Path(path)
    shapes, metadata = read_header(path, kind)
    try:
        with torch.device("meta"):
            skeleton = build(metadata)
    except WeightsError:
        raise
    except Exception as exc:  # a config the constructor rejects, whatever it raises
        raise invalid(path, kind, f"its config does not build the network: {type(exc).__name__}: {exc}") from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    unexpected = sorted(set(shapes) - set(expected))
    missing = sorted(name for name in set(expected) - set(shapes) if not (unsaved and name.startswith(unsaved)))
    if unexpected or missing:
        parts = [f"{len(missing)} tensors missing, e.g. {missing[0]!r}"] if missing else []
        parts += [f"{len(unexpected)} unknown tensors, e.g. {unexpected[0]!r}"] if unexpected else []
        raise invalid(path, kind, "; ".join(parts))
    for name, shape in shapes.items():
        if shape != expected[name]:
            raise invalid(path, kind, f"tensor {name!r} has shape {list(shape)}, the network needs {list(expected[name])}")
    model = build(metadata)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {name: f.get_tensor(name) for name in shapes}
    except Exception as exc:  # safetensors' own checks (dtype, overlapping offsets)
        raise invalid(path, kind, f"{type(exc).__name__}: {exc}") from None
    model.load_state_dict(state, strict=unsaved is None)
    return model


def write_checkpoint(tensors: dict, metadata: dict[str, str], path: str | os.PathLike) -> Path:
    """Write ``tensors`` with ``metadata`` as ``path`` (safetensors, mode 644), atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_weights(model: nn.Module, method: str, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state as ``path`` (safetensors), atomically; returns the path.

    The metadata records the method and ``model.config`` so
    :func:`stages.methods.learned.load_network` rebuilds the same architecture, plus any ``extra`` string entries.
    """
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    metadata = {**(extra or {}), "format": CHECKPOINT_FORMAT, "method": method, "config": json.dumps(model.config)}
    return write_checkpoint(tensors, metadata, path)
