"""direct: answer at once, without reasoning (for thinking models, an empty think block)."""

from __future__ import annotations

from ..chat import THINK_OPEN
from .base import PathRunner, Result, Task, single_path

DIRECT_SYSTEM = "Answer the question with the final answer only, on one line that starts with 'Final answer:'."


def run(task: Task) -> Result:
    prompt = task.prompt(system=None if task.thinking else DIRECT_SYSTEM)
    gen = task.engine.start(prompt)
    runner = PathRunner(task, gen)

    def answer_now(seq) -> None:
        if task.thinking and not prompt.rstrip().endswith(THINK_OPEN):
            gen.force(seq, THINK_OPEN + "\n")
        runner.start_answer(seq)

    return single_path(task, gen, runner, prompt, "direct", before=answer_now)
