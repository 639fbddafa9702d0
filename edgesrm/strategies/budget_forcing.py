"""budget: thinking capped by a token budget and/or a deadline (s1-style budget forcing).

At the cap the end of thinking is forced (``</think>``, or ``Final answer:`` for models
without a thinking mode) and the model answers. With budget left when the model stops
thinking on its own, "Wait" is forced in place of its marker, up to ``waits`` times, so
that it re-examines its work. "Wait" counts toward the cap like every forced token, and is
only forced when the time left covers more thinking and the answer.
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
        left = self.think_budget(seq) - self.spent(seq) - self.cost(self.wait_text)
        deadline = self.task.deadline
        steps = min(MIN_EXTENSION + self.answer_tokens, self.room(seq))  # never more than it may still spend
        time_left = deadline.seconds is None or not deadline.must_answer(steps)
        if self.waits_used < self.waits and left >= MIN_EXTENSION and time_left and self.force(seq, self.wait_text):
            self.waits_used += 1
        else:
            self.start_answer(seq)


def run(task: Task) -> Result:
    gen = task.start(task.prompt())
    return single_path(task, gen, BudgetForcing(task, gen, task.waits), "budget")
