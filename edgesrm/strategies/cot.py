"""cot: one chain of thought, then its answer."""

from __future__ import annotations

from .base import PathRunner, Result, Task, single_path


def run(task: Task) -> Result:
    gen = task.start(task.prompt())
    return single_path(task, gen, PathRunner(task, gen), "cot")
