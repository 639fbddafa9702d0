"""Budgets: how many tokens, how much wall-clock time and how much memory an answer may use.

- Tokens: what a path spends is its sampled tokens plus the tokens a strategy forces into it
  (answer markers, cues, "Wait"); a path never spends more than ``max_tokens`` nor its share of
  ``Budget.max_tokens``, so all paths together never exceed the token budget (the rules are
  kept in ``strategies.base.PathRunner``).
- Deadline: an answer is always returned before it. ``Deadline`` measures how long a
  decode step takes and tells the strategy when to stop thinking and start answering
  (the answer's steps are reserved, never more than the path may still spend, so that a
  deadline the run would meet anyway changes nothing) and when to stop altogether (the next
  step would overshoot).
- Memory: ``plan_memory`` estimates the peak resident memory of a configuration before
  anything is loaded (mapped weights + KV cache + compute buffers + llama.cpp's vocabulary +
  the interpreter) and picks the context size, KV cache type, batch and number of paths that
  fit; ``MemoryPlan.given_up`` says what it gave up.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from .checks import INT32_MAX, check_int, check_number
from .errors import EdgesrmError
from .models import read_header

# Resident memory of the interpreter with numpy, click, Jinja2, llama.cpp and edgesrm's command
# line loaded, before any model (measured: 51 MiB with CPython 3.11 on x86-64 Linux).
RUNTIME_MB = 52.0
# llama.cpp's vocabulary, merges and token caches, per vocabulary entry: loading SmolLM2-135M
# (49,152 tokens) raises the peak by 17.4 MiB beyond its mapped weights (measured).
VOCAB_BYTES_PER_TOKEN = 384
# Bytes per KV cache element for each cache type (ggml block size / bytes per block).
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MiB = 2**20


@dataclass(frozen=True)
class Budget:
    """Limits for one answer; ``None`` means unlimited."""

    max_tokens: int | None = None  # generated tokens, all paths together
    deadline_s: float | None = None  # seconds from the call to the answer
    memory_mb: float | None = None  # peak resident memory of the process

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # checked, and made plain int / float
        set_field(self, "max_tokens", check_int("Budget.max_tokens", self.max_tokens, 1, INT32_MAX, optional=True))
        set_field(self, "deadline_s", check_number("Budget.deadline_s", self.deadline_s, 0.0, low_open=True,
                                                   optional=True, unit=" (seconds)"))
        set_field(self, "memory_mb", check_number("Budget.memory_mb", self.memory_mb, 0.0, low_open=True, optional=True,
                                                  unit=" (MB)"))


# Decode steps measured before a deadline may end reasoning: fewer are too noisy an estimate.
MIN_OBSERVED_STEPS = 3


class Deadline:
    """The wall clock of one answer, and the measured cost of a decode step."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter() if start is None else start
        self._recent: deque[float] = deque(maxlen=8)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed

    def observe_step(self, seconds: float) -> None:
        self._recent.append(seconds)

    @property
    def step_s(self) -> float:
        """The next step's expected duration: the median of the recent ones (one step slowed
        down by another process does not count for many).

        A step is only started when at least this much time is left, so even a step slower
        than expected ends less than one step after the deadline.
        """
        return statistics.median(self._recent) if self._recent else 0.0

    def must_answer(self, answer_steps: int) -> bool:
        """True when only the time for ``answer_steps`` more steps (plus one) is left, judged
        once ``MIN_OBSERVED_STEPS`` steps have been measured (``must_stop`` guards before)."""
        if len(self._recent) < MIN_OBSERVED_STEPS:
            return False
        return self.remaining <= (answer_steps + 1) * self.step_s

    def must_stop(self) -> bool:
        """True when one more step would end after the deadline, judged by the slowest of the
        recent steps: the last step before a deadline is the one that must not overrun it (by
        the median, a step slower than usual ended past 1 s deadlines on the embedded model)."""
        return self.remaining <= 0 or (bool(self._recent) and self.remaining < max(self._recent))

    @property
    def missed(self) -> bool:
        return self.remaining < 0


@dataclass(frozen=True)
class MemoryPlan:
    """A configuration and its estimated peak resident memory, in MiB."""

    n_ctx: int
    kv_type: str
    n_seqs: int
    n_batch: int
    weights_mb: float
    kv_mb: float
    compute_mb: float
    runtime_mb: float = RUNTIME_MB  # the interpreter and llama.cpp's vocabulary
    given_up: tuple[str, ...] = ()  # what was given up to fit the budget (plan_memory)

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_mb + self.compute_mb + self.runtime_mb

    def describe(self) -> str:
        return (
            f"{self.total_mb:,.0f} MB (weights {self.weights_mb:,.0f}, KV cache {self.kv_mb:,.0f} for "
            f"{self.n_ctx:,} tokens as {self.kv_type}, compute {self.compute_mb:,.0f}, runtime {self.runtime_mb:,.0f})"
        )


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that decide its memory use, read from the GGUF header."""

    file_bytes: int
    n_layer: int
    n_embd: int
    n_ff: int
    n_vocab: int
    kv_dim: int  # K plus V elements per token per layer

    @classmethod
    def of(cls, path: Path) -> "ModelShape":
        meta = read_header(path).metadata
        arch = meta.get("general.architecture")

        def get(key: str, default: int | None = None) -> int:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise EdgesrmError(f"{path} lacks {arch}.{key}: cannot estimate its memory")
            return int(value)

        n_embd, n_head = get("embedding_length"), get("attention.head_count")
        n_head_kv = get("attention.head_count_kv", n_head)
        key_len = get("attention.key_length", n_embd // n_head)
        value_len = get("attention.value_length", key_len)
        n_vocab = int(meta.get("tokenizer.ggml.tokens") or get("vocab_size"))
        return cls(path.stat().st_size, get("block_count"), n_embd, get("feed_forward_length", 4 * n_embd),
                   n_vocab, n_head_kv * (key_len + value_len))


def estimate_memory(shape: ModelShape, *, n_ctx: int, kv_type: str, n_seqs: int, n_batch: int) -> MemoryPlan:
    """Peak resident memory of a loaded model decoding ``n_seqs`` sequences.

    Weights are memory-mapped and all touched while decoding. llama.cpp rounds the context
    up to a multiple of 256 and zeroes the whole KV cache at creation. The compute buffer is
    dominated by one micro-batch of logits and feed-forward activations (fitted on
    llama.cpp's own report: 98 MiB for SmolLM2-135M at a batch of 512). It is counted whole
    although decoding touches only about half of it (measured), so the estimate errs high:
    tests hold it between the measured peak and 1.3 times it. llama.cpp's vocabulary (tokens,
    merges, caches) and the interpreter are counted with the runtime.
    """
    ctx = -(-n_ctx // 256) * 256
    kv = ctx * shape.n_layer * shape.kv_dim * KV_BYTES[kv_type]
    compute = n_batch * 4 * (shape.n_vocab + shape.n_ff) + n_seqs * shape.n_vocab * 4
    runtime = RUNTIME_MB + shape.n_vocab * VOCAB_BYTES_PER_TOKEN / MiB
    return MemoryPlan(n_ctx, kv_type, n_seqs, n_batch, shape.file_bytes / MiB, kv / MiB, compute / MiB, runtime)


def plan_memory(
    model_path: Path, memory_mb: float | None, *, n_ctx: int, n_seqs: int, kv_type: str = "f16", n_batch: int = 512,
    min_ctx: int = 512,
) -> MemoryPlan:
    """The best configuration that fits ``memory_mb``.

    What is given up first costs the least: KV precision (q8_0 is nearly lossless), then
    prefill batch size (speed of the prompt only), then parallel paths, then context; the
    plan's ``given_up`` lists what was.
    """
    shape = ModelShape.of(model_path)
    wanted = estimate_memory(shape, n_ctx=n_ctx, kv_type=kv_type, n_seqs=n_seqs, n_batch=n_batch)
    if memory_mb is None or wanted.total_mb <= memory_mb:
        return wanted
    kv_types = [t for t in ("f16", "q8_0", "q4_0") if KV_BYTES[t] <= KV_BYTES[kv_type]]
    batches = [b for b in (512, 256, 128, 64) if b <= n_batch]
    seq_counts = sorted({n_seqs, *(n for n in (8, 4, 2, 1) if n < n_seqs)}, reverse=True)
    per_seq_ctx = max(1, n_ctx // max(n_seqs, 1))
    for seqs in seq_counts:
        ctx = max(min_ctx, n_ctx if seqs == n_seqs else per_seq_ctx * seqs)
        while True:
            for kv in kv_types:
                for batch in batches:
                    plan = estimate_memory(shape, n_ctx=ctx, kv_type=kv, n_seqs=seqs, n_batch=batch)
                    if plan.total_mb <= memory_mb:
                        return replace(plan, given_up=_given_up(plan, wanted, memory_mb))
            if ctx <= min_ctx:
                break
            ctx = max(min_ctx, ctx // 2)
    smallest = estimate_memory(shape, n_ctx=min_ctx, kv_type=kv_types[-1], n_seqs=1, n_batch=batches[-1])
    raise EdgesrmError(
        f"{model_path.name} does not fit in {memory_mb:,.6g} MB: even the smallest configuration needs "
        f"{smallest.describe()}; allow at least {math.ceil(smallest.total_mb)} MB or use a smaller quantization"
    )


def _given_up(plan: MemoryPlan, wanted: MemoryPlan, memory_mb: float) -> tuple[str, ...]:
    """What ``plan`` gives up against ``wanted``, said as notes."""
    changes = []
    if plan.kv_type != wanted.kv_type:
        changes.append(f"KV cache as {plan.kv_type} instead of {wanted.kv_type}")
    if plan.n_batch != wanted.n_batch:
        changes.append(f"prompt batch of {plan.n_batch} tokens instead of {wanted.n_batch} (slower prefill)")
    if plan.n_seqs != wanted.n_seqs:
        changes.append(f"{plan.n_seqs} sequences at once instead of {wanted.n_seqs} (paths run in turns)")
    if plan.n_ctx * wanted.n_seqs < wanted.n_ctx * plan.n_seqs:  # less context per sequence
        changes.append(f"context of {plan.n_ctx:,} tokens for {plan.n_seqs} sequences instead of "
                       f"{wanted.n_ctx:,} for {wanted.n_seqs}")
    if not changes:
        return ()
    return (f"memory: to fit {memory_mb:,.0f} MB (estimated peak {plan.total_mb:,.0f} MB instead of "
            f"{wanted.total_mb:,.0f}): " + "; ".join(changes),)
