"""cot: one chain of thought, then its answer."""

from __future__ import annotations

from .base import PathRunner, Result, Task, single_path


def run(task: Task) -> Result:
    prompt = task.prompt()
    gen = task.engine.start(prompt)
    runner = PathRunner(task, gen)
    return single_path(task, gen, runner, prompt, "cot")
