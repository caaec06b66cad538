"""A command whose optional dependency (an extra of fuse-cli) is missing says so in one line and exits 2.

The missing library is simulated by putting ``None`` in ``sys.modules`` before
the command runs, which makes ``import`` (and ``importlib.util.find_spec``) fail
as on an install without the extra.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import fuse_cli

WITHOUT = ("import sys\n"
           "for name in sys.argv[1].split(','):\n"
           "    sys.modules[name] = None\n"
           "sys.argv = ['fuse', *sys.argv[2:]]\n"
           "from fuse_cli.app import run\n"
           "run()\n")


def fuse_without(modules: str, *args) -> subprocess.CompletedProcess:
    """Run ``fuse ARGS`` in a subprocess where the comma-separated ``modules`` cannot be imported."""
    return subprocess.run([sys.executable, "-c", WITHOUT, modules, *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("blocked, command, words, extra", [
    ("open_clip", ["fuse", "-m", "mgfusion", "-o", "{tmp}"], "fuse fuse -m mgfusion", "clip"),
    ("sentence_transformers", ["fuse", "-m", "tesg", "-o", "{tmp}"], "fuse fuse -m tesg", "text"),
    ("sentence_transformers", ["fuse", "-m", "textdfh", "-o", "{tmp}"], "fuse fuse -m textdfh", "text"),
    ("ultralytics", ["detect", "-o", "{tmp}"], "fuse detect", "detect"),
    ("pycocotools", ["detect", "--detections", "{tmp}", "--labels", "{tmp}"], "fuse detect --detections", "detect"),
    ("open_clip", ["encode", "-o", "{tmp}"], "fuse encode", "clip"),
    ("open_clip", ["train", "-m", "mgfusion", "-o", "{tmp}"], "fuse train -m mgfusion", "clip"),
    ("open_clip", ["mask", "--backend", "text", "--keyword", "person", "-o", "{tmp}"], "fuse mask --backend text", "clip"),
    ("transformers", ["caption", "--backend", "blip", "-o", "{tmp}"], "fuse caption --backend blip", "text"),
    ("sentence_transformers", ["train", "-m", "tesg", "-o", "{tmp}"], "fuse train -m tesg", "text"),
])
def test_missing_extra_is_one_line_naming_it(synthetic_pairs, tmp_path, blocked, command, words, extra):
    args = [arg.replace("{tmp}", str(tmp_path / "out")) for arg in command]
    done = fuse_without(blocked, *args, "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    assert done.stderr.splitlines() == [f"{words} needs the '{extra}' extra: pip install 'fuse-cli[{extra}]'"]
    assert done.returncode == 2 and done.stdout == ""
    assert not (tmp_path / "out").exists()


def _method_rows(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines()[1:]}


def test_list_methods_shows_extra_and_weights():
    rows = _method_rows(fuse_cli("fuse", "--list-methods").stdout)
    assert "clip (ok)" in rows["mgfusion"] and "none: fuse train first" in rows["mgfusion"]
    assert "text (ok)" in rows["tesg"] and "shipped" in rows["tesg"]
    assert rows["refinefuse"].split()[2:4] == ["-", "shipped"]
    assert rows["laplacian"].split()[1:4] == ["classical", "-", "-"]
    missing = _method_rows(fuse_without("open_clip", "fuse", "--list-methods").stdout)
    assert "clip (missing)" in missing["mgfusion"]


def test_mistyped_method_suggests_the_closest():
    done = fuse_cli("fuse", "-m", "lapacian", "--ir", ".", "--vis", ".")
    assert done.returncode == 2
    assert "unknown fusion method 'lapacian' (did you mean 'laplacian'?)" in done.stderr


def test_detect_help_promises_no_packaged_tard_head():
    from stages.nets.tard_detection import WEIGHTS

    assert not WEIGHTS.is_file()
    text = " ".join(fuse_cli("detect", "--help").stdout.split())
    assert "no head is packaged" in text and "tard, or a" not in text
