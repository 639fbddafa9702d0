"""OpenAI's chat and legacy completions formats: requests checked into keyword arguments for
``Runtime.ask`` / ``Runtime.complete``, results turned into responses and stream chunks.

Reasoning follows the conventions clients already parse (DeepSeek's API, llama-server):
``message.reasoning_content`` / ``delta.reasoning_content`` beside ``content``, and
``usage.completion_tokens_details.reasoning_tokens``. edgesrm's own request fields:

- ``strategy``: plain (the default: the conversation as it is, the whole reply), direct, cot,
  budget, sc, plan, reflect, auto. Strategies other than plain answer one question: the
  messages are then one user message, after an optional system message.
- ``paths``: sc's paths voted into one answer (OpenAI's ``n`` keeps its meaning: independent
  choices).
- ``thinking_budget``: tokens a thinking model may think before it must answer.
- ``deadline_ms``: the answer arrives within this time (as ``edgesrm ask --deadline``).
- ``reasoning_effort`` maps to thinking budgets: none and minimal 0 (Qwen3-style templates also
  get ``enable_thinking: false``), low 512, medium 2048, high no cap but ``max_tokens``.

The response's ``edgesrm`` object says which strategy ran, the votes (sc), the extracted answer
and the notes. Unknown fields are ignored, as OpenAI's clients expect of a server.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..budget import Budget
from ..checks import MAX_SEQUENCES, MAX_TOKENS
from ..engine import CONTEXT, LENGTH
from ..strategies import STRATEGIES, Result

DEFAULT_MAX_TOKENS = 1024
EFFORT_BUDGETS: dict[str, int | None] = {"none": 0, "minimal": 0, "low": 512, "medium": 2048, "high": None}
ROLES = {"system", "developer", "user", "assistant"}


class BadRequest(Exception):
    """A request OpenAI's API would refuse with 400 (``param``: the field at fault)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    ask: dict = field(default_factory=dict)  # keyword arguments for Runtime.ask
    seed: int | None = None


@dataclass
class CompletionRequest:
    prompt: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    complete: dict = field(default_factory=dict)  # keyword arguments for Runtime.complete
    seed: int | None = None


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got {value!r}", name)
    if not isinstance(value, kinds):
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got {type(value).__name__}", name)
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = _get(body, name, (int, float), default)
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be from {low:g} to {high:g}, got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    value = _get(body, name, (int,), default)
    if value is not None and not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer from {low:,} to {high:,}, got {value!r}", name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return tuple(stop)
    raise BadRequest("'stop' must be a string or an array of at most 16 strings", "stop")


def _sampling(body: dict) -> dict:
    seed = _integer(body, "seed", -(2**63), 2**63 - 1, None)
    return {
        "temperature": _number(body, "temperature", 0.0, 2.0, 0.6),
        "top_p": _number(body, "top_p", 0.0, 1.0, 0.95) or 1e-6,  # 0 would keep no token
        "seed": None if seed is None else seed % (2**32 - 1),
        "stop": _stop(body),
    }


def _max_tokens(body: dict) -> int:
    value = _integer(body, "max_completion_tokens", 1, MAX_TOKENS, None)
    if value is None:
        value = _integer(body, "max_tokens", 1, MAX_TOKENS, None)
    return DEFAULT_MAX_TOKENS if value is None else value


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = _get(body, "stream", (bool,), False)
    options = _get(body, "stream_options", (dict,), {})
    return stream, bool(options.get("include_usage", False))


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's array of parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text parts are supported ({{'type': 'text', 'text': ...}})", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{where}: content must be a string or an array of text parts", "messages")


def parse_chat(body: Any) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; raises ``BadRequest``."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty array of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] must be an object whose role is one of {', '.join(sorted(ROLES))}",
                             "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        messages.append({"role": role, "content": _text(content, f"messages[{i}]")})
    stream, include_usage = _stream_options(body)
    n = _integer(body, "n", 1, 16, 1)
    strategy = _get(body, "strategy", (str,), "plain")
    if strategy not in STRATEGIES:
        raise BadRequest(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}", "strategy")
    paths = _integer(body, "paths", 1, MAX_SEQUENCES, 8 if strategy in ("sc", "auto") else 1)
    thinking_budget = _integer(body, "thinking_budget", 0, MAX_TOKENS, None)
    template_kwargs = dict(_get(body, "chat_template_kwargs", (dict,), {}))
    effort = _get(body, "reasoning_effort", (str,), None)
    if effort is not None:
        if effort not in EFFORT_BUDGETS:
            raise BadRequest(f"'reasoning_effort' must be one of {', '.join(EFFORT_BUDGETS)}, got {effort!r}",
                             "reasoning_effort")
        if thinking_budget is None:
            thinking_budget = EFFORT_BUDGETS[effort]
        if EFFORT_BUDGETS[effort] == 0:
            template_kwargs.setdefault("enable_thinking", False)
    deadline_ms = _get(body, "deadline_ms", (int, float), None)
    if deadline_ms is not None and (not math.isfinite(deadline_ms) or deadline_ms <= 0):
        raise BadRequest(f"'deadline_ms' must be a positive number of milliseconds, got {deadline_ms!r}", "deadline_ms")
    ask: dict[str, Any] = {
        "strategy": strategy, "n": paths, "max_tokens": _max_tokens(body), **_sampling(body),
        "thinking_budget": thinking_budget, "chat_template_kwargs": template_kwargs or None,
        "budget": Budget(deadline_s=None if deadline_ms is None else deadline_ms / 1000),
    }
    if strategy == "plain":
        ask["messages"] = messages
    else:
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 1 or turns[0]["role"] != "user" or len(system) > 1:
            raise BadRequest(f"strategy {strategy} answers one question: send one user message (after an "
                             "optional system message), or use strategy plain for a conversation", "messages")
        ask["question"], ask["system"] = turns[0]["content"], (system[0] if system else None)
    seed = ask["seed"]
    return ChatRequest(messages=messages, stream=stream, include_usage=include_usage, n=n, ask=ask, seed=seed)


def parse_completion(body: Any) -> CompletionRequest:
    """Check a ``/v1/completions`` body; raises ``BadRequest``."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    stream, include_usage = _stream_options(body)
    n = _integer(body, "n", 1, 16, 1)
    complete = {"max_tokens": _integer(body, "max_tokens", 1, MAX_TOKENS, 16), **_sampling(body)}
    return CompletionRequest(prompt=prompt, stream=stream, include_usage=include_usage, n=n, complete=complete,
                             seed=complete["seed"])


def choice_seed(seed: int | None, i: int) -> int | None:
    """The seed of choice ``i`` of ``n``: distinct and reproducible (``None``: random)."""
    return None if seed is None else (seed + i) % (2**32 - 1)


def finish_reason(reason: str) -> str:
    """An engine or strategy finish reason as OpenAI's: ``stop`` or ``length``."""
    return "length" if reason in (LENGTH, CONTEXT, "deadline", "pruned", "dropped", "") else "stop"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_message(result: Result) -> dict:
    message = {"role": "assistant", "content": result.answer}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    return message


def chat_usage(results: list[Result], reasoning_tokens: int) -> dict:
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens + r.forced_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": results[0].cached_tokens if results else 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def edgesrm_fields(result: Result) -> dict:
    """What the response says beyond OpenAI's fields."""
    return {
        "strategy": result.strategy,
        "paths": len(result.paths),
        "votes": result.votes,
        "extracted": result.extracted,
        "notes": result.notes,
        "deadline_missed": result.deadline_missed,
        "seed": result.seed,
        "seconds": round(result.total_s, 3),
    }


def chat_response(model: str, results: list[Result], reasoning_tokens: int) -> dict:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": chat_message(r), "finish_reason": finish_reason(r.finish_reason), "logprobs": None}
                    for i, r in enumerate(results)],
        "usage": chat_usage(results, reasoning_tokens),
        "edgesrm": edgesrm_fields(results[0]) if len(results) == 1 else [edgesrm_fields(r) for r in results],
    }


def chat_chunk(cid: str, model: str, created: int, index: int, delta: dict, finish: str | None = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}



def completion_response(model: str, completions: list) -> dict:
    prompt = completions[0].prompt_tokens
    generated = sum(c.completion_tokens for c in completions)
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "text": c.text, "finish_reason": finish_reason(c.finish_reason), "logprobs": None}
                    for i, c in enumerate(completions)],
        "usage": {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
                  "prompt_tokens_details": {"cached_tokens": completions[0].cached_tokens}},
    }


def completion_chunk(cid: str, model: str, created: int, index: int, text: str, finish: str | None = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}
