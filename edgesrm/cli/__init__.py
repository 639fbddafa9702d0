"""The ``edgesrm`` command line: the root group ``cli``, its error handling and ``main()``.

Each command lives in a module of its own (ask, eval, info, doctor, chat, serve, pull, store
(list, show, rm); convert holds convert and quantize), imported only when that command runs
(``COMMANDS``): ``edgesrm ask`` does not pay for the converter's or the server's imports.
Command modules never import this ``__init__``: what they share is in ``common.py`` and
``edgesrm.options``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from .. import __version__
from ..errors import EdgesrmError
from .common import show_progress_messages, show_warning

# Command name -> (module in edgesrm.cli, attribute). eval: the module of `edgesrm eval`.
COMMANDS: dict[str, tuple[str, str]] = {
    "ask": ("ask", "ask"),
    "chat": ("chat", "chat"),
    "serve": ("serve", "serve"),
    "eval": ("eval", "evaluate_command"),
    "pull": ("pull", "pull"),
    "list": ("store", "list_models"),
    "show": ("store", "show"),
    "rm": ("store", "rm"),
    "info": ("info", "info"),
    "doctor": ("doctor", "doctor"),
    "convert": ("convert", "convert"),
    "quantize": ("convert", "quantize"),
    "imatrix": ("imatrix", "imatrix"),
    "quality": ("quality", "quality"),
    "tune": ("tune", "tune"),
}


class Cli(click.Group):
    """Turns user errors into one ``error: ...`` line and exit code 1, never a traceback;
    prints edgesrm's warnings as one ``warning: ...`` line each. Commands are imported when
    used (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def invoke(self, ctx: click.Context):
        warnings.showwarning = show_warning
        show_progress_messages()
        try:
            return super().invoke(ctx)
        except EdgesrmError as exc:
            click.echo(f"error: {exc.cli or exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgesrm")
def cli() -> None:
    """Run small reasoning models on this machine, offline, with llama.cpp.

    \b
    Examples:
      edgesrm ask "A train leaves at 3pm and travels 2 hours. When does it arrive?"
      edgesrm ask --json --seed 1 "What is 17 * 23?"
      edgesrm info path/to/model.gguf
      edgesrm doctor
    """



_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def main() -> None:
    """The console script: click's usage errors become one ``error:`` line (exit code 2), like
    every other error, with the command's ``--help`` named."""
    try:
        code = cli.main(prog_name="edgesrm", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # bare `edgesrm`: the help, as a help request
        click.echo(exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "edgesrm"
        click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
