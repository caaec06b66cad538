"""The ``fuse`` command: one thin Typer command per stage, each in ``fuse_cli/cmd_<command>.py``.

Commands parse options, gather records (stdin, ``--records FILE`` or
``--ir DIR --vis DIR``), build the stage from a picklable factory
(``functools.partial``) and hand the stage, the records and the factory (which
``--engine ray`` actors build their own stage with) to
:func:`fuse_cli.runner.run_stage`. Exit status: 0 success, 1 some pair
failed, 2 usage error.
"""
from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
from typing import Annotated, Optional

import typer

from fuse_cli import __version__
from fuse_cli.examples import add_examples
from stages.extras import MissingExtra
from stages.nets.checkpoint import WeightsError

app = typer.Typer(
    name="fuse",
    help="Multimodal image fusion (infrared + visible, medical) as composable shell stages.\n\n"
    "Example: fuse pairs ir/ vis/ | fuse fuse -m laplacian -o fused/ | fuse score",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fuse {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Multimodal image fusion toolchain."""



#: The commands ``fuse --help`` lists first, in pipeline order; the others follow by name.
FIRST_COMMANDS = ("cmd_pairs", "cmd_fuse", "cmd_score")


def _register_command_modules() -> None:
    """Each ``fuse_cli/cmd_<command>.py`` adds its command(s) through its ``add_commands(app)`` function."""
    import fuse_cli

    def order(module: pkgutil.ModuleInfo) -> tuple[int, str]:
        first = module.name in FIRST_COMMANDS
        return (FIRST_COMMANDS.index(module.name) if first else len(FIRST_COMMANDS), module.name)

    for module in sorted(pkgutil.iter_modules(fuse_cli.__path__), key=order):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"fuse_cli.{module.name}").add_commands(app)


_register_command_modules()
add_examples(app)


def _terminate(signum, frame) -> None:
    # `kill` becomes an exception in the main thread, so pending atomic writes remove their temporaries.
    raise SystemExit(128 + signum)


def run() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    # A closed pipe (`fuse pairs ... | head`) ends the command quietly, as it does any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        app(prog_name="fuse")  # also under `python -m fuse_cli`: usage lines and completion scripts name `fuse`
    except MissingExtra as exc:  # an optional dependency the command needs, checked before any work
        typer.echo(str(exc), err=True)
        sys.exit(2)
    except WeightsError as exc:  # a model file a command reads outside per-pair work (train --resume/--init)
        typer.echo(f"fuse: error: {exc}", err=True)
        sys.exit(1)
