"""When sc stops and how many paths it keeps running: Adaptive-Consistency's stopping rule and
the launch policy, chosen by predicted wall time.

**Stopping** (Aggarwal et al., "Let's Sample Step by Step: Adaptive-Consistency for Efficient
Reasoning and Coding with LLMs", EMNLP 2023): the vote stops when the leader can no longer be
overtaken by the paths still running or not yet launched, or when the Beta criterion holds: for
p ~ Beta(leader + 1, runner-up + 1), P(p > 1/2) >= ``STOP_CONFIDENCE``, leader and runner-up
being the two largest answer counts (wrong numeric answers scatter, so the runner-up, not all
dissenters together, is what the leader has to beat). Never on fewer than ``MIN_VOTES`` answers.

**Launching.** Self-consistency with early stopping can run its ``n`` paths:

- wide: all at once, dropping the running ones as soon as the vote is decided;
- in waves: first the fewest paths whose agreement would end the vote, more only on dissent;
- in between: a first wave, and on the first dissent all the rest at once (a split vote
  usually needs most of the paths, and they are quickest run together).

Waves spend fewer tokens. Wide is faster whenever a step with more sequences costs little more
than one with fewer, which depends on the model, its quantization types and the CPU's kernels.
Users feel wall time, so the policy (``Launch``) is chosen from this model's measured speed
profile (``edgesrm.speed``): the **width**, how many paths start at once, and whether sc keeps
that many running while the vote is undecided (``refill``) or launches only what the vote needs
(``paths_needed``) or, with ``all_on_dissent``, every path left as soon as two answers differ;
from waves (the fewest a stop needs, no refill) to all at once.
``choose_launch`` replays recorded sc paths (``edgesrm/data/sc_calibration.json``: 8 paths on
each of 40 GSM8K train questions) through these rules with the profile's step times, and takes
the policy with the least expected wall time (the fewest tokens wins only among policies
within ``TIME_TIE``, 0.1%, of it). With a token budget the user limits
tokens, so the policy with the fewest expected tokens is taken instead.

The replay assumes what the calibration questions show (how often paths agree, how much their
lengths differ) and that a launched path costs only its decode steps (the prompt is shared).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from ..speed import SpeedProfile

# Beta-posterior probability that the leader is ahead of the runner-up. 0.7 is the lowest
# threshold that lost no accuracy replayed on 40 GSM8K train questions (benchmarks/RESULTS.md).
STOP_CONFIDENCE = 0.7
MIN_VOTES = 3  # never stop on fewer answers than this
# Policies whose predicted wall time is within 0.1% of the best count as equally fast (the fewest
# tokens wins among them). It was 2%: on the Q4_K_M profile that picked waves of 4 (0.6% slower on
# train, 8% fewer tokens) over launching the rest on the first dissent, and replayed on GSM8K test
# questions, which split their vote more often, the waves were 5% slower (benchmarks/RESULTS.md).
# Tokens matter only where they save time, or under a token budget (``fewest_tokens``).
TIME_TIE = 0.001
# First widths tried one by one up to this; beyond it only the powers of two and n. Each policy
# replays the calibration set: at n = 255 choosing among every width took 23 s, among these 7 s
# (0.3 s at n = 8, unchanged), on the 2-core EPYC. Runtime.ask chooses before the deadline starts.
EVERY_WIDTH_UP_TO = 16


def lead_probability(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1): how sure the vote's leader is more
    likely than the runner-up under the model's answer distribution (uniform prior)."""
    n = leader + runner_up + 1
    return sum(math.comb(n, k) for k in range(leader + 1)) / 2**n


def standing(tally: dict, counts: dict) -> tuple[int, int]:
    """Paths behind the leader of ``tally`` (the vote, maybe confidence-weighted, leader first)
    and behind the runner-up, from ``counts`` (paths per answer)."""
    if not tally:
        return 0, 0
    leader = next(iter(tally))
    return int(counts.get(leader, 0)), int(max((c for a, c in counts.items() if a != leader), default=0))


def vote_decided(tally: dict, counts: dict, undecided: int, confidence: float = STOP_CONFIDENCE) -> bool:
    """Whether sampling can stop: paths are still ``undecided``, and the leader of ``tally``
    can no longer be overtaken by them (each weighs at most 1), or the Beta criterion on
    its count against the runner-up's gives it the lead."""
    if not tally or not undecided:
        return False
    weights = sorted(tally.values(), reverse=True) + [0.0]
    if weights[0] - weights[1] > undecided:
        return True
    leader, runner_up = standing(tally, counts)
    return sum(counts.values()) >= MIN_VOTES and lead_probability(leader, runner_up) >= confidence


def paths_needed(leader: int, runner_up: int, voting: int, running: int, left: int,
                 confidence: float = STOP_CONFIDENCE) -> int:
    """The fewest new paths (at most ``left``) that, with the ``running`` ones, could still
    make the Beta criterion stop the vote if they all agreed with the leader; ``left`` if none can."""
    for extra in range(left + 1):
        agreeing = leader + running + extra
        if voting + running + extra >= MIN_VOTES and lead_probability(agreeing, runner_up) >= confidence:
            return extra
    return left


def first_paths(n: int, confidence: float = STOP_CONFIDENCE) -> int:
    """The fewest paths whose agreement ends a question (waves start with these)."""
    return paths_needed(0, 0, 0, 0, n, confidence)


@dataclass(frozen=True)
class Launch:
    """A launch policy: start ``width`` paths; while the vote is undecided launch what it needs
    (``paths_needed``) and, with ``refill``, also enough to keep ``width`` running; with
    ``all_on_dissent``, launch every path left once the vote has a runner-up."""

    width: int
    refill: bool = False
    all_on_dissent: bool = False

    def extra(self, needed: int, running: int, left: int, dissent: bool = False) -> int:
        """Paths to launch now, ``needed`` by the vote, with ``running`` running and ``left`` not
        launched; ``dissent``: some voting path's answer differs from the leader's."""
        if self.all_on_dissent and dissent:
            return left
        return min(left, max(needed, self.width - running if self.refill else 0))


@dataclass(frozen=True)
class Prediction:
    """What a launch policy is expected to cost per question, averaged over the calibration questions."""

    launch: Launch
    seconds: float  # wall time for paths of 1 token on average; multiply by the mean path length
    tokens: float  # tokens decoded, in units of one mean path (n = no early stopping)
    paths: float  # paths launched


@functools.cache
def calibration() -> tuple[tuple[tuple[int | None, float], ...], ...]:
    """The recorded questions: per question, its paths as (answer class or None, length relative
    to the mean path length of all questions)."""
    doc = json.loads(resources.files("edgesrm").joinpath("data/sc_calibration.json").read_text())
    questions = [[(a, float(t)) for a, t in q] for q in doc["questions"]]
    mean = sum(t for q in questions for _, t in q) / sum(len(q) for q in questions)
    return tuple(tuple((a, t / mean) for a, t in q) for q in questions)


def replay(paths: list[tuple[int | None, float]], launch: Launch, step_s: Callable[[int], float],
           confidence: float) -> tuple[float, float, int]:
    """Run sc's early stopping over ``paths`` (answer class or None, length; in launch order; all
    ``n`` of them) with the ``launch`` policy: (wall time, tokens, paths launched). ``step_s(w)``:
    seconds per step of ``w`` sequences."""
    n = len(paths)
    queue = list(range(n))
    running: dict[int, float] = {}  # path -> tokens left
    counts: dict[int, int] = {}
    voting = 0
    seconds = tokens = 0.0

    def start(k: int) -> None:
        for _ in range(min(k, len(queue))):
            i = queue.pop(0)
            running[i] = paths[i][1]

    start(max(launch.width, first_paths(n, confidence)))
    while running:
        width_now = len(running)
        advance = min(running.values())
        seconds += advance * step_s(width_now)
        tokens += advance * width_now
        for i in [i for i, left in running.items() if left - advance <= 1e-9]:
            del running[i]
            answer = paths[i][0]
            if answer is not None:
                counts[answer] = counts.get(answer, 0) + 1
                voting += 1
        for i in running:
            running[i] -= advance
        tally = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        if vote_decided(tally, tally, undecided=len(running) + len(queue), confidence=confidence):
            break
        leader, runner_up = standing(tally, tally)
        needed = paths_needed(leader, runner_up, voting, len(running), len(queue), confidence)
        start(launch.extra(needed, len(running), len(queue), dissent=runner_up > 0))
    return seconds, tokens, n - len(queue)


def predict(profile: SpeedProfile, n: int, launch: Launch, confidence: float) -> Prediction:
    """Expected cost of sc over ``n`` paths with the ``launch`` policy, by replaying every
    calibration question in each of its launch-order rotations."""
    return _predict(tuple(sorted(profile.tokens_per_s.items())), n, launch, confidence)


@functools.cache
def _predict(speeds: tuple[tuple[int, float], ...], n: int, launch: Launch, confidence: float) -> Prediction:
    step_s = functools.cache(SpeedProfile(dict(speeds)).step_s)
    totals = [0.0, 0.0, 0.0]
    runs = 0
    for question in calibration():
        k = len(question)
        for shift in range(k):
            paths = [question[(shift + i) % k] for i in range(n)]  # n > k: paths recur, as fresh samples would
            for j, value in enumerate(replay(paths, launch, step_s, confidence)):
                totals[j] += value
            runs += 1
    return Prediction(launch, totals[0] / runs, totals[1] / runs, totals[2] / runs)


def launches(n: int, confidence: float) -> list[Launch]:
    """The policies considered for ``n`` paths: first widths from the fewest a stop needs to ``n``
    (every one up to ``EVERY_WIDTH_UP_TO``, then the powers of two and ``n``), with and without
    refill, and with and without launching the rest on the first dissent (from waves to all at once)."""
    first = min(first_paths(n, confidence), n)
    widths = set(range(first, min(n, EVERY_WIDTH_UP_TO) + 1)) | {n}
    widths |= {1 << k for k in range(n.bit_length()) if first <= 1 << k <= n}
    return [Launch(w, refill, on_dissent) for w in sorted(widths) for refill in (False, True)
            for on_dissent in (False, True) if w < n or not (refill or on_dissent)]


def choose_launch(profile: SpeedProfile, n: int, confidence: float, *, fewest_tokens: bool = False) -> Launch:
    """The launch policy with the least expected wall time on ``profile`` (policies within
    ``TIME_TIE`` of it count as equal; the fewest tokens wins among them), or with
    ``fewest_tokens`` the one with the fewest expected tokens."""
    if n <= 1:
        return Launch(max(n, 1))
    candidates = [predict(profile, n, launch, confidence) for launch in launches(n, confidence)]
    if fewest_tokens:
        return min(candidates, key=lambda p: (p.tokens, p.seconds)).launch
    best = min(p.seconds for p in candidates)
    return min((p for p in candidates if p.seconds <= best * (1 + TIME_TIE)),
               key=lambda p: (p.tokens, p.launch.width)).launch
