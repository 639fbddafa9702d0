"""What several commands share: help texts, and how edgesrm's warnings and progress log are shown.

Command modules import this, never ``edgesrm.cli`` itself (whose ``__init__`` imports them).
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from ..checks import MAX_THREADS
from ..errors import EdgesrmWarning

# --threads, the same on every command that runs a model.
threads_option = click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                              help="CPU threads. Default: physical cores.")

MODEL_HELP = ("GGUF model file, or a name in the model store (edgesrm list). Default: the embedded "
              "SmolLM2-135M-Instruct (Q4_1).")

STRATEGY_HELP = (
    "How to reason: plain (your question as it is, the model's whole reply: for writing, chat, anything "
    "without one right answer), direct (the final answer only, on one line, no reasoning), "
    "cot (one chain of thought, then the answer), budget (thinking capped by "
    "--budget-tokens/--deadline, extended with 'Wait'), sc (self-consistency over --n paths decoded in one "
    "batch, with early stopping), plan (plan, then solve), reflect (draft, critique, revise), auto (chosen "
    "from the budget and this machine's measured speed)."
)


def refuse_with_data(data: str | None, *options: str) -> None:
    """A usage error when ``--data`` is given with an option (a parameter name) that sets the
    reasoning traces ``--data`` replaces: it would be ignored without a word otherwise."""
    if data is None:
        return
    ctx = click.get_current_context()
    for name in options:
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} sets the reasoning traces, which --data replaces: give one or the other")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, EdgesrmWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


class _EchoHandler(logging.Handler):
    """Writes a log record as one line on the current stderr (click's, so tests see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def show_progress_messages() -> None:
    """edgesrm's INFO log (what long first-run work is doing: a speed measurement, a download)
    goes to stderr as plain lines; the Python API leaves logging to the application."""
    logger = logging.getLogger("edgesrm")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Let ``kill`` (SIGTERM) clean up like Ctrl-C: the temporary output is removed, OUT untouched."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def progress_bar(total: int | None, unit: str) -> Iterator[Callable[..., None]]:
    """``advance(n=1, total=None)`` for long work: a tqdm bar on stderr, shown on a terminal only
    (nothing when piped), made at the first call (so work that turns out cached shows none) and
    closed when it reaches its total or the block ends. tqdm: the bar Python users know."""
    import sys

    from tqdm import tqdm

    bar: tqdm | None = None
    count = 0

    def advance(n: int = 1, new_total: int | None = None) -> None:
        nonlocal bar, count, total
        total = new_total if new_total is not None else total
        if bar is None:
            bar = tqdm(total=total, unit=f" {unit}", disable=None, file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        count += n
        bar.update(n)
        if total is not None and count >= total:
            bar.close()

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()
