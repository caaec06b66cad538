"""Shared fixtures: the real datasets beside the project, and pairs the project generates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
NO_SHARED = "../shared/data is absent (a user's clone): real-pair tests need the shared datasets"

os.environ.setdefault("YOLO_OFFLINE", "1")


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the stated reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(NO_SHARED)
    return path


@pytest.fixture(scope="session")
def synthetic_pairs(tmp_path_factory) -> Path:
    """A folder with ir/ and vis/ holding 4 generated pairs (240x320, RGB VIS)."""
    from fuse_cli.synthetic import write_pairs

    root = tmp_path_factory.mktemp("synthetic")
    write_pairs(root, count=4)
    return root


def fuse_cli(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``fuse`` command in a subprocess (as a shell pipeline would)."""
    return subprocess.run(
        [sys.executable, "-m", "fuse_cli", *map(str, args)], input=input, capture_output=True, text=True, cwd=cwd
    )


def records_of(text: str) -> list[dict]:
    return [json.loads(line.lstrip("\x1e")) for line in text.splitlines() if line.strip()]
