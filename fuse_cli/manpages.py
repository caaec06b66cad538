"""Generate the man pages in ``man/`` from the Typer commands, so they never drift from ``--help``.

    python -m fuse_cli.manpages man/

writes ``fuse.1`` and ``fuse-<command>.1`` for every command.
"""
from __future__ import annotations

import sys
import unicodedata
from datetime import date
from pathlib import Path

import click
import typer

from fuse_cli import __version__
from fuse_cli.app import app
from fuse_cli.examples import EXAMPLES, PIPELINES


ASCII_FOR = {"…": "...", "—": "--", "–": "-", "→": "->", "←": "<-", "↔": "<->", "×": "x", "≥": ">=", "≤": "<=", "²": "^2"}


def _ascii(text: str) -> str:
    """Plain ASCII, so every man(1) output device renders the page without warnings."""
    text = "".join(ASCII_FOR.get(ch, ch) for ch in text)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _escape(text: str) -> str:
    lines = []
    for line in _ascii(text).replace("\\", "\\e").splitlines():
        line = line.replace("-", "\\-")
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _header(name: str, summary: str) -> list[str]:
    return [
        f'.TH {name.upper()} 1 "{date(2026, 11, 22).isoformat()}" "fuse {__version__}" "fuse manual"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(summary)}",
    ]


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    lines = [".SH OPTIONS"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record:
            lines += [".TP", f"\\fB{_escape(record[0])}\\fR", _escape(record[1])]
    return lines


def _examples(examples: list[tuple[str, str]]) -> list[str]:
    """The EXAMPLES section: each example's purpose as a shell comment, then its command line, unfilled."""
    lines = [".SH EXAMPLES", ".nf"]
    for what, line in examples:
        lines += [_escape(f"# {what}"), _escape(line), ""]
    return lines[:-1] + [".fi"]


def _summary(command: click.Command) -> str:
    """The first paragraph of the command's help, whole (click's short help cuts it off at a width)."""
    return " ".join((command.help or "").split("\n\n")[0].split())


def command_page(command: click.Command, name: str) -> str:
    """The page of ``fuse <name>`` (``name`` may hold a sub-command: ``detect export``)."""
    ctx = click.Context(command, info_name=f"fuse {name}")
    summary = _summary(command)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = _header(f"fuse-{name.replace(' ', '-')}", summary)
    lines += [".SH SYNOPSIS", f"\\fBfuse {name}\\fR {_escape(usage)}", ".SH DESCRIPTION", _escape(command.help or "")]
    lines += _options(command, ctx)
    lines += _examples(EXAMPLES[name])
    lines += [".SH SEE ALSO", "\\fBfuse\\fR(1)"]
    return "\n".join(lines) + "\n"


def main_page(group: click.Group) -> str:
    lines = _header("fuse", "multimodal image fusion as composable command-line stages")
    lines += [".SH SYNOPSIS", "\\fBfuse\\fR [\\-\\-version] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]", ".br",
              "\\fBfuse\\fR \\-\\-install\\-completion | \\-\\-show\\-completion", ".SH DESCRIPTION"]
    lines += [_escape(group.help or ""), ".SH COMMANDS"]
    for name, command in group.commands.items():
        lines += [".TP", f"\\fBfuse {name}\\fR", _escape(_summary(command))]
    lines += _examples(PIPELINES)
    lines += [
        ".SH COMPLETION",
        _escape("fuse --install-completion adds tab completion to the current shell (bash, zsh, fish): commands, "
                "options and the names options take (methods, metrics, formats, conventions, backends); "
                "--show-completion prints the script instead."),
        ".SH EXIT STATUS",
        "0 on success, 1 when any pair failed (its record carries \"error\"), 2 for usage errors.",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBFUSE_MAX_PIXELS\\fR",
        "The largest image (height x width, any format) a stage reads, checked from the file's header before "
        "decoding; larger images fail their pair. Default 178956970, Pillow's own limit.",
        ".SH SEE ALSO",
        ", ".join(f"\\fBfuse\\-{name}\\fR(1)" for name in group.commands),
    ]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name → roff text for the main page and every command."""
    group = typer.main.get_command(app)
    result = {"fuse.1": main_page(group)}
    for name, command in group.commands.items():
        result[f"fuse-{name}.1"] = command_page(command, name)
        for sub_name, sub in getattr(command, "commands", {}).items():
            result[f"fuse-{name}-{sub_name}.1"] = command_page(sub, f"{name} {sub_name}")
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "man")
    out.mkdir(exist_ok=True)
    for filename, text in pages().items():
        (out / filename).write_text(text)
        print(out / filename)
