"""Registry of fusion methods, in the manner of timm's ``register_model``.

Every fusion method — classical or learned — registers a *factory* under a
name. ``fuse fuse --list-methods``, the tests and the benchmarks all iterate
:func:`list_methods`, so a method added here is automatically listed, tested
and benchmarked.

A factory is called as ``factory(device=..., weights=None, **options)`` and
returns a callable ``fuse(ir, vis) -> fused`` on luminance tensors:

* ``ir``:  ``(B, 1, H, W)`` float in [0, 1]
* ``vis``: ``(B, 1, H, W)`` float in [0, 1] (the Y channel of an RGB image)
* result:  ``(B, 1, H, W)`` float in [0, 1], same H and W.

Colour handling (YCbCr), padding to a network's multiple, tiling and I/O live
outside the methods, in :mod:`stages.fuse`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one fusion method."""

    name: str
    factory: Callable
    kind: str  # "classical" or "learned"
    summary: str  # one line for --list-methods
    reference: str = ""  # the paper or formulation it follows
    options: dict = field(default_factory=dict)
    extra: str | None = None  # the fuse-cli extra it needs (stages.extras), None: the base install

    def weights_shipped(self) -> bool:
        """Whether the package carries weights for it (classical methods need none)."""
        return (WEIGHTS_DIR / f"{self.name}.safetensors").is_file()


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, kind: str, summary: str, reference: str = "", extra: str | None = None):
    """Decorator registering ``factory`` as fusion method ``name`` (``extra``: the optional dependency it needs)."""

    def wrap(factory: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"fusion method {name!r} is registered twice")
        _METHODS[name] = MethodInfo(name, factory, kind, summary, reference, extra=extra)
        return factory

    return wrap


def _load_all() -> None:
    # Importing the modules runs their @register_method decorators.
    from stages import classical  # noqa: F401
    from stages.nets import learned_methods, mgfusion, tard, tesg, textdfh  # noqa: F401


def list_methods(kind: str | None = None) -> list[MethodInfo]:
    """All registered methods (optionally of one ``kind``), sorted by name."""
    _load_all()
    return sorted((m for m in _METHODS.values() if kind in (None, m.kind)), key=lambda m: m.name)


def get_method(name: str) -> MethodInfo:
    """The method registered as ``name``; ``KeyError`` with the closest name and the valid names otherwise."""
    _load_all()
    try:
        return _METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(sorted(_METHODS))
        raise KeyError(f"unknown fusion method {name!r}{hint}; choose one of: {valid}") from None
