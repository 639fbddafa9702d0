"""Reasoning strategies, each a small module with ``run(task) -> Result``.

| name    | what it does |
|---------|--------------|
| direct  | answers at once, no reasoning |
| cot     | one chain of thought |
| budget  | thinking capped by tokens / deadline; "Wait" extends it when budget is left (s1) |
| sc      | self-consistency: N paths in one batch, voted, with early stopping (and DeepConf weighting) |
| plan    | plan-and-solve, for models without a thinking mode |
| reflect | draft, critique, revise, for models without a thinking mode |
| auto    | picks one of the above from the budget and the measured speed |
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EdgesrmError
from . import auto, budget_forcing, cot, direct, plan, reflect, self_consistency
from .base import PathResult, Result, Task

STRATEGIES: dict[str, Callable[[Task], Result]] = {
    "direct": direct.run,
    "cot": cot.run,
    "budget": budget_forcing.run,
    "sc": self_consistency.run,
    "plan": plan.run,
    "reflect": reflect.run,
    "auto": auto.run,
}


def run_strategy(name: str, task: Task) -> Result:
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise EdgesrmError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    result = strategy(task)
    result.notes += unused_options(name, result.strategy.split(":")[-1], task)
    return result


def unused_options(asked: str, ran: str, task: Task) -> list[str]:
    """Notes for the task's options that the strategy that ran (``ran``, chosen by ``asked``)
    does not use; options left at their defaults are not mentioned."""
    defaults = Task.__dataclass_fields__
    notes = []
    if task.weighted and ran != "sc":
        notes.append(f"weighted votes are for sc; {ran} ignored them")
    if task.early_stop != defaults["early_stop"].default and ran != "sc":
        notes.append(f"turning early stopping off is for sc; {ran} ignored it")
    if task.waits != defaults["waits"].default and ran != "budget":
        notes.append(f"waits are for the budget strategy; {ran} ignored them")
    if task.n not in (1, defaults["n"].default) and ran != "sc" and asked != "auto":
        notes.append(f"n={task.n} paths are for sc; {ran} ran one path")
    return notes


__all__ = ["STRATEGIES", "run_strategy", "Task", "Result", "PathResult"]
