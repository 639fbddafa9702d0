"""Prompts in the model's own chat format, and answers split from their reasoning.

Rendering. The chat template comes from the GGUF metadata (``tokenizer.chat_template``, the
Jinja2 template Hugging Face ships) and is rendered in an environment that matches the one
``transformers`` uses for chat templates (sandboxed; ``trim_blocks``/``lstrip_blocks``; Jinja's
loop controls ``{% break %}``/``{% continue %}``; Hugging Face's ``{% generation %}`` block;
``tojson`` without HTML escaping; ``raise_exception``, ``strftime_now``, a restricted ``dict`` and
``namespace``), so that a template renders here to the string transformers renders. We use
Jinja2 itself (the library every template is written for) rather than a template engine of our
own. Fallback when a model has no template: ChatML, as llama.cpp does.

What a template accepts is found once per template by trial rendering (``capabilities``): when
it refuses a system message (Gemma 2, some Mistral templates) or drops it, the system text
joins the first user turn, as llama.cpp does; when it insists on alternating user/assistant
turns, consecutive turns of one role are joined.

Special tokens. Text inside messages is text: a question that contains ``<|im_end|>`` must not
close the turn. Control-token strings found in message contents are wrapped in private-use
markers before rendering; the rendered prompt is then cut into pieces, and only the template's
own scaffolding is tokenized with special-token parsing (``ChatPrompt.pieces``). The old
behaviour (specials parsed everywhere, as llama.cpp and transformers do by default) is
``parse_special=True``.

Two reasoning styles:
- thinking models (DeepSeek-R1 distills, Qwen3) write ``<think>...</think>`` then answer;
- other models get a system prompt asking for step-by-step work and a last line that
  starts with ``Final answer:``, which marks where the answer begins.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .engine.text import clean_text
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

# Private-use code points (plane 15) that wrap a control-token string typed inside a message.
MARK_OPEN, MARK_CLOSE = "\U000f0000", "\U000f0001"
# Names under which a message's reasoning may arrive; templates read ``reasoning_content``
# (DeepSeek, Qwen3) or ``thinking`` (gpt-oss). Same aliases as transformers.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")

Message = dict[str, Any]


# -- the Jinja environment ------------------------------------------------------------------


class _GenerationBlock(jinja2.ext.Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}``: marks the assistant's text
    for training masks; for rendering it is its body, unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names (no way to reach CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (Jinja's own signature trick)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


class _Dict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, and nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def chat_environment() -> ImmutableSandboxedEnvironment:
    """A Jinja environment in which chat templates render as they do in transformers."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


# -- prompts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt: its text, and the pieces to tokenize.

    ``pieces`` is ``[(text, parse_special), ...]``: the template's scaffolding with
    ``parse_special=True`` (its ``<|im_start|>`` become control tokens), text typed inside
    messages that looks like a control token with ``parse_special=False``. Concatenated, the
    pieces' texts are ``text``. ``Engine.tokenize_prompt`` turns them into token ids with
    exactly one BOS.
    """

    text: str
    pieces: tuple[tuple[str, bool], ...]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TemplateCapabilities:
    """What a chat template accepts, found by trial rendering.

    ``system_role``: a system message is rendered (not refused, not dropped).
    ``alternating_roles``: the template refuses two user turns in a row.
    ``reasoning_in_history``: reasoning (``<think>...</think>``) of an earlier assistant turn
    stays in the prompt (DeepSeek-R1 and Qwen3 templates drop it).
    """

    system_role: bool
    alternating_roles: bool
    reasoning_in_history: bool


_PROBE_SYSTEM, _PROBE_USER, _PROBE_REASONING = "SYSPROBE-7c1", "USERPROBE-7c1", "REASONPROBE-7c1"


@dataclass(frozen=True)
class ChatFormat:
    """How to turn messages into a prompt for one model, and how its replies are shaped.

    ``control_tokens`` are the texts of the vocabulary's control tokens (``Engine.control_tokens``);
    with them, control-token strings typed inside messages stay text. ``template_kwargs`` are
    passed to every render (``enable_thinking``, ``reasoning_effort``, ...).
    """

    template: str | None
    bos_token: str = ""
    eos_token: str = ""
    control_tokens: tuple[str, ...] = ()
    parse_special: bool = False  # True: control tokens typed in messages are parsed (unsafe)
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_template(self) -> bool:
        return bool(self.template)

    @property
    def thinking(self) -> bool:
        """True for models that reason inside ``<think>...</think>``."""
        return bool(self.template) and (THINK_CLOSE in self.template or THINK_OPEN in self.template)

    def accepts(self, name: str) -> bool:
        """Whether the template reads the variable ``name`` (``enable_thinking``, ...)."""
        return bool(self.template) and re.search(rf"\b{re.escape(name)}\b", self.template) is not None

    @cached_property
    def _compiled(self) -> jinja2.Template:
        try:
            return chat_environment().from_string(self.template or CHATML_TEMPLATE)
        except jinja2.exceptions.TemplateError as exc:
            raise EdgesrmError(f"the model's chat template does not parse: {exc}") from None

    @cached_property
    def _control_re(self) -> re.Pattern[str] | None:
        tokens = sorted({t for t in self.control_tokens if t}, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, tokens))) if tokens else None

    @cached_property
    def capabilities(self) -> TemplateCapabilities:
        def renders(messages: list[Message], *probes: str) -> bool:
            try:
                text = self._render_raw(messages, True, {})
            except Exception:  # noqa: BLE001 - any refusal counts; the real render reports it
                return False
            return all(p in text for p in probes)

        user = {"role": "user", "content": _PROBE_USER}
        return TemplateCapabilities(
            system_role=renders([{"role": "system", "content": _PROBE_SYSTEM}, user], _PROBE_SYSTEM),
            alternating_roles=not renders([user, {"role": "user", "content": "second"}]),
            reasoning_in_history=renders(
                [user, {"role": "assistant", "content": f"{THINK_OPEN}\n{_PROBE_REASONING}\n{THINK_CLOSE}\n\nok"},
                 {"role": "user", "content": "next"}],
                _PROBE_REASONING,
            ),
        )

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        """The prompt text for ``messages`` (see ``prompt``)."""
        return self.prompt(messages, add_generation_prompt=add_generation_prompt, **template_kwargs).text

    def prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               **template_kwargs: Any) -> ChatPrompt:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) into a ``ChatPrompt``.

        Messages the template refuses are adapted first (system text into the first user turn,
        consecutive turns of one role joined). Raises ``EdgesrmError`` for malformed messages
        and for templates that fail.
        """
        messages = self.adapt(_checked(messages))
        kwargs = {**self.template_kwargs, **template_kwargs}
        marked = messages if self.parse_special or self._control_re is None else _mark(messages, self._control_re)
        try:
            rendered = self._render_raw(marked, add_generation_prompt, kwargs)
        except jinja2.exceptions.TemplateError as exc:
            raise EdgesrmError(f"the model's chat template failed: {exc}") from None
        except EdgesrmError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template's own bug (TypeError, ...): one line
            raise EdgesrmError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
        return _split_marked(rendered)

    def adapt(self, messages: list[Message]) -> list[Message]:
        """``messages`` as this template accepts them (see ``capabilities``)."""
        if not self.has_template:
            return messages
        caps = self.capabilities
        out = [dict(m) for m in messages]
        if not caps.system_role and any(m["role"] == "system" for m in out):
            system = "\n\n".join(m["content"] for m in out if m["role"] == "system" and m["content"])
            out = [m for m in out if m["role"] != "system"]
            first_user = next((m for m in out if m["role"] == "user"), None)
            if first_user is None:
                out.insert(0, {"role": "user", "content": system})
            elif system:
                first_user["content"] = f"{system}\n\n{first_user['content']}" if first_user["content"] else system
        if caps.alternating_roles:
            joined: list[Message] = []
            for m in out:
                if joined and joined[-1]["role"] == m["role"] and m["role"] in ("user", "assistant"):
                    joined[-1]["content"] = f"{joined[-1]['content']}\n\n{m['content']}"
                else:
                    joined.append(m)
            out = joined
        return out

    def reasoning_prompt(self, question: str, system: str | None = None, **template_kwargs: Any) -> ChatPrompt:
        """The prompt that makes this model reason before it answers."""
        messages: list[Message] = []
        if system is None and not self.thinking:
            system = STEP_BY_STEP_SYSTEM
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": question})
        return self.prompt(messages, **template_kwargs)

    def splitter(self, prompt: ChatPrompt | str) -> "ReasoningSplitter":
        return ReasoningSplitter(self.thinking, opened=str(prompt).rstrip().endswith(THINK_OPEN))

    def _render_raw(self, messages: list[Message], add_generation_prompt: bool, kwargs: Mapping[str, Any]) -> str:
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, "tools": None, "documents": None,
                     **kwargs, "messages": _with_reasoning_aliases(messages),
                     "add_generation_prompt": add_generation_prompt}
        return self._compiled.render(variables)


def _checked(messages: Sequence[Message]) -> list[Message]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise EdgesrmError("messages must be a list of {'role': ..., 'content': ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise EdgesrmError(f"message {i} must be an object with a string 'role' and 'content'")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise EdgesrmError(f"message {i}: 'content' must be text, got {type(content).__name__}")
        # Keys whose value is None are left out, as transformers does: templates test for presence.
        # Text that cannot be UTF-8 (lone surrogates) is replaced by U+FFFD (``clean_text``).
        out.append({k: clean_text(v) if isinstance(v, str) else v for k, v in m.items() if v is not None})
        out[-1].setdefault("content", "")
    return out


def _with_reasoning_aliases(messages: list[Message]) -> list[Message]:
    """Reasoning given under any of ``REASONING_KEYS`` is offered under all of them."""
    out = []
    for m in messages:
        reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
        out.append(m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


def _mark(messages: list[Message], control_re: re.Pattern[str]) -> list[Message]:
    """Wrap every control-token string inside message values in ``MARK_OPEN``/``MARK_CLOSE``."""

    def mark(value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(MARK_OPEN, "").replace(MARK_CLOSE, "")  # no forged markers
            return control_re.sub(lambda m: MARK_OPEN + m.group(0) + MARK_CLOSE, value)
        if isinstance(value, Mapping):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [mark(v) for v in value]
        return value

    return [mark(m) for m in messages]


_MARKED_RE = re.compile(f"{MARK_OPEN}([^{MARK_OPEN}{MARK_CLOSE}]*){MARK_CLOSE}|[{MARK_OPEN}{MARK_CLOSE}]")


def _split_marked(rendered: str) -> ChatPrompt:
    """Cut a rendered prompt at its marked spans: the scaffolding between them is parsed for
    special tokens, the spans are plain text. A lone marker (a template split a marked span)
    is dropped but still separates the text around it."""
    if MARK_OPEN not in rendered and MARK_CLOSE not in rendered:
        return ChatPrompt(rendered, ((rendered, True),) if rendered else ())
    pieces: list[tuple[str, bool]] = []
    at = 0
    for m in _MARKED_RE.finditer(rendered):
        if m.start() > at:
            pieces.append((rendered[at : m.start()], True))
        if m.group(1):
            pieces.append((m.group(1), False))
        at = m.end()
    if at < len(rendered):
        pieces.append((rendered[at:], True))
    return ChatPrompt("".join(text for text, _ in pieces), tuple(pieces))


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
