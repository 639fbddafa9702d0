"""plan: plan-and-solve for models without a thinking mode. The model first writes a short
numbered plan, then carries it out step by step, then answers.

Both phases run in one sequence: the plan ends at a blank line (a pause string) or at its
token cap, and the solution is cued by forced text, so nothing is prefilled twice.
"""

from __future__ import annotations

from ..errors import EdgesrmError
from .base import FINAL_ANSWER_MARKERS, PathRunner, Result, Task, single_path

PLAN_SYSTEM = (
    "You are a careful assistant. First write a short numbered plan for solving the problem. "
    "Then carry out the plan step by step. "
    "End with one last line that starts with 'Final answer:' followed by the answer alone."
)
PLAN_CUE = "Plan:\n1."
SOLVE_CUE = "\n\nNow I carry out the plan step by step.\n"
PLAN_TOKENS = 96


class PlanThenSolve(PathRunner):
    def __init__(self, task: Task, gen) -> None:
        super().__init__(task, gen)
        self.planning: set[int] = set()
        self.solve_tokens = 0

    def begin(self, seq) -> None:
        self.gen.force(seq, PLAN_CUE)
        self.gen.configure(seq, pause=("\n\n",))
        self.solve_tokens = self.think_budget(seq) - PLAN_TOKENS
        self.set_think_budget(seq, min(PLAN_TOKENS, self.think_budget(seq)))
        self.planning.add(seq.index)

    def start_answer(self, seq, *, forced: bool = False) -> None:
        if seq.index in self.planning and self.solve_tokens > 0:  # the plan is over: solve it
            self.planning.discard(seq.index)
            self.gen.force(seq, SOLVE_CUE)
            self.gen.configure(seq, pause=FINAL_ANSWER_MARKERS, pause_on_eos=True)
            self.set_think_budget(seq, seq.n_sampled + self.solve_tokens)
            return
        super().start_answer(seq, forced=forced)


def run(task: Task) -> Result:
    if task.thinking:
        raise EdgesrmError("the plan strategy is for models without a thinking mode; use cot, budget or sc")
    prompt = task.prompt(system=PLAN_SYSTEM)
    gen = task.engine.start(prompt)
    runner = PlanThenSolve(task, gen)
    return single_path(task, gen, runner, prompt, "plan", before=runner.begin)
