"""sc's launch policy (``edgesrm.strategies.early_stopping``) and the batch-speed profile it reads
(``edgesrm.speed``): the width chosen from a given profile, the replay it is chosen by, the
profile's cache, and sc runs on the embedded model whose batch widths are observed."""

import json
import time

import pytest

from edgesrm import speed
from edgesrm.runtime import load
from edgesrm.speed import SpeedProfile
from edgesrm.strategies.early_stopping import (EVERY_WIDTH_UP_TO, STOP_CONFIDENCE, TIME_TIE, Launch, choose_launch,
                                               first_paths, launches, predict, replay)

WIDTHS = (1, 2, 4, 8, 16)
FREE = SpeedProfile({w: 100.0 * w for w in WIDTHS})  # a step costs the same at any width
NO_GAIN = SpeedProfile({w: 100.0 for w in WIDTHS})  # a step of w paths costs w single steps
# Measured on this project's 2-core machine (2 threads, tokens/s at widths 1, 2, 4, 8; the fastest of
# 2 rounds): Qwen2.5-Coder-1.5B requantized to Q4_0, and SmolLM2-135M.
MEASURED_Q4_0 = SpeedProfile({1: 7.7, 2: 14.3, 4: 15.9, 8: 17.5})
# The same model as shipped (Q4_K_M), measured by benchmarks/sc_vs_llama_server.py on 2026-12-01.
MEASURED_Q4_K_M = SpeedProfile({1: 10.81, 2: 12.89, 4: 15.62, 8: 15.78})


def test_profile_interpolates_step_time_between_measured_widths():
    p = SpeedProfile({1: 10.0, 4: 20.0})
    assert p.step_s(1) == pytest.approx(0.1) and p.step_s(4) == pytest.approx(0.2)
    assert p.step_s(2) == pytest.approx(0.1 + 0.1 / 3)  # linear in step time
    assert p.step_s(8) == pytest.approx(0.4)  # past the widest: its time per sequence
    assert p.speed(4) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        SpeedProfile({})
    with pytest.raises(ValueError):
        SpeedProfile({0: 5.0})


def test_a_hand_edited_cache_keeps_only_what_could_be_a_measurement():
    entry = {"1": 30.0, "²": 100.0, "2": 5e-324, "4": True, "8": float("inf"), "99999999999": 10.0, "16": 40}
    assert speed._valid(entry) == {1: 30.0, 16: 40.0}  # ("²".isdigit(); 5e-324 tok/s made a step last forever)
    for speeds in ({1: 5e-324}, {1: float("inf")}, {1 << 20: 10.0}):
        with pytest.raises(ValueError):
            SpeedProfile(speeds)


def test_many_paths_consider_every_small_width_then_powers_of_two():
    widths = sorted({launch.width for launch in launches(255, STOP_CONFIDENCE)})
    assert widths == list(range(first_paths(255), EVERY_WIDTH_UP_TO + 1)) + [32, 64, 128, 255]
    # Up to EVERY_WIDTH_UP_TO paths, every first width is still considered.
    assert sorted({launch.width for launch in launches(16, STOP_CONFIDENCE)}) == list(range(first_paths(16), 17))
    # (the calibration's 8 paths per question recur past 8: 32 at once end as soon as 64 would)
    assert choose_launch(SpeedProfile({w: 100.0 * w for w in (1, 8, 64)}), 64, STOP_CONFIDENCE).width >= 32
    assert choose_launch(NO_GAIN, 64, STOP_CONFIDENCE).width < 8


def test_wide_when_batching_is_free_waves_when_it_gains_nothing():
    assert choose_launch(FREE, 8, STOP_CONFIDENCE) == Launch(8)  # all at once
    assert choose_launch(NO_GAIN, 8, STOP_CONFIDENCE) == Launch(first_paths(8), refill=False) == Launch(3)  # waves
    assert choose_launch(FREE, 4, STOP_CONFIDENCE) == Launch(4)
    # Batching gains 1.46x at 8 and almost nothing past 4: a first wave of 4, the rest on dissent.
    assert choose_launch(MEASURED_Q4_K_M, 8, STOP_CONFIDENCE) == Launch(4, all_on_dissent=True)
    # Whatever the profile, a token budget asks for the fewest tokens: waves.
    assert choose_launch(FREE, 8, STOP_CONFIDENCE, fewest_tokens=True) == Launch(3)


def test_the_chosen_launch_is_the_fastest_predicted():
    for profile in (FREE, NO_GAIN, MEASURED_Q4_0, MEASURED_Q4_K_M, SpeedProfile({1: 10.0, 2: 19.0, 4: 30.0, 8: 34.0})):
        chosen = predict(profile, 8, choose_launch(profile, 8, STOP_CONFIDENCE), STOP_CONFIDENCE)
        others = [predict(profile, 8, launch, STOP_CONFIDENCE) for launch in launches(8, STOP_CONFIDENCE)]
        assert len(others) == 21 and chosen.seconds <= (1 + TIME_TIE) * min(p.seconds for p in others)


def test_wider_launches_spend_more_tokens():
    tokens = [predict(FREE, 8, Launch(w), STOP_CONFIDENCE).tokens for w in range(3, 9)]
    assert tokens == sorted(tokens) and tokens[0] < 0.8 * 8 and tokens[-1] <= 8
    # Refilling to the width launches paths the vote may not need.
    assert predict(FREE, 8, Launch(4, refill=True), STOP_CONFIDENCE).tokens > predict(FREE, 8, Launch(4), STOP_CONFIDENCE).tokens


def test_replay_stops_once_the_vote_is_decided():
    step = lambda w: 1.0  # noqa: E731  (seconds per step at any width)
    agree = [(0, 1.0)] * 8
    # All at once: 8 paths of 1 token each end together; 8 agreeing answers decide it at once.
    assert replay(agree, Launch(8), step, STOP_CONFIDENCE) == (1.0, 8.0, 8)
    # Waves: 3 agreeing paths end it; 5 are never launched.
    assert replay(agree, Launch(3), step, STOP_CONFIDENCE) == (1.0, 3.0, 3)
    # Every path a different answer: all 8 run; in waves, the later ones start when earlier ones end.
    scattered = [(i, 1.0) for i in range(8)]
    seconds, tokens, launched = replay(scattered, Launch(3), step, STOP_CONFIDENCE)
    assert launched == 8 and tokens == 8.0 and seconds > 1.0
    # Refill keeps 3 running as the first ends, launching a fourth the vote turns out not to need.
    uneven = [(0, 1.0)] + [(0, 3.0)] * 7
    assert replay(uneven, Launch(3), step, STOP_CONFIDENCE) == (3.0, 7.0, 3)
    assert replay(uneven, Launch(3, refill=True), step, STOP_CONFIDENCE) == (3.0, 9.0, 4)
    # On the first dissent the rest start at once: one more round of steps, not five waves.
    burst = Launch(3, all_on_dissent=True)
    assert replay(scattered, burst, step, STOP_CONFIDENCE) == (2.0, 8.0, 8)
    assert replay(agree, burst, step, STOP_CONFIDENCE) == replay(agree, Launch(3), step, STOP_CONFIDENCE)
    # A path that does not vote (cut, no answer) counts for time and tokens, not in the vote.
    assert replay([(None, 2.0)] + [(0, 1.0)] * 7, Launch(8), step, STOP_CONFIDENCE)[2] == 8


def test_profile_is_measured_once_and_kept(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = speed.profile(engine, 4)
    assert sorted(first.tokens_per_s) == [1, 2, 4] and all(s > 0 for s in first.tokens_per_s.values())
    steps = engine._n_decodes
    again = speed.profile(engine, 4)
    assert again == first and engine._n_decodes == steps  # read back, nothing decoded
    table = json.loads((tmp_path / "edgesrm" / "speed.json").read_text())
    assert list(table) == [f"{engine.model_path.name}:{engine.model_path.stat().st_size}:{engine.n_threads}t"]


def test_a_damaged_profile_cache_is_measured_again(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    file = tmp_path / "edgesrm" / "speed.json"
    file.parent.mkdir()
    for damaged in ("{not json", "[]", json.dumps({speed._key(engine): {"1": "fast", "2": -3, "x": 5}})):
        file.write_text(damaged)
        p = speed.profile(engine, 2)
        assert sorted(p.tokens_per_s) == [1, 2] and all(s > 0 for s in p.tokens_per_s.values())


def test_an_unwritable_cache_is_measured_once_per_process(engine, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache's folder cannot be made
    monkeypatch.setattr(speed, "_unsaved", {})
    first = speed.profile(engine, 2)  # measured, and the failed write is no error
    steps = engine._n_decodes
    assert speed.profile(engine, 2) == first and engine._n_decodes == steps  # not measured again
    assert not blocker.read_text()


@pytest.fixture(scope="module")
def rt(model_path):
    """A runtime whose texts depend only on the question and seed (no prefix cache)."""
    with load(model_path, n_ctx=4096, max_sequences=16, cache_prompt=False) as runtime:
        yield runtime


SHEEP = "A farmer has 17 sheep and buys 5 more. How many sheep does he have now?"
PENS = ("A shop sells pens at 3 dollars each and notebooks at 7 dollars each. Tom buys 4 pens and 6 "
        "notebooks. How much does he pay?")


def test_sc_launches_all_paths_at_once_when_batching_is_free(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speed.remember(rt.engine, FREE.tokens_per_s)
    results = [rt.ask(SHEEP, strategy="sc", n=8, seed=seed, temperature=0.7, max_tokens=96) for seed in (2, 4, 5)]
    for result in results:
        assert len(result.paths) == 8 and next(iter(result.batch_widths)) == 8  # all 8 from the first step
    stopped = [r for r in results if r.early_stopped]
    assert stopped  # the vote was decided before every path ended...
    for result in stopped:
        pruned = [p for p in result.paths if p.finish_reason == "pruned"]
        assert pruned and all(p.vote == 0 for p in pruned)  # ...and the paths still running were dropped
        assert sum(result.batch_widths.values()) < max(p.tokens + p.forced_tokens for p in result.paths) + 1


def test_sc_starts_a_wave_and_launches_the_rest_on_dissent(rt, tmp_path, monkeypatch):
    # The evaluation model at Q4_0 on the AMD EPYC (benchmarks/RESULTS.md): a batch of 4 gains 1.47x
    # and 8 little more, so the replay starts 4 and launches the rest once the vote splits
    # (between waves and wide).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = SpeedProfile({1: 27.96, 2: 30.62, 4: 41.18, 8: 43.44})
    assert choose_launch(profile, 8, STOP_CONFIDENCE) == Launch(4, all_on_dissent=True)
    speed.remember(rt.engine, profile.tokens_per_s)
    result = rt.ask(PENS, strategy="sc", n=8, seed=1, temperature=1.3, max_tokens=96)
    widths = list(result.batch_widths)
    assert widths[0] == 4 and len(result.paths) == 8  # the first wave; the model disagrees: all 8 ran
    assert max(widths) > 4  # the rest launched together on the first dissent


def test_sc_refill_keeps_the_width_without_bursting(rt, tmp_path, monkeypatch):
    # The refill rule on its own (no profile chooses it alone on the embedded model's speeds).
    from edgesrm.strategies import self_consistency
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing measured into the user's cache
    monkeypatch.setattr(self_consistency, "launch_policy", lambda task, n: Launch(4, refill=True))
    result = rt.ask(PENS, strategy="sc", n=8, seed=1, temperature=1.3, max_tokens=96)
    assert next(iter(result.batch_widths)) == 4
    assert len(result.paths) == 8 and max(result.batch_widths) == 4  # all 8 ran, 4 at a time


def test_steps_that_decode_nothing_are_no_batch_width(rt, tmp_path, monkeypatch):
    # With one token per path, the token is sampled from the prompt's logits: no decode step runs.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speed.remember(rt.engine, FREE.tokens_per_s)
    for strategy, n in (("sc", 3), ("cot", 1)):
        result = rt.ask(SHEEP, strategy=strategy, n=n, seed=1, max_tokens=1)
        assert 0 not in result.batch_widths and all(p.tokens <= 1 for p in result.paths)


def test_a_deadline_gone_before_any_path_says_so(rt, tmp_path, monkeypatch):
    from edgesrm.budget import Budget
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speed.remember(rt.engine, FREE.tokens_per_s)
    result = rt.ask(SHEEP, strategy="sc", n=8, seed=1, budget=Budget(deadline_s=1e-6))
    assert not result.paths and result.deadline_missed and result.ending() == "no path run"
    assert any("8 of the 8 paths were not run" in note for note in result.notes), result.notes
    assert any("before any path decoded a token" in note for note in result.notes), result.notes


def test_choosing_the_launch_is_not_charged_to_the_deadline(rt, tmp_path, monkeypatch):
    # Choosing among many paths' launches takes seconds the first time (7 s at n = 255 on 2 cores),
    # then its predictions are cached: a planner that is slow once stands in for it.
    from edgesrm.budget import Budget
    from edgesrm.strategies import self_consistency
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speed.remember(rt.engine, FREE.tokens_per_s)
    first = []

    def slow_once(*args, **kwargs):
        if not first:
            first.append(time.sleep(3.0))
        return choose_launch(*args, **kwargs)

    monkeypatch.setattr(self_consistency, "choose_launch", slow_once)
    result = rt.ask(SHEEP, strategy="sc", n=8, seed=1, max_tokens=32, budget=Budget(deadline_s=2.0))
    assert first and result.paths and not result.deadline_missed, result.notes
