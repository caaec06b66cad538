"""Ultralytics YOLO detectors: loading (a safetensors file that runs no code, a ``.pt``, a YAML
or a downloadable name), saving as safetensors, and ultralytics' logs kept off stdout."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

class ModelError(ValueError):
    """A detector that cannot be loaded; the message says what to give instead."""


def quiet_ultralytics():
    """Import ultralytics with its log lines sent to stderr (it logs to stdout, which carries our records)."""
    with contextlib.redirect_stdout(sys.stderr):
        import ultralytics
        from ultralytics.utils import LOGGER
    for handler in LOGGER.handlers:
        if type(handler) is logging.StreamHandler:
            handler.stream = sys.stderr  # not setStream: it flushes the old stream, which may be closed
    return ultralytics


YOLO_FORMAT = "fuse-yolo"  # the safetensors metadata ``format`` of a YOLO saved by save_yolo


def save_yolo(yolo, path: str | Path) -> Path:
    """Write an ultralytics detector as safetensors (weights; its model YAML and class names in the metadata).

    Unlike ultralytics' ``.pt`` (a pickle), loading it (:func:`load_yolo`) runs no code from the file.
    """
    from safetensors.torch import save_file

    from stages.core.images import atomic_file  # numpy, Pillow: not for the commands that only catch ModelError

    model = yolo.model
    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": YOLO_FORMAT, "yaml": json.dumps(model.yaml), "names": json.dumps({int(k): str(v) for k, v in model.names.items()})}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def _load_yolo_safetensors(path: Path):
    """A ``YOLO`` rebuilt from a :func:`save_yolo` file: its YAML, then its tensors, names and shapes checked."""
    import tempfile

    import yaml
    from ultralytics import YOLO

    from stages.nets.checkpoint import config_of, invalid, load_checked, read_header

    kind = "YOLO detector"
    meta = read_header(path, kind)[1]
    if meta.get("format") != YOLO_FORMAT:
        raise invalid(path, kind, f"format {meta.get('format')!r}, not {YOLO_FORMAT!r} (written by fuse detect train)")
    cfg, names = config_of(path, kind, meta, "yaml"), config_of(path, kind, meta, "names")
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / f"{Path(str(cfg.get('yaml_file', 'model'))).stem or 'model'}.yaml"
        spec.write_text(yaml.safe_dump(cfg))
        with contextlib.redirect_stdout(sys.stderr):
            yolo = YOLO(str(spec), task="detect")
    load_checked(path, kind, lambda _: yolo.model)  # names and shapes checked before the tensors are read
    yolo.model.names = {int(k): v for k, v in names.items()}
    return yolo


def load_yolo(model: str | Path):
    """An ultralytics ``YOLO`` from a local file, a model YAML, or a downloadable name; ``ModelError`` otherwise.

    A ``.safetensors`` from :func:`save_yolo` loads without unpickling; a ``.pt`` is a
    pickle, and loading one runs any code it carries.
    """
    quiet_ultralytics()
    from ultralytics import YOLO

    text = str(model)
    if text.endswith(".safetensors"):
        return _load_yolo_safetensors(Path(text).expanduser())
    local = Path(text).expanduser()
    if not local.is_file() and not text.endswith((".yaml", ".yml")) and ("/" in text or local.suffix not in (".pt", "")):
        raise ModelError(f"--model {text}: no such file")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yolo = YOLO(str(local) if local.is_file() else text)
    except Exception as exc:  # noqa: BLE001 — download failures, bad files, unknown YAMLs: each raises its own type
        hint = "" if local.is_file() else (" (not a local file and it could not be fetched: without internet give "
                                           "--model PATH to a .pt file, or a model YAML such as yolov8n.yaml)")
        raise ModelError(f"--model {text}: cannot load ({type(exc).__name__}: {exc}){hint}") from None
    if yolo.task != "detect":
        raise ModelError(f"--model {text}: a {yolo.task} model, not a detector")
    return yolo
