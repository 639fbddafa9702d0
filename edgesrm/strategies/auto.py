"""auto: picks the strategy and the number of paths from the budget and this model's batch-speed
profile on this machine (``edgesrm.speed``).

Without a deadline or a token budget there is nothing to trade, and one chain of thought
(cot) is the cheapest good answer. With a budget, the widest self-consistency whose predicted
cost fits is chosen (8 or 4 paths, early stopping): its wall time and tokens are predicted by
the same replay that picks sc's launch policy (``early_stopping.predict``), for paths of a
typical length. Else cot, if one typical chain fits; else budget forcing, which always answers
in time.
"""

from __future__ import annotations

from dataclasses import replace

from .. import speed
from . import budget_forcing, cot, self_consistency
from .base import Result, Task
from .early_stopping import STOP_CONFIDENCE, choose_launch, predict

SAFETY = 0.8  # plan to use this share of the deadline


def expected_path_tokens(task: Task) -> int:
    """Tokens a path is planned to take: GSM8K paths of the evaluation model average about 250."""
    return min(task.max_tokens, 1024 if task.thinking else 256)


def choose(task: Task) -> tuple[str, int]:
    """(strategy, paths) for ``task``; measures the speed profile if it is not known yet."""
    deadline, token_budget = task.budget.deadline_s, task.budget.max_tokens
    if deadline is None and token_budget is None:
        return "cot", 1
    length = expected_path_tokens(task)
    widest = min(task.n, task.engine.max_parallel)
    profile = speed.profile(task.engine, widest)
    for n in (8, 4):
        if n > widest:
            continue
        launch = choose_launch(profile, n, STOP_CONFIDENCE, fewest_tokens=token_budget is not None)
        expected = predict(profile, n, launch, STOP_CONFIDENCE)
        if token_budget is not None and token_budget < expected.tokens * length:
            continue
        if deadline is None or expected.seconds * length <= SAFETY * deadline:
            return "sc", n
    cot_fits_time = deadline is None or length * profile.step_s(1) <= SAFETY * deadline
    cot_fits_tokens = token_budget is None or token_budget >= length
    return ("cot", 1) if cot_fits_time and cot_fits_tokens else ("budget", 1)


def run(task: Task) -> Result:
    name, n = choose(task)
    chosen = {"sc": self_consistency.run, "cot": cot.run, "budget": budget_forcing.run}[name]
    result = chosen(replace(task, n=n))
    result.strategy = f"auto:{name}"
    return result
