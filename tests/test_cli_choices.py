"""Issue 16: options that take a name list their choices, complete in the shell and suggest the closest;
figure, report and train fail when pairs were dropped."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fuse_cli

# --- shell completion --------------------------------------------------------------------


def _complete(line: str) -> tuple[list[str], set[str]]:
    """What bash completion offers for ``line`` (the word after its last space), and the modules it imported."""
    code = ("import sys\nfrom fuse_cli.app import run\nsys.argv = ['fuse']\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\nsys.stderr.write('\\nMODULES ' + ' '.join(sys.modules))\n")
    env = {**os.environ, "_FUSE_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(line.split(" ")) - 1)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return done.stdout.split(), set(done.stderr.rsplit("MODULES ", 1)[1].split())


def test_completion_offers_methods_formats_and_metrics_without_importing_torch():
    offered, modules = _complete("fuse fuse -m re")
    assert offered == ["refinefuse"]
    assert not {"torch", "scipy", "numpy"} & modules
    assert _complete("fuse fuse --out-format ")[0] == ["png", "tif", "jpg"]
    assert _complete("fuse score -f l")[0] == ["latex"]
    assert _complete("fuse score --metrics EN,S")[0] == ["EN,SD", "EN,SF", "EN,SSIM", "EN,SCD"]
    assert _complete("fuse report --convention ")[0] == ["mmif", "vifb"]
    assert _complete("fuse sc")[0] == ["score"]


def test_show_completion_prints_a_script_for_the_fuse_command():
    script = fuse_cli("--show-completion", "bash").stdout
    assert "_FUSE_COMPLETE=complete_bash" in script and "complete -o default -F _fuse_completion fuse" in script
    from fuse_cli.manpages import pages

    assert ".SH COMPLETION" in pages()["fuse.1"]


# --- choices in --help, and "did you mean" -----------------------------------------------


def _help(*command: str) -> str:
    from fuse_cli.app import app

    return " ".join(CliRunner().invoke(app, [*command, "--help"]).output.split())


def test_help_lists_the_choices():
    from stages.metrics import METRIC_NAMES
    from stages.methods.registry import METHODS

    assert f"<{'|'.join(METHODS)}>" in _help("fuse")
    assert "<png|tif|jpg>" in _help("fuse")
    score = _help("score")
    assert "<csv|json|table|markdown|latex>" in score and "<mmif|vifb>" in score
    assert ", ".join(METRIC_NAMES) in score
    assert "<salient|text|boxes>" in _help("mask")
    assert "<table|markdown|csv|json>" in _help("detect")


@pytest.mark.parametrize("args, message", [
    (["fuse", "-m", "refinfuse"], "unknown fusion method 'refinfuse' (did you mean 'refinefuse'?); choose one of: mean, max,"),
    (["fuse", "--out-format", "tiff"], "unknown output format 'tiff' (did you mean 'tif'?); choose one of: png, tif, jpg"),
    (["score", "-f", "jsno"], "unknown format 'jsno' (did you mean 'json'?); choose one of: csv, json, table, markdown, latex"),
    (["score", "--metrics", "EN,qbf"], "unknown metric 'qbf' (did you mean 'Qabf'?); choose one of: EN, SD,"),
    (["caption", "--backend", "blib"], "unknown caption backend 'blib' (did you mean 'blip'?)"),
    (["train", "-m", "regster"], "unknown trainable network 'regster' (did you mean 'register'?)"),
    (["fuse", "--engine", "rya"], "unknown engine 'rya' (did you mean 'ray'?); choose one of: local, ray"),
])
def test_a_wrong_name_is_a_usage_error_with_the_closest_and_the_list(args, message, tmp_path):
    done = fuse_cli(*args, "--ir", tmp_path, "--vis", tmp_path)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())


def test_light_copies_of_the_choices_match_the_stages():
    """The CLI names choices without importing the stages; these are the stages' own lists."""
    import stages.caption
    import stages.mask
    import stages.register
    from fuse_cli import cmd_caption, cmd_mask, cmd_register, cmd_train
    from stages.metrics import METRIC_NAMES, METRICS
    from stages.methods.registry import list_methods
    from stages.methods.specs import LEARNED

    assert METRIC_NAMES == tuple(METRICS)
    assert cmd_caption.BACKENDS == stages.caption.BACKENDS and cmd_mask.BACKENDS == stages.mask.BACKENDS
    assert cmd_register.METHODS == stages.register.METHODS
    assert cmd_register.ECC_MODELS == tuple(stages.register.ECC_MODELS)
    assert set(cmd_train.TRAINABLE) == set(LEARNED) == {*(m.name for m in list_methods("learned")), "register"}


@pytest.mark.parametrize("args, message", [
    (["-m", "mgfusion", "--init", "x.safetensors"],
     "--init is for dfh-base, refinefuse, tard, tesg, textdfh, register, not -m mgfusion"),
    (["-m", "refinefuse", "--clip-model", "RN50"], "--clip-model is for mgfusion, not -m refinefuse"),
    (["-m", "tard", "--crop", "64", "--no-mask-guidance"],
     "--crop is for dfh-base, mgfusion, refinefuse, tesg, textdfh, register, not -m tard; "
     "--no-mask-guidance is for tesg, not -m tard"),
    (["-m", "tard"], "-m tard trains the network's detection head: give --labels DIR"),
    (["-m", "refinefuse", "--fusion-epochs", "1"], "--fusion-epochs is for register, not -m refinefuse"),
])
def test_train_takes_only_the_options_of_the_method_spec(args, message):
    from fuse_cli.app import app

    done = CliRunner().invoke(app, ["train", *args])
    assert done.exit_code == 2 and message in " ".join(done.stderr.split())


def test_every_learned_method_spec_names_what_exists():
    """Each spec's network and loss import; its trainer's module exists; its options are options of fuse train."""
    import importlib.util

    from stages.methods.specs import LEARNED

    options = _help("train")
    for spec in LEARNED.values():
        assert isinstance(spec.model, type) and (spec.loss is None or callable(spec.loss_fn))
        assert importlib.util.find_spec(spec.trainer.split(":")[0]) is not None
        assert all(name in options for option in spec.options for name in option.split("/")), spec.name


# --- dropped pairs fail figure, report and train ------------------------------------------


@pytest.fixture()
def fused_lacking_one(synthetic_pairs, tmp_path) -> tuple[Path, Path]:
    """(pairs folder, a fused folder lacking scene_02)."""
    fused = tmp_path / "max"
    assert fuse_cli("fuse", "-m", "max", "-q", "-o", fused, "--ir", synthetic_pairs / "ir",
                    "--vis", synthetic_pairs / "vis").returncode == 0
    (fused / "scene_02.png").unlink()
    return synthetic_pairs, fused


@pytest.mark.parametrize("command", [["figure", "-o", "{out}/fig.png"], ["report", "--metrics", "EN", "-o", "{out}/report"]])
def test_figure_and_report_fail_when_a_fused_folder_lacks_a_pair(command, fused_lacking_one, tmp_path):
    pairs, fused = fused_lacking_one
    args = [str(a).format(out=tmp_path) for a in command]
    done = fuse_cli(*args, "--ir", pairs / "ir", "--vis", pairs / "vis", "--fused", fused)
    assert done.returncode == 1, done.stderr
    assert f"{fused}: lacks 1 of the 4 images" in done.stderr and "1 pair(s) dropped" in done.stderr
    assert (tmp_path / "fig.png").is_file() or (tmp_path / "report" / "index.html").is_file()  # the rest still made


def test_train_fails_when_a_folder_lacks_a_pair(synthetic_pairs, tmp_path, monkeypatch):
    import stages.training.loop
    from fuse_cli.app import app

    shutil.copytree(synthetic_pairs, tmp_path / "pairs")
    (tmp_path / "pairs" / "vis" / "scene_01.png").unlink()
    trained = []
    monkeypatch.setattr(stages.training.loop, "train", lambda method, pairs, out, **kwargs: trained.append(pairs) or out / "x")
    done = CliRunner().invoke(app, ["train", "-m", "refinefuse", "--ir", str(tmp_path / "pairs" / "ir"),
                                    "--vis", str(tmp_path / "pairs" / "vis"), "-o", str(tmp_path / "run")])
    assert done.exit_code == 1
    assert f"{tmp_path / 'pairs' / 'vis'}: lacks 1 of the 4 images" in done.stderr
    assert len(trained[0]) == 3
