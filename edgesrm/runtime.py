"""The Python API for apps that embed edgesrm: ``load`` a model, ``ask`` it a question."""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import Budget, Deadline, plan_memory
from .chat import ChatFormat
from .checks import INT32_MAX, MAX_CTX, MAX_SEQUENCES, MAX_THREADS, MAX_TOKENS, MIN_CTX, check_int, check_number
from .engine import Cancelled, Engine, EngineConfig, SamplingParams, Scheduler, set_verbose
from .engine.text import clean_text
from .errors import EdgesrmError
from .models import resolve_model, training_context
from . import speed
from .strategies import STRATEGIES, Result, Task, run_strategy
from .strategies.base import StreamCallback
from .strategies.self_consistency import launch_policy, paths_wanted

if TYPE_CHECKING:
    from .session import ChatSession

DEFAULT_CTX = 4096
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "add_generation_prompt"})  # set by edgesrm itself


def _one_call_at_a_time(method):
    """Runs ``method`` under the runtime's lock, unless a scheduler shares the engine's steps
    between calls: calls from other threads wait their turn (without a scheduler the engine holds
    one generation at a time); a call from inside ``on_text`` gets the engine's error."""

    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        if self.scheduler is not None:
            return method(self, *args, **kwargs)
        with self._lock:
            return method(self, *args, **kwargs)

    return serialized


@dataclass
class Completion:
    """A raw continuation of a prompt (``Runtime.complete``; no chat template, no strategy)."""

    text: str
    finish_reason: str  # eos, stop, length or context (engine.EOS...)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    seconds: float
    seed: int


class Runtime:
    """A loaded model ready to answer; create it with ``edgesrm.load``. ``ask`` from several
    threads is safe: the calls run one after another, or, once ``start_scheduler`` has been
    called, together, their sequences sharing every decode step."""

    scheduler: Scheduler | None = None

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.RLock()
        self.chat = ChatFormat(
            template=engine.meta("tokenizer.chat_template"),
            bos_token=engine.detokenize_special(engine.bos_token),
            eos_token=engine.detokenize_special(engine.eos_token),
            control_tokens=engine.control_tokens,
        )

    @property
    def model_path(self) -> Path:
        return self.engine.model_path

    def chat_session(self, system: str | None = None, **ask_kwargs: Any) -> ChatSession:
        """A conversation kept across turns: ``session.send(text) -> Result``; each turn reuses
        the previous turn's KV cells through the prefix cache (see ``edgesrm.session``)."""
        from .session import ChatSession

        return ChatSession(self, system, **ask_kwargs)

    def start_scheduler(self, *, max_queue: int = 64) -> Scheduler:
        """Let calls from several threads run together: one decode thread steps every call's
        sequences in one ``llama_decode`` (``edgesrm.engine.scheduler``); at most ``max_queue``
        calls wait for free sequences, beyond that ``ask`` raises ``QueueFull``. The server
        calls this; ``close`` stops it."""
        max_queue = check_int("max_queue", max_queue, 0, INT32_MAX)
        with self._lock:
            if self.scheduler is None:
                self.scheduler = Scheduler(self.engine, max_queue=max_queue)
            return self.scheduler

    def _request(self, slots: int, max_tokens: int, cancel: threading.Event | None):
        """The body runs as one scheduler request (admitted, queued or refused), or as is."""
        if self.scheduler is None:
            return contextlib.nullcontext()
        return self.scheduler.request(slots=slots, max_tokens=max_tokens, cancel=cancel)

    @_one_call_at_a_time
    def ask(
        self,
        question: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        strategy: str | None = None,
        n: int = 8,
        budget: Budget | None = None,
        max_tokens: int = 512,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        seed: int | None = None,
        system: str | None = None,
        early_stop: bool = True,
        weighted: bool = False,
        waits: int = 1,
        on_text: StreamCallback | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        parse_special: bool = False,
        stop: Sequence[str] = (),
        thinking_budget: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Answer ``question`` with a reasoning ``strategy`` (see ``edgesrm.strategies``;
        default ``cot``), or reply to a conversation: ``messages`` (``[{"role": "user",
        "content": ...}, ...]``, instead of ``question``) go to the chat template untouched and
        the model's whole reply is the answer (strategy ``plain``, the default for ``messages``).
        Raises ``EdgesrmError`` for any invalid argument, before anything runs.

        ``n`` is the number of paths for ``sc``; ``budget`` caps tokens (all paths
        together) and wall-clock time (an answer is returned before the deadline);
        ``on_text(kind, text)`` streams single-path strategies as they generate (and ``sc``'s
        chosen path once voted), ``kind`` being ``"reasoning"`` or ``"answer"``; the pieces of each
        kind join to the result's ``reasoning`` and ``answer``. ``max_tokens`` caps each path's
        sampled and forced tokens; the result's ``notes`` say what was given up or not honoured.
        ``chat_template_kwargs`` are passed to the model's chat template (``{"enable_thinking":
        False}`` for Qwen3, ``{"reasoning_effort": "low"}``...). Control-token strings in ``question`` and ``system`` stay text unless
        ``parse_special`` (then a question can open a new turn: never for untrusted text).
        ``stop`` strings end a path (cut from its text); ``thinking_budget`` caps a thinking
        model's reasoning (tokens) before it must answer. Setting ``cancel`` (a
        ``threading.Event``) from another thread drops the paths at the next step and raises
        ``Cancelled``. With a scheduler, ``QueueFull`` when too many calls wait.
        """
        if self.engine._closed:
            raise EdgesrmError("this runtime is closed: load the model again")
        # Every number is checked before anything runs (SamplingParams checks its own).
        n = check_int("n", n, 1, MAX_SEQUENCES)
        max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS)
        waits = check_int("waits", waits, 0, MAX_TOKENS)
        thinking_budget = check_int("thinking_budget", thinking_budget, 0, MAX_TOKENS, optional=True)
        stop = _stop_strings(stop)
        if cancel is not None and not isinstance(cancel, threading.Event):
            raise EdgesrmError(f"cancel must be a threading.Event or None, got {type(cancel).__name__}")
        if seed is None:
            seed = random.randrange(2**31)  # reported in the result, so any answer can be replayed
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        if not isinstance(budget, (Budget, type(None))):
            raise EdgesrmError(f"budget must be an edgesrm.Budget, got {type(budget).__name__}")
        if (question is None) == (messages is None):
            raise EdgesrmError("give either a question or messages (a conversation), not both" if messages is not None
                               else "give a question (or messages, a conversation)")
        if strategy is None:
            strategy = "plain" if messages is not None else "cot"
        if messages is not None:
            messages = [{**m, "content": clean_text(m["content"])} if isinstance(m, Mapping)
                        and isinstance(m.get("content"), str) else m for m in _message_list(messages)]
            question = next((m["content"] for m in reversed(messages) if isinstance(m, Mapping)
                             and m.get("role") == "user" and isinstance(m.get("content"), str)), "")
        if not isinstance(question, str):
            raise EdgesrmError(f"the question must be a str, got {type(question).__name__}")
        if system is not None and not isinstance(system, str):
            raise EdgesrmError(f"system must be a str or None, got {type(system).__name__}")
        for name, flag in (("early_stop", early_stop), ("weighted", weighted), ("parse_special", parse_special)):
            if not isinstance(flag, bool):
                raise EdgesrmError(f"{name} must be True or False, got {flag!r}")
        if on_text is not None and not callable(on_text):
            raise EdgesrmError(f"on_text must be a function (kind, text) or None, got {type(on_text).__name__}")
        # Bytes that were not UTF-8 (command lines, JSON "\\udcff") become U+FFFD here, so that the
        # result's question is valid text too.
        question, system = clean_text(question), None if system is None else clean_text(system)
        budget = budget or Budget()
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise EdgesrmError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if messages is None and not question.strip():
            raise EdgesrmError("the question is empty")
        if messages is not None and not messages:
            raise EdgesrmError("messages is empty: give at least one message")
        chat = replace(self.chat, parse_special=True) if parse_special else self.chat
        if chat_template_kwargs is not None and (
            not isinstance(chat_template_kwargs, Mapping)
            or not all(isinstance(k, str) and k not in RESERVED_TEMPLATE_VARIABLES for k in chat_template_kwargs)
        ):
            raise EdgesrmError("chat_template_kwargs must map variable names (other than "
                               f"{', '.join(sorted(RESERVED_TEMPLATE_VARIABLES))}) to values")
        task = Task(
            engine=self.engine, chat=chat, question=question, sampling=sampling, budget=budget, n=n,
            max_tokens=max_tokens, system=system, on_text=on_text, early_stop=early_stop, weighted=weighted,
            waits=waits, template_kwargs=dict(chat_template_kwargs or {}), messages=messages, stop=stop,
            thinking_budget=thinking_budget, cancel=cancel,
            deadline=Deadline(budget.deadline_s),  # the clock starts at the call: time queued counts
        )
        slots = min(n, self.engine.config.max_sequences) if strategy in ("sc", "auto") else 1
        per_path = max_tokens if budget.max_tokens is None else max(1, min(max_tokens, budget.max_tokens // slots))
        with self._request(slots, per_path, cancel):
            # Measured once per model and machine, and planned (cached), not charged to the deadline.
            measuring = time.perf_counter()
            if strategy == "sc" and early_stop:
                launch_policy(task, min(paths_wanted(task), self.engine.max_parallel))
            elif strategy == "auto" and (budget.deadline_s is not None or budget.max_tokens is not None):
                speed.profile(self.engine, n)
            task.deadline.start += time.perf_counter() - measuring
            result = run_strategy(strategy, task)
        result.notes[:0] = getattr(self, "memory_notes", [])  # what the memory plan gave up (load)
        if budget.memory_mb is not None:
            result.notes.append("a memory budget is planned when the model is loaded (edgesrm.load(memory_mb=...), "
                                "ask --memory); Budget.memory_mb in ask changes nothing")
        return result

    @_one_call_at_a_time
    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """Continue ``prompt`` as it is (no chat template; control-token strings in it are
        parsed, as llama-server's ``/completion`` does): OpenAI's legacy completions. ``on_text``
        gets each new piece of text. Raises ``EdgesrmError`` for invalid arguments, ``Cancelled``
        when ``cancel`` is set, ``QueueFull`` as ``ask``."""
        if self.engine._closed:
            raise EdgesrmError("this runtime is closed: load the model again")
        if not isinstance(prompt, str) or not prompt:
            raise EdgesrmError(f"the prompt must be a non-empty str, got {prompt!r:.40}")
        max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS)
        if seed is None:
            seed = random.randrange(2**31)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        stop = _stop_strings(stop)
        if on_text is not None and not callable(on_text):
            raise EdgesrmError(f"on_text must be a function (text) or None, got {type(on_text).__name__}")
        started = time.perf_counter()
        with self._request(1, max_tokens, cancel):
            gen = self.engine.start(clean_text(prompt))
            try:
                seq = gen.add(sampling, max_tokens=max_tokens, stop=stop,
                              on_text=None if on_text is None else (lambda _seq, text: on_text(text)))
                while not seq.finished:
                    if cancel is not None and cancel.is_set():
                        gen.drop(seq)
                        raise Cancelled("the request was cancelled")
                    gen.step()
            finally:
                gen.close()
        return Completion(text=seq.text, finish_reason=seq.finish_reason or "", prompt_tokens=len(gen.prompt_tokens),
                          completion_tokens=seq.n_sampled, cached_tokens=gen.timings.cached_tokens,
                          seconds=time.perf_counter() - started, seed=seed)

    def close(self, grace_s: float = 0.0) -> None:
        """Free the model. With a scheduler, calls running in other threads have ``grace_s``
        seconds to finish, then are cancelled; without one, a running call ends first."""
        if self.scheduler is not None:
            self.scheduler.close(grace_s)
            self.scheduler = None
        with self._lock:
            self.engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_strings(stop: Any) -> tuple[str, ...]:
    """OpenAI's ``stop``: a string or a list of strings (at most 16, none empty)."""
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
        raise EdgesrmError("stop must be a string or a list of at most 16 strings")
    return tuple(clean_text(s) for s in stop if s)


def _message_list(messages: Any) -> list:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise EdgesrmError("messages must be a list of {'role': ..., 'content': ...} objects")
    return list(messages)


def load(
    model: str | Path | None = None,
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    gpu_layers: int | None = None,
    kv_type: str = "f16",
    max_sequences: int = 16,
    memory_mb: float | None = None,
    verbose: bool = False,
    cache_prompt: bool = True,
) -> Runtime:
    """Load a GGUF model (``None``: the embedded SmolLM2-135M-Instruct) and return a Runtime.

    ``n_ctx`` (tokens, all sequences together) defaults to 4096, or the model's training
    context if that is smaller; a larger one than the model was trained for is allowed, with an
    ``EdgesrmWarning``. With ``memory_mb``, the context size, KV cache type, batch and number of
    parallel sequences are chosen (before loading) so that the estimated peak fits; what was
    given up to fit is in every result's ``notes``. ``cache_prompt``: keep finished prompts' KV
    cells for prompts that begin the same way (``EngineConfig.cache_prompt``).
    """
    n_ctx = check_int("n_ctx", n_ctx, MIN_CTX, MAX_CTX, optional=True)  # numbers first, before any loading
    threads = check_int("threads", threads, 1, MAX_THREADS, optional=True)
    gpu_layers = check_int("gpu_layers", gpu_layers, -1, INT32_MAX, optional=True)  # -1: all, as in llama.cpp
    max_sequences = check_int("max_sequences", max_sequences, 1, MAX_SEQUENCES)
    memory_mb = check_number("memory_mb", memory_mb, 0.0, low_open=True, optional=True, unit=" (MB)")
    set_verbose(verbose)
    path = resolve_model(model)
    if n_ctx is None:
        n_ctx = min(DEFAULT_CTX, training_context(path) or DEFAULT_CTX)
    n_batch = 512
    given_up: tuple[str, ...] = ()
    if memory_mb is not None:
        plan = plan_memory(path, memory_mb, n_ctx=n_ctx, n_seqs=max_sequences, kv_type=kv_type)
        n_ctx, kv_type, max_sequences, n_batch = plan.n_ctx, plan.kv_type, plan.n_seqs, plan.n_batch
        given_up = plan.given_up
    config = EngineConfig(n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type,
                          max_sequences=max_sequences, n_batch=n_batch, cache_prompt=cache_prompt)
    runtime = Runtime(Engine(path, config))
    runtime.memory_notes = list(given_up)  # said again in every result's notes
    return runtime
