"""Registry of fusion methods, in the manner of timm's ``register_model``.

:data:`METHODS` lists every fusion method — classical or learned — with what
``fuse fuse --list-methods`` shows and the module that implements it; that
module registers the method's *factory* with :func:`register_factory` when it
is imported, which happens only when the factory is first asked for. So
listing methods, or running one, imports no other method's network.
``--list-methods``, the tests and the benchmarks all iterate
:func:`list_methods`, so a method added here is listed, tested and benchmarked.

A factory is called as ``factory(device=..., weights=None, **options)`` and
returns a callable ``fuse(ir, vis) -> fused`` on luminance tensors (classical
methods take float32 numpy arrays of the same shapes as well, and
:mod:`stages.fuse` gives them arrays, so they run without torch):

* ``ir``:  ``(B, 1, H, W)`` float in [0, 1]
* ``vis``: ``(B, 1, H, W)`` float in [0, 1] (the Y channel of an RGB image)
* result:  ``(B, 1, H, W)`` float in [0, 1], same H and W.

Colour handling (YCbCr), padding to a network's multiple, tiling and I/O live
outside the methods, in :mod:`stages.fuse`.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one fusion method, without importing it."""

    name: str
    module: str  # the module that registers its factory
    kind: str  # "classical" or "learned"
    summary: str  # one line for --list-methods
    reference: str = ""  # the paper or formulation it follows
    extra: str | None = None  # the fuse-cli extra it needs (stages.extras), None: the base install

    @property
    def factory(self) -> Callable:
        """The method's factory; imports its module on first use."""
        if self.name not in _FACTORIES:
            importlib.import_module(self.module)
        return _FACTORIES[self.name]

    def weights_shipped(self) -> bool:
        """Whether the package carries weights for it (classical methods need none)."""
        return (WEIGHTS_DIR / f"{self.name}.safetensors").is_file()


_MLLM_PAPER = "Infrared and visible image fusion driven by multimodal large language models"
METHODS: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("mean", "stages.methods.classical", "classical", "pixel-wise average of IR and VIS luminance"),
    MethodInfo("max", "stages.methods.classical", "classical", "pixel-wise maximum (choose-max)"),
    MethodInfo("laplacian", "stages.methods.classical", "classical", "Laplacian pyramid, max-abs detail, averaged base",
               "Burt & Adelson 1983; Burt & Kolczynski 1993"),
    MethodInfo("gff", "stages.methods.classical", "classical", "guided-filter fusion of base and detail layers",
               "Li, Kang & Hu, IEEE TIP 2013"),
    MethodInfo("refinefuse", "stages.methods.learned", "learned",
               "RefineFuse multi-scale interaction network (SFIM, PSIM cross-attention, FIM)",
               "RefineFuse: multi-scale interaction network for multi-modal image fusion"),
    MethodInfo("dfh-base", "stages.methods.learned", "learned",
               "Text-DFH base fusion network (IR/VI encoders + F-Decoder), no text guidance", f"{_MLLM_PAPER} (Sect. 3.2)"),
    MethodInfo("tard", "stages.methods.learned", "learned",
               "target-aware unregistered fusion: built-in registration + common/specific feature fusion head",
               "Target-aware unregistered infrared and visible image fusion (Hu et al., Front. Phys. 2025)"),
    MethodInfo("tesg", "stages.methods.text", "learned",
               "TeSG: text-guided fusion with mask-guided cross-attention (MGCA) and text-driven fusion (TDAF)",
               "TeSG: textual semantic guidance for infrared and visible image fusion", extra="text"),
    MethodInfo("textdfh", "stages.methods.text", "learned",
               "Text-DFH: text-driven feature harmonisation on the frozen dfh-base network",
               f"{_MLLM_PAPER} (Sect. 3.3)", extra="text"),
    MethodInfo("mgfusion", "stages.methods.mgfusion", "learned",
               "MGFusion: CLIP-guided fusion (CLIP semantic injection CII, CLIP-weighted feature fusion CFF)",
               "MGFusion: infrared and visible image fusion driven by a multimodal large language model "
               "(CLIP), Front. Neurorobot. 2024, doi:10.3389/fnbot.2024.1521603", extra="clip"),
)}
_FACTORIES: dict[str, Callable] = {}


def register_factory(name: str):
    """Decorator registering ``factory`` for method ``name``, which :data:`METHODS` must list."""

    def wrap(factory: Callable) -> Callable:
        if name not in METHODS:
            raise ValueError(f"fusion method {name!r} is not listed in stages.methods.registry.METHODS")
        if name in _FACTORIES:
            raise ValueError(f"fusion method {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return wrap


def list_methods(kind: str | None = None) -> list[MethodInfo]:
    """All methods (optionally of one ``kind``), sorted by name; imports none of them."""
    return sorted((m for m in METHODS.values() if kind in (None, m.kind)), key=lambda m: m.name)


def get_method(name: str) -> MethodInfo:
    """The method called ``name``; ``KeyError`` with the closest name and the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(unknown_name("fusion method", name, sorted(METHODS))) from None


def unknown_name(what: str, name: str, names: Sequence[str]) -> str:
    """The error for a ``name`` not in ``names``: the closest one (case aside), then all of them.

    >>> unknown_name("fusion method", "lapacian", ["gff", "laplacian"])
    "unknown fusion method 'lapacian' (did you mean 'laplacian'?); choose one of: gff, laplacian"
    """
    by_lower = {known.lower(): known for known in names}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1)
    hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; choose one of: {', '.join(names)}"
