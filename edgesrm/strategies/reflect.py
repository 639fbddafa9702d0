"""reflect: draft, critique, revise, for models without a thinking mode.

The model solves the problem and answers (the draft); instead of ending there, a review is
cued by forced text and the model checks its steps (the critique); then a revised final
answer is forced and taken as the result. One sequence, one prefill.

The path's token cap covers all three: the draft gets what the revision (the critique's cue,
the critique and the revised answer) leaves. When the cap or the deadline leaves no room for
a critique, the draft's answer is the result, and the result's notes say why.
"""

from __future__ import annotations

from ..errors import EdgesrmError
from .base import BY_DEADLINE, FINAL_ANSWER_MARKERS, PathRunner, Result, Task, single_path

CRITIQUE_CUE = "\n\nLet me check each step of this solution for mistakes.\n"
CRITIQUE_TOKENS = 160
MIN_CRITIQUE = 16  # fewest critique tokens worth forcing the critique's cue for
MIN_DRAFT = 16  # fewest reasoning tokens worth drafting with


class DraftCritiqueRevise(PathRunner):
    def __init__(self, task: Task, gen) -> None:
        super().__init__(task, gen)
        self.drafted: set[int] = set()  # paths past their draft (critiquing or revising)
        self.draft_final: set[int] = set()  # paths whose draft is their answer (no room to critique)
        self.draft_answers: dict[int, str] = {}

    def begin(self, seq) -> None:
        """Keep the revision's share of the path's cap out of the draft's reach."""
        cap = self.limit(seq)
        reserve = self.answer_reserve(cap)
        revision_min = self.cost(CRITIQUE_CUE) + MIN_CRITIQUE + reserve
        revision = min(self.cost(CRITIQUE_CUE) + CRITIQUE_TOKENS + reserve, max(revision_min, cap // 2))
        if cap - revision - self.answer_reserve(cap - revision) < MIN_DRAFT:
            self.draft_final.add(seq.index)
            self.notes.append(f"reflect: a cap of {cap} tokens leaves no room to critique a draft; "
                              "the draft's answer is the result")
            return
        self.set_cap(seq, cap - revision)

    def final_phase(self, seq) -> bool:
        i = seq.index
        return i in self.drafted or i in self.draft_final or seq.finished

    def start_answer(self, seq, *, forced: bool = False, cue: str | None = None, by: str | None = None) -> None:
        super().start_answer(seq, forced=forced, cue=cue, by=by)
        i = seq.index
        if by == BY_DEADLINE and i not in self.drafted:  # no time to critique
            self._draft_is_final(seq, "the deadline leaves no time to critique the draft")
        if not self.final_phase(seq) and not seq.finished:  # a draft that ends at once still gets its critique
            self.gen.configure(seq, pause_on_eos=True)

    def _draft_is_final(self, seq, why: str) -> None:
        if seq.index not in self.draft_final:
            self.draft_final.add(seq.index)
            self.notes.append(f"reflect: {why}; the draft's answer is the result")

    def on_answered(self, seq) -> None:
        i = seq.index
        if self.final_phase(seq):
            super().on_answered(seq)
            return
        self.draft_answers[i] = self.result(seq).answer_text
        self.set_cap(seq, self.limit(seq))
        room = self.limit(seq) - self.spent(seq)
        deadline = self.task.deadline
        if room < self.cost(CRITIQUE_CUE) + MIN_CRITIQUE + self.answer_reserve(self.limit(seq)):
            self._draft_is_final(seq, "the token cap leaves no room to critique the draft")
        elif deadline.seconds is not None and deadline.must_answer(min(MIN_CRITIQUE + self.answer_steps(seq), room)):
            self._draft_is_final(seq, "the deadline leaves no time to critique the draft")
        if i in self.draft_final:
            super().on_answered(seq)
            return
        # Back to reasoning: the critique, ended by a new (revised) final answer line.
        self.drafted.add(i)
        self.resume_reasoning(seq, FINAL_ANSWER_MARKERS)
        self.force(seq, CRITIQUE_CUE)
        self.set_think_budget(seq, self.spent(seq) + CRITIQUE_TOKENS)


def run(task: Task) -> Result:
    if task.thinking:
        raise EdgesrmError("the reflect strategy is for models without a thinking mode; use cot, budget or sc")
    gen = task.start(task.prompt())
    runner = DraftCritiqueRevise(task, gen)
    return single_path(task, gen, runner, "reflect", before=runner.begin)
