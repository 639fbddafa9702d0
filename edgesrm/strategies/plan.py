"""plan: plan-and-solve for models without a thinking mode. The model first writes a short
numbered plan, then carries it out step by step, then answers.

Both phases run in one sequence: the plan ends at a blank line (a pause string) or at its
token cap, and the solution is cued by forced text, so nothing is prefilled twice. The cues
count toward the path's token cap; when the cap leaves no room for both phases, the plan is
followed by the answer directly (said in the result's notes). A system prompt given with the
task comes before plan's own instruction.
"""

from __future__ import annotations

from ..errors import EdgesrmError
from .base import BY_DEADLINE, FINAL_ANSWER_MARKERS, PathRunner, Result, Task, single_path

PLAN_SYSTEM = (
    "You are a careful assistant. First write a short numbered plan for solving the problem. "
    "Then carry out the plan step by step. "
    "End with one last line that starts with 'Final answer:' followed by the answer alone."
)
PLAN_CUE = "Plan:\n1."
SOLVE_CUE = "\n\nNow I carry out the plan step by step.\n"
PLAN_TOKENS = 96
MIN_PHASE = 8  # fewest tokens worth giving the plan and its execution each


class PlanThenSolve(PathRunner):
    def __init__(self, task: Task, gen) -> None:
        super().__init__(task, gen)
        self.planning: set[int] = set()

    def begin(self, seq) -> None:
        cap = self.limit(seq)
        if not self.force(seq, PLAN_CUE):
            self.notes.append(f"plan: a cap of {cap} tokens leaves no room for a plan; the model answered directly")
            return
        # Tokens for the plan and its execution, once the cues and the answer are paid for.
        phases = self.think_budget(seq) - self.spent(seq) - self.cost(SOLVE_CUE)
        if phases < 2 * MIN_PHASE:
            self.notes.append(f"plan: a cap of {cap} tokens leaves no room to carry out the plan; "
                              "the answer follows the plan directly")
            return
        self.gen.configure(seq, pause=("\n\n",))
        self.set_think_budget(seq, self.spent(seq) + min(PLAN_TOKENS, phases // 2))
        self.planning.add(seq.index)

    def start_answer(self, seq, *, forced: bool = False, cue: str | None = None, by: str | None = None) -> None:
        if seq.index in self.planning:  # the plan is over: carry it out (unless time is up)
            self.planning.discard(seq.index)
            if by != BY_DEADLINE and self.force(seq, SOLVE_CUE):
                self.gen.configure(seq, pause=FINAL_ANSWER_MARKERS, pause_on_eos=True)
                self.set_think_budget(seq, self.limit(seq))  # the rest, up to the answer's reserve
                return
        super().start_answer(seq, forced=forced, cue=cue, by=by)


def run(task: Task) -> Result:
    if task.thinking:
        raise EdgesrmError("the plan strategy is for models without a thinking mode; use cot, budget or sc")
    gen = task.start(task.prompt(system=task.system_with(PLAN_SYSTEM)))
    runner = PlanThenSolve(task, gen)
    return single_path(task, gen, runner, "plan", before=runner.begin)
