"""What every strategy shares: the task it is given, the result it returns, and the loop that
takes paths from reasoning to an answer within the budget.

A path reasons until it writes its answer marker (``</think>`` for thinking models, a
``Final answer:`` line for others). The marker is a *pause* string: the engine cuts it and
waits, and the strategy decides: answer now (force the marker back), or think more
(force "Wait", budget forcing). When the token budget or the deadline runs out, the marker
is forced into paths that are still reasoning, leaving them the steps they need to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..answers import extract_answer, normalize
from ..budget import Budget, Deadline
from ..chat import THINK_CLOSE, ChatFormat
from ..engine import DROPPED, Engine, Generation, SamplingParams, Sequence

StreamCallback = Callable[[str, str], None]  # (kind: "reasoning" | "answer", text)

ANSWERED = "answered"  # a path ended because its answer line was complete
DEADLINE = "deadline"  # a path was stopped so the answer could be returned in time
PRUNED = "pruned"  # a path was stopped because it could no longer matter (early stopping)

# How models without a thinking mode mark their answer (the pause strings).
FINAL_ANSWER_MARKERS = ("Final answer:", "Final Answer:", "final answer:", "FINAL ANSWER:")


@dataclass
class Task:
    """One question and everything a strategy may use to answer it."""

    engine: Engine
    chat: ChatFormat
    question: str
    sampling: SamplingParams
    budget: Budget = field(default_factory=Budget)
    n: int = 8  # paths, for strategies that sample several
    max_tokens: int = 512  # per path, unless the token budget says less
    system: str | None = None
    on_text: StreamCallback | None = None
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    early_stop: bool = True  # sc: stop sampling once the vote is decided
    weighted: bool = False  # sc: confidence-weighted votes and pruning (DeepConf)
    waits: int = 1  # budget: how many times "Wait" may extend the thinking

    @property
    def thinking(self) -> bool:
        return self.chat.thinking

    def prompt(self, system: str | None = None) -> str:
        return self.chat.reasoning_prompt(self.question, system if system is not None else self.system)

    def path_sampling(self, i: int) -> SamplingParams:
        """Sampling for path ``i``: distinct, reproducible seeds from the task's seed."""
        seed = self.sampling.seed
        return self.sampling.with_seed(None if seed is None else (seed + 7919 * i) % (2**32 - 1))


@dataclass
class PathResult:
    """One reasoning path and what it concluded."""

    index: int
    answer: str | None  # normalised, used for voting
    answer_text: str  # the answer as the model wrote it
    reasoning: str
    text: str
    tokens: int  # sampled tokens
    forced_tokens: int
    confidence: float | None  # mean log-probability of its sampled tokens
    seconds: float
    finish_reason: str
    vote: float = 0.0  # the weight it had in the vote (0: did not vote)


@dataclass
class Result:
    """An answered question: the answer, how it was reached, and what it cost."""

    question: str
    answer: str  # the answer as the model wrote it (of a path that voted for the winner)
    extracted: str | None  # the normalised final answer (the vote's winner)
    reasoning: str
    text: str
    strategy: str
    paths: list[PathResult]
    votes: dict[str, float]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int  # sampled tokens, all paths
    forced_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float
    deadline_s: float | None
    deadline_missed: bool
    early_stopped: bool
    model: str
    seed: int | None

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 2)}


class PathRunner:
    """Steps a generation's paths from reasoning to answer, enforcing the budget."""

    def __init__(self, task: Task, gen: Generation) -> None:
        self.task, self.gen = task, gen
        self.thinking = task.thinking
        self.pauses = (THINK_CLOSE,) if self.thinking else FINAL_ANSWER_MARKERS
        # Tokens a path may spend on its answer once reasoning is over.
        self.answer_tokens = 192 if self.thinking else 32
        self.reasoning: set[int] = set()  # indices of paths still reasoning
        self._answer_start: dict[int, int] = {}  # path index -> text offset of its answer
        self._think_budget: dict[int, int] = {}  # path index -> tokens it may reason for
        self._reasoning_end: dict[int, int] = {}  # path index -> text offset where reasoning ended
        self._limit: dict[int, int] = {}  # path index -> tokens it may sample in all
        self.forced_answers = 0

    def add(self, sampling: SamplingParams, path_tokens: int, on_text=None) -> Sequence:
        """A new path that may sample ``path_tokens`` tokens, its answer included."""
        think_tokens = max(1, path_tokens - min(self.answer_tokens, path_tokens // 2))
        seq = self.gen.add(sampling, max_tokens=path_tokens, pause=self.pauses, pause_on_eos=True, on_text=on_text)
        self._limit[seq.index] = path_tokens
        self.reasoning.add(seq.index)
        self._think_budget[seq.index] = think_tokens
        return seq

    def think_budget(self, seq: Sequence) -> int:
        return self._think_budget[seq.index]

    def set_think_budget(self, seq: Sequence, tokens: int) -> None:
        self._think_budget[seq.index] = tokens
        self._limit[seq.index] = max(self._limit[seq.index], tokens + self.answer_tokens)
        self.gen.configure(seq, max_tokens=self._limit[seq.index])

    def on_pause(self, seq: Sequence) -> None:
        """The model wrote its answer marker, or ended without one (``seq.paused_on == EOS``).
        Default: let it answer. Budget forcing overrides this."""
        self.start_answer(seq)

    def start_answer(self, seq: Sequence, *, forced: bool = False) -> None:
        """End the reasoning of ``seq``: write the answer marker and give it the answer's tokens."""
        self._reasoning_end[seq.index] = len(seq.text)
        if self.thinking:
            cue = THINK_CLOSE + "\n\n"
        else:
            cue = ("" if seq.text.endswith("\n") or not seq.text else "\n") + "Final answer:"
        self.gen.force(seq, cue)
        answer_tokens = max(1, min(self.answer_tokens, self._limit[seq.index] - seq.n_sampled))
        if self.task.deadline.seconds is not None and self.task.deadline.step_s > 0:
            steps_left = int(self.task.deadline.remaining / self.task.deadline.step_s) - 1
            answer_tokens = max(1, min(answer_tokens, steps_left))
        self.gen.configure(seq, pause=(), pause_on_eos=False, max_tokens=seq.n_sampled + answer_tokens)
        self.reasoning.discard(seq.index)
        self._answer_start[seq.index] = len(seq.text)
        self.forced_answers += forced

    def run(self, on_update: Callable[[], bool] | None = None) -> None:
        """Step until every path has ended.

        ``on_update`` is called before every step with the paths up to date; it may add
        paths, drop them, or end the run by returning True (early stopping).
        """
        gen, deadline = self.gen, self.task.deadline
        # A step with forced text costs more than a plain one: reserve a few extra steps.
        reserve_steps = self.answer_tokens if self.thinking else 8
        while True:
            for seq in gen.sequences:
                if seq.paused:
                    self.on_pause(seq) if seq.index in self.reasoning else self.on_answered(seq)
            for seq in gen.active:
                if seq.index in self.reasoning and seq.n_sampled >= self.think_budget(seq):
                    self.start_answer(seq, forced=True)
                elif seq.index in self._answer_start and self._answer_line_done(seq):
                    self.on_answered(seq)
            if on_update is not None and on_update():
                return
            if deadline.must_stop():
                for seq in gen.active + [s for s in gen.sequences if s.paused]:
                    gen.drop(seq, DEADLINE)
                return
            if deadline.seconds is not None and deadline.must_answer(reserve_steps):
                for seq in gen.active:
                    if seq.index in self.reasoning:
                        self.start_answer(seq, forced=True)
            if not gen.active:
                return
            started = time.perf_counter()
            gen.step()
            deadline.observe_step(time.perf_counter() - started)

    def on_answered(self, seq: Sequence) -> None:
        """A path finished its answer line. Default: it is done. Reflection goes on instead."""
        self.gen.drop(seq, ANSWERED)

    def _answer_line_done(self, seq: Sequence) -> bool:
        """Models without thinking answer on one line: end the path once that line is written."""
        if self.thinking:
            return False
        answer = seq.text[self._answer_start[seq.index] :].lstrip()
        return "\n" in answer

    def result(self, seq: Sequence) -> PathResult:
        """What ``seq`` concluded: its answer split from its reasoning, extracted and normalised."""
        start = self._answer_start.get(seq.index)
        if start is not None:
            answer_text = seq.text[start:].strip().splitlines()[0].strip(" *") if seq.text[start:].strip() else ""
            for marker in FINAL_ANSWER_MARKERS:  # a model that repeats the forced marker
                answer_text = answer_text.removeprefix(marker).strip(" *")
            reasoning = seq.text[: self._reasoning_end[seq.index]]
            if self.thinking:
                answer_text = seq.text[start:].strip()
        else:  # never reached its answer (ended early, or stopped by the deadline)
            answer_text, reasoning = "", seq.text
        extracted = extract_answer(answer_text) if answer_text else None
        if extracted is None:
            extracted = extract_answer(seq.text)
        reasoning = reasoning.strip()
        if reasoning.startswith("<think>"):
            reasoning = reasoning[len("<think>") :].strip()
        return PathResult(
            index=seq.index,
            answer=normalize(extracted),
            answer_text=answer_text or (extracted or ""),
            reasoning=reasoning,
            text=seq.text,
            tokens=seq.n_sampled,
            forced_tokens=seq.n_forced,
            confidence=seq.mean_logprob,
            seconds=seq.seconds,
            finish_reason=seq.finish_reason or ("paused" if seq.paused else "running"),
        )


def finish(task: Task, gen: Generation, strategy: str, paths: list[PathResult], winner: str | None,
           votes: dict[str, float], *, early_stopped: bool = False) -> Result:
    """Assemble the Result: the winner's representative path gives the answer text."""
    chosen = next((p for p in paths if winner is not None and p.answer == winner), paths[0] if paths else None)
    engine = task.engine
    return Result(
        question=task.question,
        answer=chosen.answer_text if chosen else "",
        extracted=winner if winner is not None else (chosen.answer if chosen else None),
        reasoning=chosen.reasoning if chosen else "",
        text=chosen.text if chosen else "",
        strategy=strategy,
        paths=paths,
        votes=votes,
        finish_reason=chosen.finish_reason if chosen else "",
        prompt_tokens=gen.timings.prompt_tokens,
        completion_tokens=sum(p.tokens for p in paths),
        forced_tokens=sum(p.forced_tokens for p in paths),
        prefill_s=gen.timings.prefill_s,
        decode_s=gen.timings.decode_s,
        total_s=task.deadline.elapsed,
        deadline_s=task.deadline.seconds,
        deadline_missed=task.deadline.missed,
        early_stopped=early_stopped,
        model=engine.model_path.name,
        seed=task.sampling.seed,
    )


def stream_callback(task: Task, prompt: str):
    """An ``on_text`` for a path whose text should stream to ``task.on_text`` as
    reasoning and answer, and the function to call once it has ended."""
    if task.on_text is None:
        return None, lambda: None
    splitter = task.chat.splitter(prompt)

    def on_text(_seq, delta: str) -> None:
        for kind, piece in splitter.feed(delta):
            task.on_text(kind, piece)

    def flush() -> None:
        for kind, piece in splitter.finish():
            task.on_text(kind, piece)

    return on_text, flush


def tokens_per_path(task: Task, n_paths: int) -> int:
    """What each path may sample: the token budget shared out, capped by max_tokens."""
    per_path = task.max_tokens
    if task.budget.max_tokens is not None:
        per_path = min(per_path, task.budget.max_tokens // max(1, n_paths))
    return max(1, per_path)


__all__ = [
    "Task", "PathResult", "Result", "PathRunner", "finish", "tokens_per_path", "stream_callback", "single_path",
    "ANSWERED", "DEADLINE", "PRUNED", "DROPPED",
]


def single_path(task: Task, gen: Generation, runner: PathRunner, prompt: str, strategy: str,
                before: Callable[[Sequence], None] | None = None) -> Result:
    """Run one path to its answer (streaming it) and wrap it as a Result."""
    on_text, flush = stream_callback(task, prompt)
    try:
        seq = runner.add(task.sampling, tokens_per_path(task, 1), on_text=on_text)
        if before is not None:
            before(seq)
        runner.run()
    finally:
        gen.close()
    flush()
    path = runner.result(seq)
    votes = {path.answer: 1.0} if path.answer is not None else {}
    path.vote = 1.0 if votes else 0.0
    return finish(task, gen, strategy, [path], path.answer, votes)
