"""sc: self-consistency (Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in
Language Models", ICLR 2023). Several paths sampled in one batch over the shared prompt, their
answers extracted and voted on.

Early stopping (``early_stopping``): the run stops as soon as the vote is decided by
Adaptive-Consistency's rule, and the paths still running are dropped in the same step. How many
paths run at once (the *width*) is chosen per model and machine from the measured batch-speed
profile to minimise the expected wall time: all ``n`` at once when a wider batch costs little
more per step, waves (the fewest paths whose agreement would end the vote, more on dissent) when
it does not, or a first wave and all the rest at the first dissent. A path's answer counts as
soon as its answer line is written: the path ends there.

Confidence weighting (DeepConf, Fu et al., "Deep Think with Confidence", 2025): each path's vote
is weighted by its confidence (the exponential of its mean token log-probability), and, with
early stopping, a running path whose recent tokens fall below the least confident finished
paths is terminated early. Without early stopping every path runs to its end.

Only finished answers vote (see ``base``): a path cut off by the deadline or its token cap
does not. The result's text is that of a path that voted for the winner. More paths than
the engine decodes at once (``max_sequences``, e.g. cut by a memory budget) run in turns.
"""

from __future__ import annotations

import math

import numpy as np

from .. import speed
from ..answers import vote
from .base import PRUNED, PathResult, PathRunner, Result, Task, count_votes, finish, stream_result, tokens_per_path
from .early_stopping import (  # noqa: F401 (the rules' names, as sc's)
    MIN_VOTES, STOP_CONFIDENCE, Launch, choose_launch, first_paths, lead_probability, paths_needed, standing, vote_decided)

GROUP = 32  # tokens per group for DeepConf's sliding-window confidence
WARMUP = 4  # DeepConf: finished paths needed before running ones can be judged against them
# DeepConf: a running path is pruned when its last GROUP tokens are less confident than this
# percentile of the finished paths' lowest group confidences (10: DeepConf-high, which keeps
# about 90% of paths; 90: DeepConf-low). Replayed on 40 GSM8K train questions
# (benchmarks/deepconf.py, benchmarks/RESULTS.md): with a first wave of 4, no percentile kept
# accuracy within 1 point of the unweighted vote, and 10 lost the least.
PRUNE_PERCENTILE = 10.0


def lowest_group_confidence(logprobs: list[float | None], group: int = GROUP) -> float | None:
    """The lowest mean log-probability over any ``group`` consecutive sampled tokens."""
    values = np.array([lp for lp in logprobs if lp is not None], dtype=np.float64)
    values = values[~np.isnan(values)]  # sampled without a measured log-probability
    if values.size == 0:
        return None
    if values.size <= group:
        return float(values.mean())
    sums = np.convolve(values, np.ones(group), "valid")
    return float(sums.min() / group)


def paths_wanted(task: Task) -> int:
    """How many paths sc runs: ``task.n``, or fewer if the token budget cannot give each one a token."""
    return task.n if task.budget.max_tokens is None else max(1, min(task.n, task.budget.max_tokens))


def launch_policy(task: Task, n: int) -> Launch:
    """How sc launches ``n`` paths (see ``early_stopping``), from this model's speed profile on
    this machine (measured on first use). Measuring, and the first choice among many paths (its
    predictions are cached), take seconds: ``Runtime.ask`` does both before the deadline starts."""
    return choose_launch(speed.profile(task.engine, n), n, STOP_CONFIDENCE,
                         fewest_tokens=task.budget.max_tokens is not None)


def run(task: Task) -> Result:
    engine, early_stop, weighted = task.engine, task.early_stop, task.weighted
    n, slots = paths_wanted(task), engine.max_parallel
    notes = []
    if n < task.n:
        notes.append(f"sc: {n} paths instead of {task.n}: the token budget of "
                     f"{task.budget.max_tokens} gives each path at least one token")
    policy = launch_policy(task, min(n, slots)) if early_stop else Launch(n)  # may measure: before the prompt
    gen = task.start(task.prompt())
    runner = PathRunner(task, gen)
    per_path = tokens_per_path(task, n)
    launched = []
    done: dict[int, PathResult] = {}
    group_confidence: dict[int, float | None] = {}  # DeepConf: finished voting paths' lowest group confidence
    state = {"early": False, "queued": 0}
    if n > slots:
        notes.append(f"sc: the {n} paths run at most {slots} at a time (the engine decodes {slots} sequences at once)")

    def running() -> list:
        return [s for s in launched if not s.finished]

    def launch(k: int) -> None:
        state["queued"] += k
        fill()

    def fill() -> None:
        """Start queued paths while sequences are free (and there is time for them)."""
        free = slots - len(running())
        while state["queued"] and free > 0:
            if not time_for_another_path():
                notes.append(f"sc: {n - len(launched)} of the {n} paths were not run: too little time was left "
                             "before the deadline")
                state["queued"] = 0
                return
            launched.append(runner.add(task.path_sampling(len(launched)), per_path))
            state["queued"] -= 1
            free -= 1

    def weight(p: PathResult) -> float:
        return math.exp(p.confidence) if weighted and p.confidence is not None else 1.0

    def votes(p: PathResult) -> bool:
        """Whether ``p`` votes: a finished answer, not pruned."""
        return p.answer is not None and p.answer_complete and p.finish_reason != PRUNED

    def collect() -> bool:
        """Record the paths that have ended; whether there were any."""
        new = [seq for seq in launched if seq.finished and seq.index not in done]
        for seq in new:
            done[seq.index] = runner.result(seq)
            if weighted and votes(done[seq.index]):
                group_confidence[seq.index] = lowest_group_confidence(seq.logprobs)
        return bool(new)

    def prune_unconfident() -> bool:
        """DeepConf: drop running paths whose last GROUP tokens are less confident than
        PRUNE_PERCENTILE of the finished paths; whether any was dropped."""
        finished_conf = [c for c in group_confidence.values() if c is not None]
        if len(finished_conf) < min(WARMUP, max(2, n // 2)):  # warm-up: too few finished paths
            return False
        threshold = float(np.percentile(finished_conf, PRUNE_PERCENTILE))
        pruned = False
        for seq in running():
            recent = [lp for lp in seq.logprobs[-GROUP:] if lp is not None and not math.isnan(lp)]
            if len(recent) == GROUP and sum(recent) / GROUP < threshold:
                gen.drop(seq, PRUNED)
                done[seq.index] = runner.result(seq)
                pruned = True
        return pruned

    def time_for_another_path() -> bool:
        """Whether a path launched now still has time to write an answer line before the
        deadline (at the decode speed measured so far). A path the deadline then cuts does not
        vote; launching it rather than guessing its length keeps the rule that a deadline the
        run would meet anyway changes nothing (judged by the median path time, paths quicker
        than the median were held back and the vote changed)."""
        deadline = task.deadline
        if deadline.seconds is None:
            return True
        return deadline.remaining > (runner.answer_tokens + 1) * deadline.step_s

    def update() -> bool:
        ended = collect()
        if weighted and early_stop:  # DeepConf's pruning is early stopping too
            ended = prune_unconfident() or ended
        if early_stop and ended:  # the vote only changes when a path ends
            live = running()
            voting = [p for p in done.values() if votes(p)]
            _, tally = vote([p.answer for p in voting], [weight(p) for p in voting])
            _, counts = vote([p.answer for p in voting])
            if vote_decided(tally, counts, undecided=len(live) + n - len(launched)):
                for seq in live:
                    gen.drop(seq, PRUNED)
                    done[seq.index] = runner.result(seq)
                state["early"], state["queued"] = True, 0
                return True
            leader, runner_up = standing(tally, counts)
            left = n - len(launched) - state["queued"]
            needed = paths_needed(leader, runner_up, len(voting), len(live) + state["queued"], left)
            extra = policy.extra(needed, len(live) + state["queued"], left, dissent=runner_up > 0)
            if extra and time_for_another_path():
                launch(extra)
        fill()
        return False

    launch(max(policy.width, first_paths(n)) if early_stop else n)
    try:
        runner.run(update)
        collect()
    finally:
        gen.close()
    paths = [done.get(s.index) or runner.result(s) for s in launched]
    winner, tally, vote_notes = count_votes(paths, weight)
    result = finish(task, gen, "sc", paths, winner, tally, early_stopped=state["early"],
                    notes=runner.notes + notes + vote_notes)
    stream_result(task, result)  # several paths: the chosen one streams once voted
    return result
