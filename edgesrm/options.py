"""What the commands share: click parameter types (every decimal option is a ``FiniteRange``)
and the printer that streams a reply to the terminal."""

from __future__ import annotations

import json
import math

import click


class FiniteRange(click.FloatRange):
    """The type of every decimal option: a ``click.FloatRange`` that also refuses ``nan`` and
    ``inf`` (which ``FloatRange`` lets through), as a usage error like any bad value."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class JsonObject(click.ParamType):
    """A JSON object given on the command line (``--chat-template-kwargs``)."""

    name = "json"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self.fail(f"{value!r} is not JSON ({exc}).", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"{value!r} is not a JSON object ({{...}}).", param, ctx)
        return parsed


class ReplyPrinter:
    """An ``on_text`` callback that prints the reasoning dimmed and then, after a blank line, the
    answer. ``shown`` is the kind printed last (None before anything), so that the caller can end
    the output cleanly."""

    def __init__(self) -> None:
        self.shown: str | None = None

    def __call__(self, kind: str, text: str) -> None:
        if kind == "answer" and self.shown == "reasoning":
            click.echo("\n")
        self.shown = kind
        click.echo(click.style(text, dim=True) if kind == "reasoning" else text, nl=False)
