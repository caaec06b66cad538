"""Every command's --help and man page carry examples, and the examples are real command lines."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fuse_cli.app import app
from fuse_cli.examples import EXAMPLES, PIPELINES

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, click.Command]:
    """``"fuse"``, ``"detect export"`` … → the click command, every command and sub-command."""
    group = typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():
        found[name] = command
        for sub_name, sub in getattr(command, "commands", {}).items():
            found[f"{name} {sub_name}"] = sub
    return found


COMMANDS = _commands()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command_has_examples(name):
    done = CliRunner().invoke(app, [*name.split(), "--help"])
    assert done.exit_code == 0, done.output
    examples = done.output.split("Examples:", 1)
    assert len(examples) == 2, f"fuse {name} --help has no Examples section"
    lines = [line.strip() for line in examples[1].splitlines()]
    assert any(line.startswith(f"fuse {name} ") or f"| fuse {name} " in line for line in lines)


def _fuse_invocations(line: str):
    """``(command name, option tokens)`` of each ``fuse …`` in a shell line (pipes and redirections split off)."""
    for segment in line.replace("<(", "| ").replace(")", " |").split("|"):
        words = shlex.split(segment.split(">")[0].split(" < ")[0])
        if not words or words[0] != "fuse":
            continue
        name = " ".join(words[1:3])  # a sub-command ("detect export"), else the command
        if name not in COMMANDS:
            name = words[1]
        yield name, [word for word in words if word.startswith("-")]


@pytest.mark.parametrize("line", [line for examples in [*EXAMPLES.values(), PIPELINES] for _, line in examples])
def test_examples_use_only_real_commands_and_options(line):
    for name, options in _fuse_invocations(line):
        assert name in COMMANDS, f"{line}: no command fuse {name}"
        known = {opt for param in COMMANDS[name].params for opt in [*param.opts, *param.secondary_opts]}
        assert set(options) <= known, f"{line}: fuse {name} has no {sorted(set(options) - known)}"


def test_method_help_lists_every_method():
    from stages.methods.registry import list_methods

    text = " ".join(CliRunner().invoke(app, ["fuse", "--help"]).output.split())
    choices = text.split("--method <", 1)[1].split(">", 1)[0].split("|")
    assert sorted(choices) == [info.name for info in list_methods()]


def test_man_pages_have_examples_and_whole_command_summaries():
    from fuse_cli.manpages import pages

    generated = pages()
    assert set(generated) == {"fuse.1", *(f"fuse-{name.replace(' ', '-')}.1" for name in COMMANDS)}
    for filename, text in generated.items():
        assert ".SH EXAMPLES" in text, filename
        assert not text.split(".SH NAME\n", 1)[1].splitlines()[0].endswith("..."), filename
    commands = generated["fuse.1"].split(".SH COMMANDS", 1)[1].split(".SH", 1)[0]
    assert "..." not in commands  # click's short help cut the summaries off at 100 characters


def test_manpages_module_runs_and_click_is_declared(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fuse_cli.manpages", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fuse-fuse.1").read_text() == (ROOT / "man" / "fuse-fuse.1").read_text()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(dep.startswith("click") for dep in dependencies)
