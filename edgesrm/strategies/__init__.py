"""Reasoning strategies, each a small module with ``run(task) -> Result``.

| name    | what it does |
|---------|--------------|
| plain   | the user's messages untouched, the model's whole reply (no answer format) |
| direct  | answers at once, no reasoning, on one `Final answer:` line |
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
from . import auto, budget_forcing, cot, direct, plain, plan, reflect, self_consistency
from .base import PathResult, Result, Task

STRATEGIES: dict[str, Callable[[Task], Result]] = {
    "plain": plain.run,
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
    if task.messages is not None and name != "plain":
        raise EdgesrmError(f"a conversation (messages) is answered by the plain strategy; {name} takes one question")
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
