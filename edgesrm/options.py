"""click parameter types shared by the commands (every decimal option is a ``FiniteRange``)."""

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
