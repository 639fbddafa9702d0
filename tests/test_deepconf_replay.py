"""benchmarks/deepconf.py: the offline replay that DeepConf's pruning percentile is chosen with
must follow sc's rules (edgesrm/strategies/self_consistency.py and early_stopping.py)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from edgesrm.strategies.early_stopping import STOP_CONFIDENCE, Launch, replay as launch_replay

_spec = importlib.util.spec_from_file_location("deepconf", Path(__file__).resolve().parents[1] / "benchmarks" / "deepconf.py")
deepconf = sys.modules["deepconf"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(deepconf)
RecordedPath, Setting, replay = deepconf.RecordedPath, deepconf.Setting, deepconf.replay


def path(answer: str | None, logprobs: list[float | None], voted: bool = True) -> RecordedPath:
    return RecordedPath(answer, voted and answer is not None, tuple(logprobs))


@pytest.mark.parametrize("launch", [Launch(8), Launch(3), Launch(4, all_on_dissent=True), Launch(3, refill=True)])
def test_unweighted_early_stopping_spends_what_the_launch_policys_replay_spends(launch):
    """Without weights the replay is sc's early stopping: the same tokens as the replay that
    chooses the launch policy (early_stopping.replay) on the same paths."""
    rng = random.Random(7)
    for _ in range(200):
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(8)]
        lengths = [rng.randint(5, 60) for _ in range(8)]
        paths = [path(a, [-0.5] * t) for a, t in zip(answers, lengths)]
        classes = {a: i for i, a in enumerate(dict.fromkeys(a for a in answers if a is not None))}
        expected = launch_replay([(classes.get(a), float(t)) for a, t in zip(answers, lengths)], launch,
                                 lambda w: 1.0, STOP_CONFIDENCE)[1]
        assert replay(paths, Setting(True, False, None, launch))[1] == expected


def test_full_vote_runs_every_path_and_weights_change_the_winner():
    paths = [path("A", [-0.05] * 30)] * 2 + [path("B", [-2.0] * 30)] * 3
    assert replay(paths, Setting(False, False, None, Launch(5))) == ("B", 150)
    assert replay(paths, Setting(False, True, None, Launch(5))) == ("A", 150)  # 2 x 0.95 > 3 x 0.14


def test_a_path_whose_last_group_falls_below_the_finished_paths_is_pruned_and_does_not_vote():
    fast = [path(a, [-0.2] * 40) for a in "1234"]  # the warm-up: 4 finished paths, lowest group -0.2
    good = [path("7", [-0.1] * 200)] * 3
    bad = path("9", [-0.1] * 50 + [-3.0] * 32 + [-0.1] * 118)  # its last 32 tokens fall below -0.2 at token 52
    setting = Setting(True, True, 10.0, Launch(8))
    assert replay(fast + good + [bad], setting) == ("7", 4 * 40 + 3 * 200 + 52)
    unpruned = Setting(True, True, None, Launch(8))
    assert replay(fast + good + [bad], unpruned)[1] == 4 * 40 + 4 * 200


def test_no_pruning_before_the_warm_up_and_none_without_early_stopping():
    fast = [path(a, [-0.2] * 40) for a in "123"]  # only 3 finished: below WARMUP (4)
    bad = path("9", [-0.1] * 50 + [-3.0] * 32 + [-0.1] * 118)
    paths = fast + [path("7", [-0.1] * 200)] * 4 + [bad]
    assert replay(paths, Setting(True, True, 10.0, Launch(8)))[1] == 3 * 40 + 5 * 200
    assert replay(paths, Setting(False, True, 10.0, Launch(8)))[1] == 3 * 40 + 5 * 200


def test_forced_tokens_do_not_count_towards_a_group():
    fast = [path(a, [-0.2] * 40) for a in "1234"]
    good = [path("7", [-0.1] * 200)] * 3
    # Tokens 50-79 forced, 80-81 unsure, 100 in all: its last 32 tokens always hold a forced one.
    forced = path("9", [-0.1] * 50 + [None] * 30 + [-3.0] * 2 + [-0.1] * 18)
    assert replay(fast + good + [forced], Setting(True, True, 10.0, Launch(8))) == ("7", 4 * 40 + 3 * 200 + 100)
    sampled = path("9", [-0.1] * 80 + [-3.0] * 2 + [-0.1] * 18)  # the same, all sampled: pruned at token 82
    assert replay(fast + good + [sampled], Setting(True, True, 10.0, Launch(8))) == ("7", 4 * 40 + 3 * 200 + 82)


def test_the_weight_is_the_exponential_of_the_mean_sampled_log_probability():
    assert path("1", [-1.0, None, -3.0]).weight == pytest.approx(2.718281828 ** -2.0)


def test_launch_policies_parse_and_bad_ones_are_refused():
    assert deepconf.parse_launch("4,dissent") == Launch(4, all_on_dissent=True)
    assert deepconf.parse_launch("8") == Launch(8)
    for bad in ("0", "x", "4,wide", ""):
        with pytest.raises(Exception, match="not a launch policy"):
            deepconf.parse_launch(bad)


@pytest.mark.parametrize("content", [b"garbage{\n", b'"arm"\n', b'{"a": 1}\n', b"\xff\xfe\n", b""])
def test_a_file_that_is_not_reasonings_rows_is_one_clear_error(tmp_path, content):
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(content)
    for path in (rows, tmp_path / "missing.jsonl", tmp_path):
        with pytest.raises(SystemExit) as exc:
            deepconf.load(path)
        assert isinstance(exc.value.code, str) and str(path) in exc.value.code and "\n" not in exc.value.code
