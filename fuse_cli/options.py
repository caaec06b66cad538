"""Options shared by every stage command, each defined once (as rasterio's ``rio/options.py``).

A command declares the ones it needs as parameters with these annotated types,
then bundles them in :class:`RunOptions` for the batch runner.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from stages.methods.registry import unknown_name


def choice(names: Sequence[str], *param_decls: str, what: str, optional: bool = False, **option: Any) -> Any:
    """The type of an option taking one of ``names``, for a parameter's annotation.

    ``Literal[names]`` makes ``--help`` and shell completion list them; the parser
    makes any other value a usage error naming them and the closest one.
    """
    names = tuple(names)

    def parse(value: str) -> str:
        if value not in names:
            raise typer.BadParameter(unknown_name(what, value, names))
        return value

    kind = Literal[names]
    return Annotated[Optional[kind] if optional else kind, typer.Option(*param_decls, parser=parse, **option)]


def complete_list(names: Sequence[str]) -> Callable[[str], list[str]]:
    """Shell completion of a comma-separated list of ``names``: ``EN,S`` offers ``EN,SD``, ``EN,SF``, ..."""

    def complete(incomplete: str) -> list[str]:
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [prefix + name for name in names if name.lower().startswith(last.lower())]

    return complete


InputIR = Annotated[Optional[Path], typer.Option("--ir", help="Folder of infrared images (paired with --vis by file stem).", show_default=False)]
InputVIS = Annotated[Optional[Path], typer.Option("--vis", help="Folder of visible images (paired with --ir by file stem).", show_default=False)]
FusedFolders = Annotated[
    Optional[list[Path]],
    typer.Option("--fused", help="Folder of fused images; repeat to compare methods side by side (method = folder name).", show_default=False),
]
RecordsFile = Annotated[
    Optional[Path],
    typer.Option("--records", "-r", help="Read records from this JSON Lines file instead of stdin: any readable path (a FIFO, <(cmd), /dev/stdin), - for stdin. A relative path in it not found from here is read from the file's folder.", show_default=False),
]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Folder for output files, named <id>.<ext>.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Recompute outputs that already exist. Default: skip an output made by the same recipe (method, weights, options) from the same inputs, so re-runs are incremental; refuse one made otherwise (one error line, exit 1).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print on stderr what would be written; write nothing.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N. auto picks CUDA when available.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Pairs per batch at most: a batch takes the pairs that have arrived and goes when the input pauses.")]
Workers = Annotated[int, typer.Option("--workers", "-j", min=1, help="Threads for parallel image decode/encode and per-pair work.")]
Shard = Annotated[
    Optional[str],
    typer.Option("--shard", help="K/N: process only every N-th pair starting at the K-th (1-based), for make -j, xargs or cluster arrays.", show_default=False),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr; no progress bar.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say what is skipped and written.")]
RS = Annotated[bool, typer.Option("--rs", help="Write RFC 7464 framing (each record prefixed by the RS character).")]
Engine = choice(("local", "ray"), "--engine", what="engine",
                help="local (this process) or ray (Ray actors; joins the cluster at $RAY_ADDRESS, else starts Ray here).")
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="--engine ray: actors, each holding one copy of the stage.")]
NumGPUs = Annotated[float, typer.Option("--num-gpus", min=0, help="--engine ray: GPUs per actor (a fraction shares a GPU between actors).")]
Weights = Annotated[Optional[Path], typer.Option("--weights", help="Model weights file (.safetensors) instead of the shipped ones.", show_default=False)]

# Domain options, the same in every command that takes them.
ClipModel = Annotated[str, typer.Option("--model", help="open_clip architecture, e.g. ViT-B-32, ViT-L-14.")]
ClipPretrained = Annotated[str, typer.Option(
    "--pretrained", help="open_clip weights tag (downloaded by open_clip on a machine with internet), a local "
                         "checkpoint file, or 'none' for a random untrained CLIP (tests only).")]
Labels = Annotated[Optional[Path], typer.Option(
    "--labels", help="Ground truth per pair (by IR file stem): a folder of YOLO txt (with classes.txt) or VOC xml, "
                     "or a COCO json.", show_default=False)]
LabelClasses = Annotated[Optional[Path], typer.Option(
    "--label-classes", help="Class names of YOLO labels (classes.txt or data.yaml); default: classes.txt beside or "
                            "above the labels.", show_default=False)]
ClassMap = Annotated[Optional[list[str]], typer.Option(
    "--class-map", help="Rename label classes before matching, FROM=TO (repeat, or comma-separate): People=person.",
    show_default=False)]


@dataclass
class RunOptions:
    """What the batch runner needs to know, gathered from the shared options."""

    out: Path | None = None
    overwrite: bool = False
    dry_run: bool = False
    batch_size: int = 4
    workers: int = 1
    shard: tuple[int, int] = (1, 1)
    quiet: bool = False
    verbose: bool = False
    rs: bool = False
    engine: str = "local"
    concurrency: int = 1
    num_gpus: float = 0.0


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``; ``typer.BadParameter`` unless 1 ≤ K ≤ N."""
    if not text:
        return (1, 1)
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not of the form K/N, e.g. 1/4", param_hint="--shard") from None
    if not 1 <= k <= n:
        raise typer.BadParameter(f"{text!r}: K must be between 1 and N", param_hint="--shard")
    return (k, n)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; validates explicit names."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{name}: CUDA is not available on this machine", param_hint="--device")
        return name
    raise typer.BadParameter(f"{name!r}: use auto, cpu, cuda or cuda:N", param_hint="--device")


def check_engine(engine: str) -> None:
    """``typer.BadParameter`` for ``ray`` when ray is not installed (checked without importing it)."""
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise typer.BadParameter("ray is not installed: pip install 'fuse-cli[ray]' (or 'ray')", param_hint="--engine")


def stage_device(name: str, engine: str, num_gpus: float) -> str:
    """The device to build the stage on: :func:`resolve_device`, adjusted for Ray actors.

    An actor sees a GPU only when it reserves one (``--num-gpus``), so under
    ``--engine ray`` ``auto`` means CUDA exactly when ``--num-gpus`` is given.
    The command builds the stage where it runs as well (to plan skips), so
    GPU actors need CUDA there too.
    """
    if engine == "local":
        return resolve_device(name)
    device = "cpu" if name == "auto" and not num_gpus else resolve_device(name)
    if device.startswith("cuda") and not num_gpus:
        raise typer.BadParameter(f"{name}: Ray actors get a GPU only with --num-gpus", param_hint="--device")
    if num_gpus and not device.startswith("cuda"):
        raise typer.BadParameter("GPU actors need CUDA where the command runs too (it builds the stage to plan skips)",
                                 param_hint="--num-gpus")
    return device


#: The options every record-processing stage takes, in the order ``--help`` lists them.
STAGE_OPTIONS: dict[str, tuple[object, object]] = {
    "overwrite": (Overwrite, False),
    "dry_run": (DryRun, False),
    "device": (Device, "auto"),
    "batch_size": (BatchSize, 4),
    "workers": (Workers, 1),
    "shard": (Shard, None),
    "engine": (Engine, "local"),
    "concurrency": (Concurrency, 1),
    "num_gpus": (NumGPUs, 0.0),
    "rs": (RS, False),
    "quiet": (Quiet, False),
    "verbose": (Verbose, False),
}


def stage_options(batch_size: int = 4, uses_device: Callable[[dict[str, Any]], bool] | None = None):
    """Decorator giving a Typer command the shared stage options.

    The command declares its own parameters (including ``out``) plus ``run: RunOptions``
    and ``device: str``; the decorator adds ``--overwrite --dry-run --device
    --batch-size --workers --shard --engine --concurrency --num-gpus --rs -q -v`` to its
    signature and calls it with ``run`` built from them and ``device`` resolved
    (``auto`` → ``cuda`` or ``cpu``, see :func:`stage_device`). When
    ``uses_device(own_arguments)`` says the run puts no tensors on a device
    (a classical fusion method), ``auto`` is ``cpu`` without importing torch.
    """

    def decorate(command):
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
               if p.name not in ("run", "device")]
        defaults = {**{name: default for name, (_, default) in STAGE_OPTIONS.items()}, "batch_size": batch_size}
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name], annotation=annotation)
                  for name, (annotation, _) in STAGE_OPTIONS.items()]

        @functools.wraps(command)
        def wrapper(**kwargs):
            shared = {name: kwargs.pop(name) for name in STAGE_OPTIONS if name != "device"}
            check_engine(shared["engine"])
            device = kwargs.pop("device")
            if device == "auto" and not shared["num_gpus"] and uses_device and not uses_device(kwargs):
                device = "cpu"  # no tensors: no need to import torch to look for CUDA
            else:
                device = stage_device(device, shared["engine"], shared["num_gpus"])
            shared["shard"] = parse_shard(shared["shard"])
            return command(**kwargs, run=RunOptions(out=kwargs.get("out"), **shared), device=device)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the new signature, not the wrapped one
        return wrapper

    return decorate
