"""``edgesrm chat``: a conversation in the terminal, for laptops and Raspberry Pis.

Each turn sends the whole conversation to the model's chat template (strategy ``plain``); the
engine's prefix cache keeps the last turn's prompt and reply in the KV cache, so a turn prefills
only what is new (the new message, and whatever the template writes differently from the reply
as it was generated). Thinking streams dimmed. Commands start with ``/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import MODEL_HELP, threads_option

from ..checks import MAX_CTX, MAX_TOKENS, MIN_CTX
from ..errors import EdgesrmError
from ..options import FiniteRange, ReplyPrinter

COMMANDS = """\
/think on|off     ask the template to turn thinking on or off (templates with enable_thinking)
/budget N         most tokens per reply (reasoning included)
/deadline S|off   a reply within S seconds
/strategy NAME    plain (default: the conversation as it is) or a reasoning strategy (cot, sc, ...),
                  which answers the last message alone
/reset            forget the conversation
/save FILE        write the conversation as JSON
/help             this list
/bye              leave (so do Ctrl-D and Ctrl-C)"""


class Session:
    """The conversation and the settings the commands change."""

    def __init__(self, system: str | None, max_tokens: int, seed: int | None, temperature: float) -> None:
        self.system, self.max_tokens, self.seed, self.temperature = system, max_tokens, seed, temperature
        self.messages: list[dict] = []
        self.strategy = "plain"
        self.deadline: float | None = None
        self.template_kwargs: dict = {}

    def reset(self) -> None:
        self.messages = []

    def conversation(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def command(self, line: str, strategies: list[str]) -> str | None:
        """Apply a ``/command``; the line to show, or None to leave. Raises ``EdgesrmError``."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("bye", "exit", "quit"):
            return None
        if name == "help":
            return COMMANDS
        if name == "reset":
            self.reset()
            return "(conversation forgotten)"
        if name == "think" and arg in ("on", "off"):
            self.template_kwargs["enable_thinking"] = arg == "on"
            return f"(thinking {arg}, where the template has the switch)"
        if name == "budget":
            self.max_tokens = _number(arg, int, 1, MAX_TOKENS, "/budget N: N tokens")
            return f"(at most {self.max_tokens} tokens per reply)"
        if name == "deadline":
            self.deadline = None if arg == "off" else _number(arg, float, 1e-3, 86400.0, "/deadline S: S seconds")
            return "(no deadline)" if self.deadline is None else f"(a reply within {self.deadline:g} s)"
        if name == "strategy":
            if arg not in strategies:
                raise EdgesrmError(f"/strategy NAME: one of {', '.join(strategies)}")
            self.strategy = arg
            return f"(strategy {arg})"
        if name == "save" and arg:
            path = Path(arg).expanduser()
            try:
                path.write_text(json.dumps(self.conversation(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            except OSError as exc:
                raise EdgesrmError(f"cannot write {path}: {exc.strerror}") from None
            return f"(saved {len(self.conversation())} messages to {path})"
        raise EdgesrmError(f"unknown command {line.split()[0]!r} (or a missing argument); /help lists them")


def _number(text: str, kind: type, low: float, high: float, usage: str):
    try:
        value = kind(text)
    except ValueError:
        raise EdgesrmError(usage) from None
    if not low <= value <= high:
        raise EdgesrmError(f"{usage} from {low:g} to {high:g}")
    return value


@click.command()
@click.option("-m", "--model", type=click.Path(dir_okay=True), default=None,
              help=MODEL_HELP)
@click.option("--system", default=None, help="System prompt for the whole conversation.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), default=1024, show_default=True,
              help="Most tokens per reply (change it with /budget).")
@click.option("--temperature", type=FiniteRange(min=0.0, max=100.0), default=0.6, show_default=True,
              help="Sampling temperature: 0 means greedy.")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 2), default=None, help="Random seed of the first reply "
              "(each later reply uses the next one). Default: random.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=MIN_CTX, max=MAX_CTX), default=None,
              help="Context size in tokens: the whole conversation must fit. Default: 4096 (at most the model's).")
@threads_option
def chat(model: str | None, system: str | None, max_tokens: int, temperature: float, seed: int | None,
         n_ctx: int | None, threads: int | None) -> None:
    """Chat with a model in the terminal; the conversation's history stays in the KV cache.

    Type a message and Enter; /help lists the commands (/think, /budget, /deadline, /strategy,
    /reset, /save). Ctrl-D or /bye leaves.

    \b
    Examples:
      edgesrm chat
      edgesrm chat -m qwen3-0.6b-q4_k_m.gguf --system "You answer briefly."
    """
    import random

    from ..budget import Budget
    from ..runtime import load
    from ..strategies import STRATEGIES

    rt = load(model, n_ctx=n_ctx, threads=threads, max_sequences=8)
    session = Session(system, max_tokens, random.randrange(2**31) if seed is None else seed, temperature)
    click.echo(f"{rt.model_path.name}: type a message, /help for commands, Ctrl-D to leave", err=True)
    stream = ReplyPrinter()

    with rt:
        while True:
            click.echo(">>> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:  # Ctrl-D
                click.echo("", err=True)
                return
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    said = session.command(line, list(STRATEGIES))
                    if said is None:
                        return
                    click.echo(said, err=True)
                    continue
                session.messages.append({"role": "user", "content": line})
                stream.shown = None
                budget = Budget(deadline_s=session.deadline)
                common = dict(strategy=session.strategy, budget=budget, max_tokens=session.max_tokens,
                              temperature=session.temperature, seed=session.seed, on_text=stream,
                              chat_template_kwargs=session.template_kwargs or None)
                if session.strategy == "plain":
                    result = rt.ask(messages=session.conversation(), **common)
                else:  # reasoning strategies answer one question
                    result = rt.ask(line, system=session.system, **common)
                session.seed = (session.seed + 1) % (2**32 - 1)
                click.echo("")
                session.messages.append({"role": "assistant", "content": result.answer})
                cached = f", {result.cached_tokens} of {result.prompt_tokens} prompt tokens cached"
                click.echo(f"[{result.completion_tokens} tokens, {result.tokens_per_s:.1f} tok/s{cached}]", err=True)
                for note in result.notes:
                    click.echo(f"note: {note}", err=True)
            except EdgesrmError as exc:
                if session.messages and session.messages[-1]["role"] == "user" and not line.startswith("/"):
                    session.messages.pop()  # the turn did not happen
                click.echo(f"error: {exc.cli or exc}", err=True)
