"""What every strategy shares: the task it is given, the result it returns, and the loop that
takes paths from reasoning to an answer within the budget.

A path reasons until it writes its answer marker (``</think>`` for thinking models, a
``Final answer:`` line for others). The marker is a *pause* string: the engine cuts it and
waits, and the strategy decides: answer now (force the marker back), or think more
(force "Wait", budget forcing). When the token budget or the deadline runs out, the marker
is forced into paths that are still reasoning, leaving them the steps they need to answer.

The rules, kept here for every strategy (``PathRunner``):

- **Token caps.** What a path spends is its sampled tokens plus the tokens a strategy forced
  into it (markers, cues, "Wait"); it never exceeds the path's cap: ``max_tokens``, or its
  share of the token budget (``budget.max_tokens // n``), whichever is less. So all paths
  together never exceed the token budget. A path's reasoning ends early enough to leave its
  answer (the marker and ``answer_tokens``, at most half the cap) inside the cap; a model
  without thinking may first end the line it is writing, with up to half the answer's tokens
  (``ends_its_line_first``), so that the marker does not cut a number in two; text a
  strategy would force but that does not fit is not forced (the phase is given up, and said
  in ``Result.notes``).
- **Deadline.** A path still reasoning is made to answer once the time left covers only the
  steps its answer may take (``answer_tokens``, but never more than the tokens the path may
  still spend) plus one, at the decode speed measured so far. A deadline that the run would
  meet anyway therefore changes nothing. Paths are stopped (``deadline``) only when one more
  step would end after the deadline.
- **Votes.** Only a finished answer votes: its line ended (non-thinking models) or the model
  ended its reply after ``</think>``. A path cut before (by the deadline, its token cap, the
  context, or pruning) does not vote; if no path finished, the answer is taken from the cut
  ones and ``Result.notes`` says so.
- **Streaming.** ``on_text`` receives exactly the result's ``reasoning`` and ``answer``
  (joined, the pieces of each kind equal them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..answers import extract_answer, normalize, vote
from ..budget import Budget, Deadline
from ..chat import THINK_CLOSE, THINK_OPEN, ChatFormat, ChatPrompt
from ..engine import CONTEXT, DROPPED, EOS, LENGTH, STOP, Cancelled, Engine, Generation, SamplingParams, Sequence

StreamCallback = Callable[[str, str], None]  # (kind: "reasoning" | "answer", text)

ANSWERED = "answered"  # a path ended because its answer line was complete
DEADLINE = "deadline"  # a path was stopped so the answer could be returned in time
PRUNED = "pruned"  # a path was stopped because it could no longer matter (early stopping)

# What ended a path's reasoning (PathResult.reasoning_ended); "" when it never ended.
BY_MODEL = "model"  # the model wrote its answer marker or ended its reply (or the strategy chose to answer)
BY_TOKENS = "tokens"  # the path's token cap (max_tokens, or its share of the token budget)
BY_DEADLINE = "deadline"  # the time left was only enough for the answer

# How models without a thinking mode mark their answer (the pause strings).
FINAL_ANSWER_MARKERS = ("Final answer:", "Final Answer:", "final answer:", "FINAL ANSWER:")
# Characters that dress an answer line up without saying anything: markdown bold, headings.
ANSWER_MARKUP = " \t*#_"


def answer_line(text: str) -> tuple[str, bool]:
    """The answer line in ``text``, what a model without thinking wrote after its answer marker,
    and whether that line has ended (a newline follows it).

    The answer line is the first line that says something: lines with no letter or digit are
    skipped, as is a repeated marker. A model that writes its marker as a heading
    (``4. **Final answer:**``) closes the bold (``**``) and puts its answer on a later line,
    often inside a display formula (``\\[`` ... ``\\boxed{3}`` ... ``\\]``). Returns ``("", False)``
    while no such line has started."""
    lines = text.split("\n")
    for k, line in enumerate(lines):
        content = line.strip(ANSWER_MARKUP)
        for marker in FINAL_ANSWER_MARKERS:  # a model that repeats the marker
            content = content.removeprefix(marker).strip(ANSWER_MARKUP)
        if any(c.isalnum() for c in content):
            return content, k < len(lines) - 1
    return "", False


# Tokens a path may spend on its answer once reasoning is over.
ANSWER_TOKENS = 32
THINKING_ANSWER_TOKENS = 192

_CUT_REASONS = {LENGTH: "the token limit", DEADLINE: "the deadline", CONTEXT: "the full context", PRUNED: "pruning",
                DROPPED: "the strategy"}


@dataclass
class Task:
    """One question and everything a strategy may use to answer it."""

    engine: Engine
    chat: ChatFormat
    question: str
    sampling: SamplingParams
    budget: Budget = field(default_factory=Budget)
    n: int = 8  # paths, for strategies that sample several
    max_tokens: int = 512  # per path (sampled + forced), unless the token budget says less
    system: str | None = None
    on_text: StreamCallback | None = None
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    early_stop: bool = True  # sc: stop sampling once the vote is decided (and, if weighted, prune unsure paths)
    weighted: bool = False  # sc: confidence-weighted votes (and pruning, with early_stop) (DeepConf)
    waits: int = 1  # budget: how many times "Wait" may extend the thinking
    template_kwargs: dict = field(default_factory=dict)  # passed to the chat template (enable_thinking, ...)
    messages: list[dict] | None = None  # a whole conversation instead of `question` (plain only)
    stop: tuple[str, ...] = ()  # strings that end a path (cut from its text), as OpenAI's `stop`
    thinking_budget: int | None = None  # thinking models: tokens a path may think before it must answer
    cancel: threading.Event | None = None  # set (by a server whose client went away): the paths are dropped

    @property
    def thinking(self) -> bool:
        return self.chat.thinking

    def prompt(self, system: str | None = None, **template_kwargs) -> ChatPrompt:
        """The question rendered in the model's chat template (``system`` overrides the task's)."""
        return self.chat.reasoning_prompt(self.question, system if system is not None else self.system,
                                          **{**self.template_kwargs, **template_kwargs})

    def conversation(self) -> list[dict]:
        """The messages as the user gave them: ``messages`` (with ``system`` first when they have
        no system message), or ``system`` and ``question``."""
        messages = list(self.messages) if self.messages is not None else [{"role": "user", "content": self.question}]
        if self.system and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system})
        return messages

    def system_with(self, instruction: str) -> str:
        """A strategy's own system ``instruction``, after the task's system prompt if it has one."""
        return f"{self.system.rstrip()}\n\n{instruction}" if self.system else instruction

    def start(self, prompt: ChatPrompt) -> Generation:
        """Prefill ``prompt`` (one BOS, typed control tokens kept as text)."""
        return self.engine.start(self.engine.tokenize_prompt(prompt.pieces))

    def path_sampling(self, i: int) -> SamplingParams:
        """Sampling for path ``i``: the task's seed plus ``i``, as llama-server seeds the ``n``
        completions of one request, so that one seed gives both the same random draws (their
        texts still part where batch layouts reorder near-tied tokens)."""
        seed = self.sampling.seed
        return self.sampling.with_seed(None if seed is None else (seed + i) % (2**32 - 1))


@dataclass
class PathResult:
    """One reasoning path and what it concluded."""

    index: int
    answer: str | None  # normalised, used for voting
    answer_text: str  # the answer as the model wrote it
    reasoning: str
    text: str
    tokens: int  # sampled tokens
    forced_tokens: int  # tokens the strategy wrote into it; tokens + forced_tokens <= the path's cap
    confidence: float | None  # mean log-probability of its sampled tokens
    seconds: float
    finish_reason: str
    vote: float = 0.0  # the weight it had in the vote (0: did not vote)
    reasoning_ended: str = ""  # what ended its reasoning: model, tokens, deadline ("": it never ended)
    answer_complete: bool = False  # its answer ended (line written, or the reply ended), not cut off
    # Log-probability of each token of the path, in order: None for a token the strategy forced,
    # NaN where none was measured. Not in ``Result.to_dict`` (one number per token; NaN is not JSON).
    logprobs: list[float | None] = field(default_factory=list, repr=False)

    @property
    def cut(self) -> bool:
        """Whether the token cap or the deadline cut its reasoning short, or anything cut its answer."""
        return self.reasoning_ended in (BY_TOKENS, BY_DEADLINE) or not self.answer_complete


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
    forced_tokens: int  # tokens strategies wrote into the paths; with completion_tokens, within the caps
    prefill_s: float
    decode_s: float
    total_s: float
    deadline_s: float | None
    deadline_missed: bool
    early_stopped: bool
    model: str
    seed: int | None
    notes: list[str] = field(default_factory=list)  # what was given up or not honoured, and why
    cached_tokens: int = 0  # prompt tokens whose KV cells were kept from the previous prompt (not prefilled)
    batch_widths: dict[int, int] = field(default_factory=dict)  # decode steps by how many paths each carried, widths in the order first seen

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 2)}
        for path in out["paths"]:
            del path["logprobs"]
        return out

    def ending(self) -> str:
        """What ended the paths, for a stats line: ``ended by eos``, ``reasoning cut by the deadline,
        ended by length``, or for several paths the count per reason and how many were cut."""
        if not self.paths:  # e.g. the deadline passed before a path could start
            return "no path run"
        if len(self.paths) == 1:
            p = self.paths[0]
            cut = {BY_TOKENS: "the token cap", BY_DEADLINE: "the deadline"}.get(p.reasoning_ended)
            if not p.reasoning_ended and p.finish_reason not in (ANSWERED, EOS, STOP):
                return f"reasoning cut by {_CUT_REASONS.get(p.finish_reason, p.finish_reason)}, no answer"
            ended = f"ended by {p.finish_reason}" + ("" if p.answer_complete else " (answer cut off)")
            return f"reasoning cut by {cut}, {ended}" if cut else ended
        counts: dict[str, int] = {}
        for p in self.paths:
            counts[p.finish_reason] = counts.get(p.finish_reason, 0) + 1
        ended = ", ".join(f"{reason} {k}" for reason, k in counts.items())
        cut = [p for p in self.paths if p.cut and p.finish_reason != PRUNED]
        return f"paths ended by {ended}; {len(cut)} of {len(self.paths)} cut short"


class PathRunner:
    """Steps a generation's paths from reasoning to answer, enforcing the budget (see the
    module's docstring for the rules)."""

    def __init__(self, task: Task, gen: Generation, *, whole_reply: bool = False) -> None:
        """``whole_reply``: the answer is the model's whole reply (after ``</think>`` for
        thinking models), not a ``Final answer:`` line (``plain``)."""
        self.task, self.gen = task, gen
        self.thinking = task.thinking
        # The template closed the think block itself (thinking switched off, e.g. Qwen3's
        # enable_thinking=False): every path starts with its answer, which may use its whole cap.
        tail = task.engine.detokenize(gen.prompt_tokens[-8:]).rstrip()
        self.thinking_off = self.thinking and tail.endswith(THINK_CLOSE)
        # Thinking models' answers are whatever follows </think>; others' one line, unless whole_reply.
        self.whole_reply = whole_reply or self.thinking
        # A path that starts with its answer: the template closed the think block, or a plain reply.
        self.answers_at_once = self.thinking_off or (whole_reply and not self.thinking)
        self.pauses = (THINK_CLOSE,) if self.thinking else () if whole_reply else FINAL_ANSWER_MARKERS
        self.answer_tokens = THINKING_ANSWER_TOKENS if self.thinking else ANSWER_TOKENS
        self._costs: dict[str, int] = {}
        self.cue_tokens = max(self.cost(c) for c in self._default_cues())
        self.reasoning: set[int] = set()  # indices of paths still reasoning
        self.notes: list[str] = []  # what a strategy gave up, for Result.notes
        self._answer_start: dict[int, int] = {}  # path index -> text offset of its answer
        self._answer_end: dict[int, int] = {}  # path index -> tokens spent when its answer must end
        self._think_budget: dict[int, int] = {}  # path index -> tokens spent when it must stop reasoning
        self._reasoning_end: dict[int, int] = {}  # path index -> text offset where reasoning ended
        self._ended_by: dict[int, str] = {}  # path index -> what ended its reasoning
        self._limit: dict[int, int] = {}  # path index -> tokens it may spend in all (sampled + forced)
        self._cap: dict[int, int] = {}  # path index -> tokens its current phase may reach (<= limit)
        self._streams: dict[int, _Stream] = {}
        self._muted = False  # while forcing: the stream is brought up to date afterwards
        self.forced_answers = 0

    # -- token accounting -------------------------------------------------------------

    def _default_cues(self) -> tuple[str, ...]:
        return (THINK_CLOSE + "\n\n",) if self.thinking else ("\nFinal answer:", "Final answer:")

    def cost(self, text: str) -> int:
        """Tokens ``text`` costs when forced into a path."""
        if text not in self._costs:
            self._costs[text] = len(self.task.engine.tokenize(text, add_special=False, parse_special=True))
        return self._costs[text]

    @staticmethod
    def spent(seq: Sequence) -> int:
        """Tokens ``seq`` has spent: sampled and forced."""
        return seq.n_sampled + seq.n_forced

    def limit(self, seq: Sequence) -> int:
        return self._limit[seq.index]

    def room(self, seq: Sequence) -> int:
        """Tokens ``seq`` may still spend."""
        return self._limit[seq.index] - self.spent(seq)

    def answer_reserve(self, tokens: int) -> int:
        """Tokens kept for the answer (its marker and its text) out of a phase of ``tokens``:
        ``answer_tokens`` and the marker, but at most half of it."""
        return min(self.cue_tokens + self.answer_tokens, max(self.cue_tokens + 1, tokens // 2))

    def add(self, sampling: SamplingParams, path_tokens: int, *, stream: bool = False) -> Sequence:
        """A new path that may spend ``path_tokens`` tokens (sampled + forced), its answer included.
        With ``stream``, its reasoning and answer go to ``task.on_text`` as they are written."""
        on_text = None
        if stream and self.task.on_text is not None:
            on_text = self._on_text
        seq = self.gen.add(sampling, max_tokens=path_tokens, stop=self.task.stop, pause=self.pauses,
                           pause_on_eos=True, on_text=on_text)
        if on_text is not None:
            self._streams[seq.index] = _Stream(self.task.on_text)
        self._limit[seq.index] = path_tokens
        self.reasoning.add(seq.index)
        self.set_cap(seq, path_tokens)
        if self.task.thinking_budget is not None and self.thinking and not self.answers_at_once:
            self.set_think_budget(seq, self.task.thinking_budget)
        if self.answers_at_once:
            self.start_answer(seq, cue="", answer_tokens=path_tokens)
        return seq

    def set_cap(self, seq: Sequence, tokens: int) -> None:
        """Let the current phase of ``seq`` (reasoning and its answer) run until ``tokens`` are
        spent (at most the path's cap); its reasoning then ends in time for the answer."""
        cap = self._cap[seq.index] = min(tokens, self._limit[seq.index])
        self._think_budget[seq.index] = cap - self.answer_reserve(cap) if cap > self.cue_tokens else cap

    def think_budget(self, seq: Sequence) -> int:
        """Tokens spent (sampled + forced) at which the reasoning of ``seq`` is ended."""
        return self._think_budget[seq.index]

    def set_think_budget(self, seq: Sequence, tokens: int) -> None:
        """End the reasoning of ``seq`` once ``tokens`` are spent, or earlier if its answer would
        not fit in its cap otherwise."""
        cap = self._cap[seq.index]
        most = cap - self.answer_reserve(cap) if cap > self.cue_tokens else cap
        self._think_budget[seq.index] = min(tokens, most)

    def ends_its_line_first(self, seq: Sequence) -> bool:
        """Whether ``seq``, whose reasoning has reached its token budget, may go on to the end of
        the line it is writing before its answer marker is forced.

        A model without thinking writes its answer right after the marker, so a marker forced
        mid-line cuts what the line was saying, often a number half written ("= 575" of 57500),
        and the answer copies it. The line may take up to half the tokens kept for the answer
        (16 of 32 at the default cap); the answer keeps the rest, inside the path's cap.
        Thinking models are cut where they are: their answer is written after ``</think>``
        with tokens of its own, and a thinking budget the user set is kept to the token."""
        if self.thinking or seq.text.endswith("\n"):
            return False
        cap = self._cap[seq.index]
        grace = (self.answer_reserve(cap) - self.cue_tokens) // 2
        return self.spent(seq) < self.think_budget(seq) + grace

    def force(self, seq: Sequence, text: str) -> bool:
        """Force ``text`` into ``seq`` if it fits in the path's cap with one more token after it;
        whether it was forced."""
        if self.spent(seq) + self.cost(text) + 1 > self._limit[seq.index]:
            return False
        self._muted = True
        try:
            self.gen.force(seq, text)
        finally:
            self._muted = False
        return True

    def _sync(self, seq: Sequence) -> None:
        """Tell the engine how many tokens ``seq`` may sample in its current phase (its forced
        tokens count too); end it if it may sample none."""
        i = seq.index
        allowed = self._answer_end.get(i, self._limit[i]) - seq.n_forced
        if allowed <= seq.n_sampled:
            self.gen.drop(seq, LENGTH)
        else:
            self.gen.configure(seq, max_tokens=allowed)

    # -- phases -------------------------------------------------------------------------

    def on_pause(self, seq: Sequence) -> None:
        """The model wrote its answer marker, or ended without one (``seq.paused_on == EOS``).
        Default: let it answer. Budget forcing overrides this."""
        self.start_answer(seq)

    def start_answer(self, seq: Sequence, *, forced: bool = False, cue: str | None = None,
                     by: str | None = None, answer_tokens: int | None = None) -> None:
        """End the reasoning of ``seq``: write the answer marker (or ``cue``; ``""``: none) and
        give it the answer's tokens. ``by``: what ended the reasoning (``BY_TOKENS`` when
        ``forced`` and not said)."""
        i = seq.index
        if cue is None and self.thinking:
            cue = THINK_CLOSE + "\n\n"
        elif cue is None:
            cue = ("" if seq.text.endswith("\n") or not seq.text else "\n") + "Final answer:"
        self._reasoning_end[i] = len(seq.text)
        self._ended_by[i] = by or (BY_TOKENS if forced else BY_MODEL)
        self.reasoning.discard(i)
        if cue and not self.force(seq, cue):  # no room left for the marker and an answer
            self.gen.drop(seq, LENGTH)
            return
        # (A deadline that comes first stops it: ``run`` drops paths before a step would end late.)
        answer_tokens = max(1, min(answer_tokens or self.answer_tokens, self._cap[i] - self.spent(seq)))
        self._answer_end[i] = self.spent(seq) + answer_tokens
        self.gen.configure(seq, pause=(), pause_on_eos=False)
        self._answer_start[i] = len(seq.text)
        self.forced_answers += forced
        self._sync(seq)

    def resume_reasoning(self, seq: Sequence, pauses: tuple[str, ...] | None = None) -> None:
        """Take ``seq`` back from answering to reasoning (reflection's critique)."""
        i = seq.index
        self._answer_start.pop(i, None)
        self._answer_end.pop(i, None)
        self._reasoning_end.pop(i, None)
        self._ended_by.pop(i, None)
        self.reasoning.add(i)
        self.gen.configure(seq, pause=self.pauses if pauses is None else pauses, pause_on_eos=True)

    def final_phase(self, seq: Sequence) -> bool:
        """Whether the answer ``seq`` is writing is its last (reflection's draft is not)."""
        return True

    def answer_steps(self, seq: Sequence) -> int:
        """Decode steps to keep for the answer of ``seq`` before a deadline: its answer's tokens,
        but no more than the tokens it may still spend."""
        return min(self.answer_tokens, max(0, self._cap[seq.index] - self.spent(seq)))

    def run(self, on_update: Callable[[], bool] | None = None) -> None:
        """Step until every path has ended.

        ``on_update`` is called before every step with the paths up to date; it may add
        paths, drop them, or end the run by returning True (early stopping).
        """
        gen, deadline, cancel = self.gen, self.task.deadline, self.task.cancel
        while True:
            if cancel is not None and cancel.is_set():
                for seq in gen.sequences:
                    if not seq.finished:
                        gen.drop(seq)  # its KV cells are free at once
                raise Cancelled("the request was cancelled")
            for seq in gen.sequences:
                if seq.paused and not seq.finished:
                    self.on_pause(seq) if seq.index in self.reasoning else self.on_answered(seq)
            for seq in gen.active:
                if seq.index in self.reasoning and self.spent(seq) >= self.think_budget(seq):
                    if not self.ends_its_line_first(seq):
                        self.start_answer(seq, forced=True, by=BY_TOKENS)
                elif seq.index in self._answer_start and self._answer_line_done(seq):
                    self.on_answered(seq)
            if on_update is not None and on_update():
                return
            if deadline.must_stop():
                for seq in gen.active + [s for s in gen.sequences if s.paused and not s.finished]:
                    gen.drop(seq, DEADLINE)
                return
            if deadline.seconds is not None:
                for seq in gen.active:
                    if seq.index in self.reasoning and deadline.must_answer(self.answer_steps(seq)):
                        self.start_answer(seq, forced=True, by=BY_DEADLINE)
            for seq in gen.active:
                self._sync(seq)
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
        if self.whole_reply:
            return False
        return answer_line(seq.text[self._answer_start[seq.index] :])[1]

    def _answer_complete(self, seq: Sequence) -> bool:
        i = seq.index
        if i not in self._answer_start or not self.final_phase(seq):
            return False
        if seq.finish_reason in (ANSWERED, EOS, STOP):
            return True
        return not self.whole_reply and self._answer_line_done(seq)

    # -- results and streaming -----------------------------------------------------------

    def result(self, seq: Sequence) -> PathResult:
        """What ``seq`` concluded: its answer split from its reasoning, extracted and normalised."""
        start = self._answer_start.get(seq.index)
        if start is not None:
            answer_text = answer_line(seq.text[start:])[0]
            reasoning = seq.text[: self._reasoning_end[seq.index]]
            if self.whole_reply:
                answer_text = seq.text[start:].strip()
        else:  # never reached its answer (ended early, or stopped by the deadline)
            answer_text, reasoning = "", seq.text
        if self.whole_reply:  # a reply (after </think>): read as extract_answer reads any reply
            extracted = extract_answer(answer_text) if answer_text else None
        else:
            # The line is read as the extractor reads a marker's line (a boxed answer or a marker in
            # it wins, else the line itself), not by its last number: "John is 465 miles from home
            # at the end of those 4 hours." answers 465, as extract_answer on the whole text says.
            extracted = (extract_answer(answer_text, last_number=False) or answer_text) if answer_text else None
        if extracted is None:
            extracted = extract_answer(seq.text)
        return PathResult(
            index=seq.index,
            answer=normalize(extracted),
            answer_text=answer_text or (extracted or ""),
            reasoning=_clean_reasoning(reasoning),
            text=seq.text,
            tokens=seq.n_sampled,
            forced_tokens=seq.n_forced,
            confidence=seq.mean_logprob,
            seconds=seq.seconds,
            finish_reason=seq.finish_reason or ("paused" if seq.paused else "running"),
            reasoning_ended=self._ended_by.get(seq.index, ""),
            answer_complete=self._answer_complete(seq),
            logprobs=list(seq.logprobs),
        )

    def _on_text(self, seq: Sequence, _delta: str) -> None:
        if not self._muted:
            self._streams[seq.index].show(*self._shown(seq))

    def _shown(self, seq: Sequence) -> tuple[str, str]:
        """The reasoning and answer of ``seq`` that can be shown now: prefixes of what
        ``result`` will say (the answer of a model without thinking waits for its line)."""
        i = seq.index
        safe = seq.text[: seq._emitted]  # the engine holds back what may be a pause string
        if i not in self._answer_start:
            return _partial_reasoning(safe), ""
        reasoning = seq.text[: self._reasoning_end[i]]
        if not self.final_phase(seq):
            return _partial_reasoning(reasoning), ""
        return _clean_reasoning(reasoning), (safe[self._answer_start[i] :].strip() if self.whole_reply else "")

    def flush(self, seq: Sequence) -> PathResult:
        """The result of ``seq`` once it has ended; the rest of its stream is sent."""
        path = self.result(seq)
        stream = self._streams.get(seq.index)
        if stream is not None:
            stream.show(path.reasoning, path.answer_text)
        return path


class _Stream:
    """Sends growing reasoning and answer texts to ``on_text`` as increments."""

    def __init__(self, on_text: StreamCallback) -> None:
        self.on_text = on_text
        self.sent = {"reasoning": "", "answer": ""}

    def show(self, reasoning: str, answer: str) -> None:
        for kind, text in (("reasoning", reasoning), ("answer", answer)):
            sent = self.sent[kind]
            if len(text) > len(sent) and text.startswith(sent):
                self.sent[kind] = text
                self.on_text(kind, text[len(sent) :])


def _clean_reasoning(text: str) -> str:
    reasoning = text.strip()
    if reasoning.startswith(THINK_OPEN):
        reasoning = reasoning[len(THINK_OPEN) :].strip()
    return reasoning


def _partial_reasoning(text: str) -> str:
    """What of ``text``, still growing, is surely a prefix of ``_clean_reasoning`` of it: up to
    its last whitespace (a pause string cut later takes at most its last word with it)."""
    reasoning = text.lstrip()
    if not reasoning or THINK_OPEN.startswith(reasoning):
        return ""
    if reasoning.startswith(THINK_OPEN):
        reasoning = reasoning[len(THINK_OPEN) :].lstrip()
    cut = max(reasoning.rfind(" "), reasoning.rfind("\n"), reasoning.rfind("\t"))
    return reasoning[:cut].rstrip() if cut > 0 else ""


def count_votes(paths: list[PathResult], weight: Callable[[PathResult], float] = lambda p: 1.0,
                ) -> tuple[str | None, dict[str, float], list[str]]:
    """Vote over finished answers (``weight`` each); cut-off answers do not vote. Sets each
    path's ``vote``; returns the winner, the tally and notes on what the answer rests on."""
    for p in paths:
        p.vote = weight(p) if p.answer is not None and p.answer_complete and p.finish_reason != PRUNED else 0.0
    voters = [p for p in paths if p.vote > 0]
    winner, tally = vote([p.answer for p in voters], [p.vote for p in voters])
    cut = [p for p in paths if p.answer is not None and not p.answer_complete and p.finish_reason != PRUNED]
    notes = []
    if not cut:
        return winner, tally, notes
    if len(paths) == 1:
        winner = winner or cut[0].answer
        notes.append(f"the answer was cut off by {_CUT_REASONS.get(cut[0].finish_reason, cut[0].finish_reason)} "
                     f"before it ended; {winner} is read from what was written")
        return winner, tally, notes
    why = ", ".join(f"path {p.index} by {_CUT_REASONS.get(p.finish_reason, p.finish_reason)}" for p in cut)
    if winner is None:
        winner, _ = vote([p.answer for p in cut])
        notes.append(f"no path finished its answer ({why}); {winner} is read from the cut-off answers, "
                     "which did not vote")
    else:
        notes.append(f"cut off before their answers ended, so not voting: {why}; the answer rests on "
                     f"{len(voters)} finished {'answer' if len(voters) == 1 else 'answers'}")
    return winner, tally, notes


def finish(task: Task, gen: Generation, strategy: str, paths: list[PathResult], winner: str | None,
           votes: dict[str, float], *, early_stopped: bool = False, notes: list[str] | None = None) -> Result:
    """Assemble the Result: the winner's representative path (one that voted for it, the most
    confident if weighted) gives the answer text, and it streams once if nothing has yet."""
    voters = [p for p in paths if winner is not None and p.answer == winner and p.vote > 0]
    chosen = max(voters, key=lambda p: p.vote) if voters else next(
        (p for p in paths if winner is not None and p.answer == winner), paths[0] if paths else None)
    engine = task.engine
    notes = list(notes or [])
    if task.deadline.missed:
        notes.append(f"the deadline of {task.deadline.seconds:g} s was missed ({task.deadline.elapsed:.2f} s) before "
                     f"any path decoded a token (the prompt's prefill took {gen.timings.prefill_s:.2f} s)"
                     if not any(p.tokens for p in paths)
                     else f"the deadline of {task.deadline.seconds:g} s was missed ({task.deadline.elapsed:.2f} s): "
                     "a decode step took longer than the ones before it")
    said = len(paths) == 1 and paths[0].answer is not None  # count_votes said it for a single path
    if paths and not any(p.answer_complete for p in paths) and not said:
        reasons = sorted({_CUT_REASONS.get(p.finish_reason, p.finish_reason) for p in paths})
        notes.append(f"no path finished an answer (ended by {', '.join(reasons)}): the answer, if any, is read "
                     "from cut-off text")
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
        cached_tokens=gen.timings.cached_tokens,
        batch_widths=dict(gen.timings.widths),
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
        notes=notes,
    )


def stream_result(task: Task, result: Result) -> None:
    """Send a result that did not stream as it was written (several paths) to ``task.on_text``."""
    if task.on_text is None:
        return
    for kind, text in (("reasoning", result.reasoning), ("answer", result.answer)):
        if text:
            task.on_text(kind, text)


def tokens_per_path(task: Task, n_paths: int) -> int:
    """What each path may spend (sampled + forced): the token budget shared out, capped by
    max_tokens."""
    per_path = task.max_tokens
    if task.budget.max_tokens is not None:
        per_path = min(per_path, task.budget.max_tokens // max(1, n_paths))
    return max(1, per_path)


__all__ = [
    "Task", "PathResult", "Result", "PathRunner", "finish", "tokens_per_path", "stream_result", "single_path",
    "count_votes", "ANSWERED", "DEADLINE", "PRUNED", "DROPPED", "BY_MODEL", "BY_TOKENS", "BY_DEADLINE",
]


def single_path(task: Task, gen: Generation, runner: PathRunner, strategy: str,
                before: Callable[[Sequence], None] | None = None) -> Result:
    """Run one path to its answer (streaming it) and wrap it as a Result."""
    try:
        seq = runner.add(task.sampling, tokens_per_path(task, 1), stream=True)
        if before is not None:
            before(seq)
        runner.run()
    finally:
        gen.close()
    path = runner.flush(seq)
    winner, votes, notes = count_votes([path])
    return finish(task, gen, strategy, [path], winner, votes, notes=runner.notes + notes)
