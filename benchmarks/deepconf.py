"""DeepConf's confidence weighting and pruning (``sc --weighted``), replayed on recorded paths.

``benchmarks/reasoning.py`` records, for every sc-batched question, the full paths (no early
stopping) with the log-probability of each of their tokens. This script replays sc's online rules
(``edgesrm/strategies/self_consistency.py``) on them one decode step at a time, as if the paths
had been sampled under each setting:

- the vote weighted by each path's confidence (the exponential of its mean token log-probability),
- Adaptive-Consistency's stop (``vote_decided``) on the weighted tally,
- DeepConf's pruning (Fu et al., "Deep Think with Confidence", 2025, its online mode): once
  ``WARMUP`` paths have finished, a running path whose last ``GROUP`` tokens are less confident
  than a percentile of the finished paths' lowest group confidences is stopped and does not vote,
- each launch policy (``Launch``): all paths at once, or a first wave and the rest on dissent.

Every question is replayed in each rotation of its paths (which path is launched first), and
accuracy and tokens are averaged over the rotations. The replay assumes a path writes the same
text under every setting (the recorded one); real runs differ by sampling noise between batch
layouts.

The criterion for ``PRUNE_PERCENTILE`` (fixed before the train run): among the percentiles
tried, the one with the fewest tokens whose accuracy is within 1 point of the unweighted full vote
(``sc --no-early-stop``); if none is, the one that loses least.

    python benchmarks/deepconf.py benchmarks/results/reasoning/qwen2.5-coder-1.5b-instruct-q4_k_m-train.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgesrm.answers import answers_match, vote  # noqa: E402
from edgesrm.strategies.early_stopping import STOP_CONFIDENCE, Launch, first_paths, paths_needed, standing, vote_decided  # noqa: E402
from edgesrm.strategies.self_consistency import GROUP, PRUNE_PERCENTILE, WARMUP, lowest_group_confidence  # noqa: E402

PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0)  # pruning thresholds the replay compares


@dataclass(frozen=True)
class RecordedPath:
    """One recorded path: its answer, whether it voted (its answer line or reply ended), and the
    log-probability of each of its tokens (None where the strategy forced the token)."""

    answer: str | None
    voted: bool
    logprobs: tuple[float | None, ...]

    @property
    def weight(self) -> float:
        """DeepConf's vote weight, as sc computes it: exp(mean log-probability of the sampled tokens)."""
        sampled = [lp for lp in self.logprobs if lp is not None]
        return math.exp(sum(sampled) / len(sampled)) if sampled else 1.0


@dataclass(frozen=True)
class Setting:
    """How sc runs: ``early_stop``, ``weighted`` votes, pruning at ``prune`` (a percentile; None:
    none), and the ``launch`` policy (used with early stopping)."""

    early_stop: bool
    weighted: bool
    prune: float | None
    launch: Launch

    def label(self) -> str:
        if not self.early_stop:
            return "full vote" + (", weighted" if self.weighted else "")
        text = "early stop" + (", weighted" if self.weighted else "")
        return text + (f", pruned below p{self.prune:g}" if self.prune is not None else "")


def replay(paths: list[RecordedPath], setting: Setting, confidence: float = STOP_CONFIDENCE) -> tuple[str | None, int]:
    """sc's rules over ``paths`` (in launch order), one decode step at a time: (the answer,
    tokens decoded)."""
    n = len(paths)
    queue = list(range(n))
    position: dict[int, int] = {}  # running path -> tokens decoded so far
    ended: dict[int, bool] = {}  # ended path -> whether it votes
    group_confidence: dict[int, float | None] = {}
    tokens = 0

    def weight(i: int) -> float:
        return paths[i].weight if setting.weighted else 1.0

    def start(k: int) -> None:
        for _ in range(min(k, len(queue))):
            position[queue.pop(0)] = 0

    start(max(setting.launch.width, first_paths(n, confidence)) if setting.early_stop else n)
    while position:
        for i in position:
            position[i] += 1
        tokens += len(position)
        changed = False
        for i in [i for i, pos in position.items() if pos >= len(paths[i].logprobs)]:
            del position[i]
            ended[i] = paths[i].voted and paths[i].answer is not None
            if setting.weighted and ended[i]:
                group_confidence[i] = lowest_group_confidence(list(paths[i].logprobs))
            changed = True
        if setting.early_stop and setting.weighted and setting.prune is not None:
            finished = [c for c in group_confidence.values() if c is not None]
            if len(finished) >= min(WARMUP, max(2, n // 2)):
                threshold = float(np.percentile(finished, setting.prune))
                for i in list(position):
                    recent = [lp for lp in paths[i].logprobs[: position[i]][-GROUP:] if lp is not None]
                    if len(recent) == GROUP and sum(recent) / GROUP < threshold:
                        del position[i]
                        ended[i] = False
                        changed = True
        if setting.early_stop and changed:
            voters = [i for i, votes in ended.items() if votes]
            _, tally = vote([paths[i].answer for i in voters], [weight(i) for i in voters])
            _, counts = vote([paths[i].answer for i in voters])
            if vote_decided(tally, counts, undecided=len(position) + len(queue), confidence=confidence):
                return next(iter(tally)), tokens
            leader, runner_up = standing(tally, counts)
            needed = paths_needed(leader, runner_up, len(voters), len(position), len(queue), confidence)
            start(setting.launch.extra(needed, len(position), len(queue), dissent=runner_up > 0))
    voters = [i for i, votes in ended.items() if votes]
    winner, _ = vote([paths[i].answer for i in voters], [weight(i) for i in voters])
    return winner, tokens


def load(path: Path) -> list[tuple[str, list[RecordedPath]]]:
    """(gold answer, recorded paths) of each sc-batched row with per-token log-probabilities.
    Raises ``SystemExit`` if there is none."""
    questions = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: cannot be read ({exc.strerror if isinstance(exc, OSError) else exc})") from None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if row["config"] != "sc-batched" or not all(len(p) >= 5 for p in row["paths"]):
                continue
            questions.append((row["gold"], [RecordedPath(p[0], bool(p[3]), tuple(p[4])) for p in row["paths"]]))
        except (ValueError, KeyError, TypeError, IndexError):
            raise SystemExit(f"{path}:{number}: not a row of benchmarks/reasoning.py") from None
    if not questions:
        raise SystemExit(f"{path}: no sc-batched rows with per-token log-probabilities "
                         "(recorded by benchmarks/reasoning.py since 2026-12-02)")
    return questions


def measure(questions: list[tuple[str, list[RecordedPath]]], setting: Setting,
            confidence: float = STOP_CONFIDENCE) -> tuple[float, float]:
    """(accuracy in %, tokens) of ``setting``, each question averaged over its rotations."""
    correct = tokens = 0.0
    for gold, paths in questions:
        k = len(paths)
        runs = [replay(paths[s:] + paths[:s], setting, confidence) for s in range(k)]
        correct += sum(answers_match(answer, gold) for answer, _ in runs) / k
        tokens += sum(t for _, t in runs) / k
    return 100 * correct / len(questions), tokens


def parse_launch(text: str) -> Launch:
    """``8``, ``4,dissent`` or ``4,refill``: a width and the policy's options."""
    width, *options = text.split(",")
    unknown = set(options) - {"refill", "dissent"}
    if unknown or not width.isdigit() or int(width) < 1:
        raise argparse.ArgumentTypeError(f"not a launch policy: {text!r} (e.g. 8, 4,dissent or 4,refill)")
    return Launch(int(width), refill="refill" in options, all_on_dissent="dissent" in options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, help="a benchmarks/reasoning.py rows file with sc-batched rows")
    parser.add_argument("--launch", type=parse_launch, action="append",
                        help="launch policy to replay, repeatable (default: 8, 4 and 4,dissent)")
    args = parser.parse_args()
    questions = load(args.rows)
    n = len(questions[0][1])
    full, full_tokens = measure(questions, Setting(False, False, None, Launch(n)))
    print(f"{len(questions)} questions, {n} paths each; unweighted full vote: {full:.1f}%, {full_tokens:.0f} tokens")
    for launch in args.launch or [Launch(8), Launch(4), Launch(4, all_on_dissent=True)]:
        print(f"\nlaunch {launch}")
        print(f"{'setting':>52} {'accuracy':>9} {'change':>7} {'tokens':>7}")
        settings = [Setting(False, True, None, launch), Setting(True, False, None, launch),
                    Setting(True, True, None, launch)] + [Setting(True, True, p, launch) for p in PERCENTILES]
        measured = []
        for setting in settings:
            accuracy, tokens = measure(questions, setting)
            measured.append((setting, accuracy, tokens))
            mark = " (PRUNE_PERCENTILE)" if setting.prune == PRUNE_PERCENTILE else ""
            print(f"{setting.label() + mark:>52} {accuracy:8.1f}% {accuracy - full:+6.1f} {tokens / full_tokens:7.2f}")
        pruned = [(s, a, t) for s, a, t in measured if s.prune is not None]
        within = [m for m in pruned if m[1] >= full - 1.0]
        best = min(within, key=lambda m: m[2]) if within else max(pruned, key=lambda m: (m[1], -m[2]))
        print(f"criterion's pick: pruning below p{best[0].prune:g} "
              f"({'within 1 point' if within else 'none within 1 point; the least loss'})")


if __name__ == "__main__":
    main()
