"""budget: thinking capped by a token budget and/or a deadline (s1-style budget forcing).

At the cap the end of thinking is forced (``</think>``, or ``Final answer:`` for models
without a thinking mode) and the model answers. With budget left when the model stops
thinking on its own, "Wait" is forced in place of its marker, up to ``waits`` times, so
that it re-examines its work.
"""

from __future__ import annotations

from .base import PathRunner, Result, Task, single_path

MIN_EXTENSION = 32  # tokens of budget left that make a "Wait" worth it


class BudgetForcing(PathRunner):
    def __init__(self, task: Task, gen, waits: int) -> None:
        super().__init__(task, gen)
        self.waits = waits
        self.waits_used = 0
        self.wait_text = "Wait" if self.thinking else "\nWait, let me check this again."

    def on_pause(self, seq) -> None:
        left = self.think_budget(seq) - seq.n_sampled
        deadline = self.task.deadline
        time_left = deadline.seconds is None or not deadline.must_answer(MIN_EXTENSION + self.answer_tokens)
        if self.waits_used < self.waits and left >= MIN_EXTENSION and time_left:
            self.waits_used += 1
            self.gen.force(seq, self.wait_text)
        else:
            self.start_answer(seq)


def run(task: Task) -> Result:
    prompt = task.prompt()
    gen = task.engine.start(prompt)
    return single_path(task, gen, BudgetForcing(task, gen, task.waits), prompt, "budget")
