"""sc: self-consistency. Several paths sampled in one batch over the shared prompt, their
answers extracted and voted on.

Early stopping (adaptive consistency, early-stopping SC): paths are launched in windows;
after each finished path the vote is checked, and sampling stops when the leader can no
longer be overtaken by the paths still running or not yet launched, or when a Beta
posterior says the leader holds the majority with probability >= ``confidence``. Paths
that can no longer change the outcome are dropped at once.

Confidence weighting (DeepConf): each path's vote is weighted by its confidence (the
exponential of its mean token log-probability), and a running path whose recent tokens
fall below the least confident finished path is terminated early.
"""

from __future__ import annotations

import math

import numpy as np

from ..answers import vote
from .base import PRUNED, PathResult, PathRunner, Result, Task, finish, tokens_per_path

WINDOW = 4  # paths launched at a time with early stopping
STOP_CONFIDENCE = 0.95  # Beta-posterior probability that the leader is the majority answer
GROUP = 32  # tokens per group for DeepConf's sliding-window confidence


def majority_probability(leader: int, others: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, others + 1): how sure the vote's leader is the
    majority answer of the model's distribution (uniform prior)."""
    n = leader + others + 1
    return sum(math.comb(n, k) for k in range(leader + 1)) / 2**n


def lowest_group_confidence(logprobs: list[float | None], group: int = GROUP) -> float | None:
    """The lowest mean log-probability over any ``group`` consecutive sampled tokens."""
    values = np.array([lp for lp in logprobs if lp is not None], dtype=np.float64)
    if values.size == 0:
        return None
    if values.size <= group:
        return float(values.mean())
    sums = np.convolve(values, np.ones(group), "valid")
    return float(sums.min() / group)


def run(task: Task) -> Result:
    engine, early_stop, weighted = task.engine, task.early_stop, task.weighted
    n = min(task.n, engine.config.max_sequences)
    prompt = task.prompt()
    gen = engine.start(prompt)
    runner = PathRunner(task, gen)
    per_path = tokens_per_path(task, n)
    launched = []
    done: dict[int, PathResult] = {}
    state = {"early": False, "threshold": None}

    def launch(k: int) -> None:
        for _ in range(k):
            launched.append(runner.add(task.path_sampling(len(launched)), per_path))

    def weight(p: PathResult) -> float:
        if p.answer is None or p.finish_reason == PRUNED:
            return 0.0
        return math.exp(p.confidence) if weighted and p.confidence is not None else 1.0

    def collect() -> None:
        for seq in launched:
            if seq.finished and seq.index not in done:
                done[seq.index] = runner.result(seq)

    def update() -> bool:
        collect()
        running = [s for s in launched if not s.finished]
        if weighted:
            finished_conf = [lowest_group_confidence(s.logprobs) for s in launched
                             if s.finished and done[s.index].answer is not None and s.finish_reason != PRUNED]
            finished_conf = [c for c in finished_conf if c is not None]
            if len(finished_conf) >= min(WINDOW, max(2, n // 2)):  # warm-up: enough finished paths
                state["threshold"] = float(np.percentile(finished_conf, 10))
                for seq in running:
                    recent = [lp for lp in seq.logprobs[-GROUP:] if lp is not None]
                    if len(recent) == GROUP and sum(recent) / GROUP < state["threshold"]:
                        gen.drop(seq, PRUNED)
                        done[seq.index] = runner.result(seq)
                running = [s for s in launched if not s.finished]
        if early_stop and done:
            votes = [p.answer for p in done.values() if weight(p) > 0]
            winner, tally = vote(votes)
            counts = sorted(tally.values(), reverse=True) + [0.0, 0.0]
            undecided = len(running) + (n - len(launched))
            settled = counts[0] - counts[1] > undecided
            confident = len(votes) >= 3 and majority_probability(int(counts[0]), len(votes) - int(counts[0])) >= STOP_CONFIDENCE
            if winner is not None and (settled or confident) and (running or len(launched) < n):
                for seq in running:
                    gen.drop(seq, PRUNED)
                    done[seq.index] = runner.result(seq)
                state["early"] = True
                return True
        if not running and len(launched) < n:
            # Another window only if it can finish in time: the last one is the measure.
            window_s = task.deadline.elapsed - state["window_start"]
            if task.deadline.remaining > 1.2 * window_s:
                state["window_start"] = task.deadline.elapsed
                launch(min(WINDOW if early_stop else n, n - len(launched)))
        return False

    state["window_start"] = task.deadline.elapsed
    launch(min(WINDOW, n) if early_stop else n)
    try:
        runner.run(update)
        collect()
    finally:
        gen.close()
    paths = [done.get(s.index) or runner.result(s) for s in launched]
    for p in paths:
        p.vote = weight(p)
    winner, tally = vote([p.answer for p in paths], [p.vote for p in paths])
    return finish(task, gen, "sc", paths, winner, tally, early_stopped=state["early"])
