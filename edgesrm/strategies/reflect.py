"""reflect: draft, critique, revise, for models without a thinking mode.

The model solves the problem and answers (the draft); instead of ending there, a review is
cued by forced text and the model checks its steps (the critique); then a revised final
answer is forced and taken as the result. One sequence, one prefill.
"""

from __future__ import annotations

from ..errors import EdgesrmError
from .base import FINAL_ANSWER_MARKERS, PathRunner, Result, Task, single_path

CRITIQUE_CUE = "\n\nLet me check each step of this solution for mistakes.\n"
CRITIQUE_TOKENS = 160


class DraftCritiqueRevise(PathRunner):
    def __init__(self, task: Task, gen) -> None:
        super().__init__(task, gen)
        self.drafted: set[int] = set()
        self.draft_answers: dict[int, str] = {}

    def start_answer(self, seq, *, forced: bool = False) -> None:
        super().start_answer(seq, forced=forced)
        if seq.index not in self.drafted:  # a draft that ends at once still gets its critique
            self.gen.configure(seq, pause_on_eos=True)

    def on_answered(self, seq) -> None:
        if seq.index in self.drafted:
            super().on_answered(seq)
            return
        self.drafted.add(seq.index)
        self.draft_answers[seq.index] = self.result(seq).answer_text
        # Back to reasoning: the critique, ended by a new (revised) final answer line.
        self.gen.force(seq, CRITIQUE_CUE)
        self.gen.configure(seq, pause=FINAL_ANSWER_MARKERS, pause_on_eos=True)
        self.reasoning.add(seq.index)
        del self._answer_start[seq.index]
        self.set_think_budget(seq, seq.n_sampled + CRITIQUE_TOKENS)


def run(task: Task) -> Result:
    if task.thinking:
        raise EdgesrmError("the reflect strategy is for models without a thinking mode; use cot, budget or sc")
    prompt = task.prompt()
    gen = task.engine.start(prompt)
    return single_path(task, gen, DraftCritiqueRevise(task, gen), prompt, "reflect")
