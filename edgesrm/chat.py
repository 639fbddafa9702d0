"""Prompts in the model's own chat format, and answers split from their reasoning.

The chat template comes from the GGUF metadata (``tokenizer.chat_template``, the Jinja2
template Hugging Face ships) and is rendered with a sandboxed Jinja2 environment.
Fallback when a model has none: ChatML (``<|im_start|>role\\n...<|im_end|>``), the format
llama.cpp also falls back to.

Two reasoning styles:
- thinking models (DeepSeek-R1 distills, Qwen3) write ``<think>...</think>`` then answer;
- other models get a system prompt asking for step-by-step work and a last line that
  starts with ``Final answer:``, which marks where the answer begins.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import EdgesrmError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FINAL_ANSWER = "final answer:"  # matched case-insensitively

STEP_BY_STEP_SYSTEM = (
    "You are a careful assistant. Think step by step and show your work. "
    "End with one last line that starts with 'Final answer:' followed by the answer alone."
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict[str, str]


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@dataclass(frozen=True)
class ChatFormat:
    """How to turn messages into a prompt for one model, and how its replies are shaped."""

    template: str | None
    bos_token: str = ""
    eos_token: str = ""

    @property
    def has_template(self) -> bool:
        return bool(self.template)

    @property
    def thinking(self) -> bool:
        """True for models that reason inside ``<think>...</think>``."""
        return bool(self.template) and (THINK_CLOSE in self.template or THINK_OPEN in self.template)

    @cached_property
    def _compiled(self) -> jinja2.Template:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda value, indent=None, ensure_ascii=False: json.dumps(
            value, indent=indent, ensure_ascii=ensure_ascii
        )
        try:
            return env.from_string(self.template or CHATML_TEMPLATE)
        except jinja2.exceptions.TemplateError as exc:
            raise EdgesrmError(f"the model's chat template does not parse: {exc}") from None

    def render(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise EdgesrmError(f"the model's chat template failed: {exc}") from None

    def reasoning_prompt(self, question: str, system: str | None = None) -> str:
        """The prompt that makes this model reason before it answers."""
        messages: list[Message] = []
        if system is None and not self.thinking:
            system = STEP_BY_STEP_SYSTEM
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": question})
        return self.render(messages)

    def splitter(self, prompt: str) -> "ReasoningSplitter":
        return ReasoningSplitter(self.thinking, opened=prompt.rstrip().endswith(THINK_OPEN))


@dataclass
class Split:
    reasoning: str
    answer: str
    marker_seen: bool  # False: still reasoning (or the model never marked its answer)


class ReasoningSplitter:
    """Splits a reply into reasoning and answer, whole or while it streams.

    ``split`` works on the full text. ``feed`` takes text as it arrives and yields
    ``("reasoning" | "answer", text)`` pieces, holding back anything that could still turn
    out to be the start of the marker.
    """

    def __init__(self, thinking: bool, opened: bool = False) -> None:
        self.thinking = thinking
        self.opened = opened  # the prompt itself ends with <think>
        self.marker = THINK_CLOSE if thinking else FINAL_ANSWER
        self._text = ""
        self._sent = {"reasoning": 0, "answer": 0}

    def split(self, text: str, *, final: bool = True) -> Split:
        body = text
        if self.thinking:
            stripped = body.lstrip()
            if stripped.startswith(THINK_OPEN):
                body = stripped[len(THINK_OPEN) :]
            elif not self.opened:
                if final or not THINK_OPEN.startswith(stripped):
                    return Split("", body.strip(), True)  # answered without thinking
                return Split("", "", False)  # too early to tell
        at = body.lower().find(self.marker) if not self.thinking else body.find(self.marker)
        if at >= 0:
            answer = body[at + len(self.marker) :].strip()
            if not self.thinking:
                answer = answer.strip("* ").strip()
            return Split(body[:at].strip().rstrip("*").rstrip(), answer, True)
        if final and not self.thinking:
            return Split("", body.strip(), False)  # no marker: the whole reply is the answer
        if not final:
            body = body[: _safe_end(body, self.marker, ignore_case=not self.thinking)]
        return Split(body.strip(), "", False)

    def feed(self, delta: str) -> Iterator[tuple[str, str]]:
        self._text += delta
        yield from self._pieces(self.split(self._text, final=False))

    def finish(self) -> Iterator[tuple[str, str]]:
        """The rest of the stream, once generation has ended."""
        split = self.split(self._text, final=True)
        if not split.marker_seen and not self.thinking:
            # Never marked: what streamed as reasoning was the answer; show nothing twice.
            split = Split(self._text.strip(), "", False)
        yield from self._pieces(split)

    def _pieces(self, split: Split) -> Iterator[tuple[str, str]]:
        for kind, text in (("reasoning", split.reasoning), ("answer", split.answer)):
            sent = self._sent[kind]
            if len(text) > sent:
                self._sent[kind] = len(text)
                yield kind, text[sent:]


def _safe_end(text: str, marker: str, *, ignore_case: bool) -> int:
    """Length of ``text`` that cannot be the beginning of ``marker``."""
    hay = text.lower() if ignore_case else text
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(hay[-k:]):
            return len(text) - k
    return len(text)
