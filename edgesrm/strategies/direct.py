"""direct: answer at once, without reasoning (for thinking models, an empty think block).

Templates with a thinking switch (Qwen3, SmolLM3: ``enable_thinking``) are asked to turn
thinking off and write the empty think block themselves; other thinking models get one forced.
A system prompt given with the task comes before direct's own instruction.
"""

from __future__ import annotations

from ..chat import THINK_OPEN
from .base import PathRunner, Result, Task, single_path

DIRECT_SYSTEM = "Answer the question with the final answer only, on one line that starts with 'Final answer:'."


def run(task: Task) -> Result:
    switch = {"enable_thinking": False} if task.thinking and task.chat.accepts("enable_thinking") else {}
    prompt = task.prompt(system=None if task.thinking else task.system_with(DIRECT_SYSTEM), **switch)
    gen = task.start(prompt)
    runner = PathRunner(task, gen)
    ends = prompt.text.rstrip()

    def answer_now(seq) -> None:
        if runner.thinking_off:  # the template closed the think block: the path is answering already
            return
        if task.thinking and not ends.endswith(THINK_OPEN):
            runner.force(seq, THINK_OPEN + "\n")
        runner.start_answer(seq)

    return single_path(task, gen, runner, "direct", before=answer_now)
