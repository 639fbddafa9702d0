"""auto: picks the strategy and the number of paths from the budget and the decode speed
measured for this model on this machine.

Without a deadline or a token budget there is nothing to trade, and one chain of thought
(cot) is the cheapest good answer. With a budget, the widest self-consistency that fits
(8 or 4 paths, early stopping) is chosen; else cot; else budget forcing, which always
answers in time.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..speed import decode_speed
from . import budget_forcing, cot, self_consistency
from .base import Result, Task
from .self_consistency import first_paths

SAFETY = 0.8  # plan to use this share of the deadline
# Share of N paths' tokens early-stopping SC is expected to use: 0.71 (Q4_K_M) and 0.75 (Q4_0)
# measured on 50 GSM8K questions with Qwen2.5-Coder-1.5B (benchmarks/RESULTS.md), a model that
# seldom agrees with itself.
EARLY_STOP_TOKENS = 0.75


def prepare(engine, n: int) -> None:
    """Measure (once per model and machine) the speeds ``choose`` needs, so that the
    measurement is not charged to the answer's deadline."""
    for width in sorted({1, min(first_paths(n), engine.max_parallel)}):
        decode_speed(engine, width)


def expected_path_tokens(task: Task) -> int:
    return min(task.max_tokens, 1024 if task.thinking else 256)


def choose(task: Task) -> tuple[str, int]:
    deadline, token_budget = task.budget.deadline_s, task.budget.max_tokens
    if deadline is None and token_budget is None:
        return "cot", 1
    length = expected_path_tokens(task)
    widest = min(task.n, task.engine.max_parallel)
    for n in (8, 4):
        if n > widest:
            continue
        if token_budget is not None and token_budget < EARLY_STOP_TOKENS * n * length:
            continue
        # All n paths, in rounds as wide as the first launch. Dissent can split a round; sc then
        # launches a path only while the time left covers its answer (a path the deadline cuts does not vote).
        width = first_paths(n)
        seconds = math.ceil(n / width) * length / (decode_speed(task.engine, width) / width)
        if deadline is None or seconds <= SAFETY * deadline:
            return "sc", n
    cot_fits_time = deadline is None or length / decode_speed(task.engine, 1) <= SAFETY * deadline
    cot_fits_tokens = token_budget is None or token_budget >= length
    return ("cot", 1) if cot_fits_time and cot_fits_tokens else ("budget", 1)


def run(task: Task) -> Result:
    name, n = choose(task)
    chosen = {"sc": self_consistency.run, "cot": cot.run, "budget": budget_forcing.run}[name]
    result = chosen(replace(task, n=n))
    result.strategy = f"auto:{name}"
    return result
