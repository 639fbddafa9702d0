"""Reasoning strategies end to end through llama.cpp with the embedded SmolLM2-135M model.

The 135M model is weak at arithmetic, so these tests check the mechanics (phases, forced
text, budgets, votes, early stopping), not accuracy; accuracy is measured by
`edgesrm eval` and benchmarks/reasoning.py on the evaluation model.
"""

import pytest

from edgesrm.answers import extract_answer, normalize, vote
from edgesrm.budget import Budget, Deadline
from edgesrm.chat import ChatFormat
from edgesrm.engine import SamplingParams
from edgesrm.errors import EdgesrmError
from edgesrm.runtime import Runtime, load
from edgesrm import speed
from edgesrm.strategies import STRATEGIES, Task, auto, run_strategy
from edgesrm.strategies.base import PathRunner, answer_line
from edgesrm.strategies.self_consistency import (
    first_paths, lead_probability, lowest_group_confidence, paths_needed, vote_decided,
)

SHEEP = "A farmer has 17 sheep and buys 5 more. How many sheep does he have now?"
ESSAY = "Write a long essay about the history of the Roman empire."
# (question, seed) where the embedded model writes its own "Final answer:" line, on an engine without
# the prefix cache (`replay`), whose texts do not depend on what earlier tests left cached; with seed 4
# the sheep path also ends its thinking with budget left, so budget forcing says "Wait".
ANSWERS_ITSELF = [(SHEEP, 4), ("What is 15 + 27?", 5)]


@pytest.fixture(scope="module")
def rt(engine) -> Runtime:
    return Runtime(engine)


def task(rt, question, *, seed=1, budget=None, chat=None, **kw) -> Task:
    return Task(engine=rt.engine, chat=chat or rt.chat, question=question,
                sampling=SamplingParams(seed=seed), budget=budget or Budget(),
                deadline=Deadline(budget.deadline_s if budget else None), **kw)


# Batch-speed profiles (aggregate tokens/s by width) that make sc launch wide or in waves.
NO_BATCH_GAIN = {1: 100.0, 2: 100.0, 4: 100.0, 8: 100.0, 16: 100.0}  # a step of w paths takes w times as long
FREE_BATCHING = {w: 100.0 * w for w in (1, 2, 4, 8, 16)}  # a step takes as long at any width


@pytest.fixture
def profile_as(tmp_path, monkeypatch):
    """Make ``rt``'s engine see ``speeds`` as its measured profile (a scratch speed cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def set_profile(rt, speeds):
        speed.remember(rt.engine, speeds)
    return set_profile


@pytest.fixture(scope="module")
def replay(model_path):
    """A runtime whose texts depend only on the question and seed: no prefix cache."""
    with load(model_path, n_ctx=2048, max_sequences=1, cache_prompt=False) as runtime:
        yield runtime


@pytest.mark.parametrize("question, seed", ANSWERS_ITSELF)
def test_cot_answers_on_its_final_answer_line(replay, question, seed):
    streamed = []
    result = replay.ask(question, strategy="cot", seed=seed, max_tokens=200, on_text=lambda k, t: streamed.append((k, t)))
    path = result.paths[0]
    assert path.finish_reason == "answered"
    assert result.extracted is not None and result.extracted == path.answer
    assert result.answer.split()[0].strip(".") == result.extracted
    assert "Final answer:" not in result.reasoning
    assert [k for k, _ in streamed][-1] == "answer"
    assert "".join(t for k, t in streamed if k == "answer").strip() == result.answer
    assert result.forced_tokens > 0  # the marker the model wrote was cut, then forced back


# What the 1.5B evaluation model wrote after its answer marker on GSM8K (benchmarks/sc_vs_llama_server.py):
# it often writes the marker as a heading, "4. **Final answer:**", closes the bold on that line and
# answers below it. Its paths had ended at the "**" line, read their answer from the reasoning's last
# number ("4" from "4.") or from "our answer is accurate", and lost votes llama-server's paths won.
@pytest.mark.parametrize("written, line, ended", [
    ("**\n\\[\n\\boxed{3}\n\\]\n", "\\boxed{3}", True),
    ("**\n\n", "", False),
    ("**\n\\[ \\boxed{57500} \\]", "\\[ \\boxed{57500} \\]", False),
    (" 57500\n", "57500", True),
    (" Jill's annual salary is \\(\\boxed{1150}\\).\n", "Jill's annual salary is \\(\\boxed{1150}\\).", True),
    (" **Final Answer:** 3\n", "3", True),  # the marker repeated
    ("\n**Final Answer:**\n22\n", "22", True),
])
def test_the_answer_line_is_the_first_line_that_says_something(written, line, ended):
    assert answer_line(written) == (line, ended)


def test_a_marker_written_as_a_heading_waits_for_the_answer_below_it(rt):
    t = task(rt, SHEEP)
    gen = t.start(t.prompt())
    runner = PathRunner(t, gen)
    seq = runner.add(t.sampling, 200)
    runner.force(seq, "17 + 5 = 22 sheep.\n\n4. **State the")
    runner.start_answer(seq)  # the marker, as when the model writes "final answer:"
    for written, ended in (("**\n", False), ("\\[\n", False), ("\\boxed{22}", False), ("\n", True)):
        runner.force(seq, written)
        assert runner._answer_line_done(seq) is ended, written
    runner.run()
    path = runner.result(seq)
    assert path.finish_reason == "answered" and path.answer_complete
    assert (path.answer_text, path.answer) == ("\\boxed{22}", "22")


@pytest.mark.parametrize("line, answer", [
    ("John is 465 miles from home at the end of those 4 hours.", "465"),  # the evaluation model's words
    ("The profit from the jewelry would be $125, and from the gadgets $96.", "125"),
    ("It will take Carlos \\boxed{13} years.", "13"),
    ("The total is 5 * 3 = 15 dollars.", "15"),
])
def test_the_answer_line_is_read_as_the_extractor_reads_it_in_the_whole_text(rt, line, answer):
    # The path's answer is the one extract_answer finds in the path's text, what a client voting on
    # llama-server's texts would count; not the line's last number ("4" hours above).
    t = task(rt, SHEEP)
    runner = PathRunner(t, t.start(t.prompt()))
    seq = runner.add(t.sampling, 200)
    runner.force(seq, "Some reasoning.\n")
    runner.start_answer(seq)
    runner.force(seq, f" {line}\n")
    runner.run()
    path = runner.result(seq)
    assert path.answer == answer == normalize(extract_answer(seq.text))


def test_a_thinking_models_reply_without_a_marker_answers_its_last_number(rt):
    # After </think> the answer is the whole reply, read as any reply is: its last number when it
    # has no marker or boxed answer (the one-line reading above is for the answer line only).
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n<think>\n")
    t = task(rt, SHEEP, chat=ChatFormat(template))
    runner = PathRunner(t, t.start(t.prompt()))
    seq = runner.add(t.sampling, 200)
    runner.force(seq, "Some thinking.\n")
    runner.start_answer(seq)
    runner.force(seq, "\n\nShe sells 9 eggs at $2 each, making $18 a day.")
    path = runner.result(seq)
    assert path.answer == "18"


def test_at_its_token_cap_a_path_ends_its_line_before_the_marker_is_forced(rt):
    # The evaluation model's paths were forced to answer mid-line, "= 575" of 57500, and answered 575.
    t = task(rt, ESSAY)
    gen = t.start(t.prompt())
    runner = PathRunner(t, gen)
    seq = runner.add(t.sampling, 100)
    budget = runner.think_budget(seq)
    grace = (runner.answer_reserve(100) - runner.cue_tokens) // 2
    assert budget + grace + runner.cue_tokens < 100 and grace >= 8
    while runner.spent(seq) < budget:
        runner.force(seq, " the annual salary is 575")
    assert not seq.text.endswith("\n") and runner.ends_its_line_first(seq)
    runner.force(seq, "00 dollars\n")
    assert not runner.ends_its_line_first(seq)  # the line has ended: the marker goes in now
    runner.force(seq, " and")
    while runner.spent(seq) < budget + grace:
        assert runner.ends_its_line_first(seq)
        runner.force(seq, " more")
    assert not runner.ends_its_line_first(seq)  # half the answer's tokens spent: no longer
    runner.run()
    path = runner.result(seq)
    assert path.reasoning_ended == "tokens" and path.tokens + path.forced_tokens <= 100


def test_path_seeds_follow_llama_servers_n_completions(rt):
    # llama-server seeds the n completions of one request seed, seed + 1, ... (server-task.h,
    # add_child); the same seeds let benchmarks/sc_vs_llama_server.py pair the two sides' paths.
    assert [task(rt, SHEEP, seed=41).path_sampling(i).seed for i in range(4)] == [41, 42, 43, 44]
    assert task(rt, SHEEP, seed=2**32 - 2).path_sampling(1).seed == 0  # wraps within the seed range
    assert task(rt, SHEEP, seed=None).path_sampling(1).seed is None  # random seeds stay random


def test_direct_answers_without_reasoning(rt):
    result = rt.ask(SHEEP, strategy="direct", seed=1)
    assert result.text.startswith("Final answer:")
    assert result.completion_tokens <= 32 and result.reasoning == ""
    assert result.extracted is not None


def test_token_budget_forces_the_answer(rt):
    result = rt.ask(ESSAY, strategy="budget", seed=1, budget=Budget(max_tokens=48))
    path = result.paths[0]
    assert path.tokens <= 48
    assert "Final answer:" in path.text  # forced at the cap
    assert path.finish_reason in ("answered", "length", "eos")


@pytest.mark.parametrize("question, seed", ANSWERS_ITSELF[:1])
def test_budget_forcing_says_wait_when_budget_is_left(replay, question, seed):
    cot = replay.ask(question, strategy="cot", seed=seed, max_tokens=200)
    forced = replay.ask(question, strategy="budget", seed=seed, max_tokens=200, waits=1)
    assert "Wait, let me check this again." in forced.text
    assert "Wait" not in cot.text
    # Up to the model's marker the two are the same generation.
    assert forced.text.startswith(cot.reasoning[:40])
    assert forced.completion_tokens > cot.completion_tokens


def test_deadline_is_kept_by_forcing_the_answer(rt):
    result = rt.ask(ESSAY, strategy="budget", seed=1, max_tokens=2000, budget=Budget(deadline_s=2.5))
    path = result.paths[0]
    assert not result.deadline_missed and result.total_s < 2.5
    assert "Final answer:" in path.text
    # Thinking ran, then was cut short by the clock (not by a cap) to leave time to answer. How
    # many tokens fit before the deadline depends on the machine's speed, so no count is asserted.
    assert path.reasoning_ended == "deadline"
    assert path.reasoning.strip() and path.forced_tokens > 0


def test_sc_votes_over_paths_decoded_together(rt):
    result = rt.ask(SHEEP, strategy="sc", n=6, seed=3, early_stop=False, max_tokens=160)
    assert len(result.paths) == 6
    assert result.completion_tokens == sum(p.tokens for p in result.paths)
    # Finished answers vote, one vote each; answers cut off (by the token cap here) do not.
    assert sum(result.votes.values()) == sum(1 for p in result.paths if p.answer is not None and p.answer_complete)
    assert all(p.tokens + p.forced_tokens <= 160 for p in result.paths)
    assert result.extracted == max(result.votes, key=result.votes.get)
    assert len({p.text for p in result.paths}) > 1  # distinct seeds, distinct paths
    assert not result.early_stopped


def test_sc_stops_early_when_the_paths_agree(rt, profile_as):
    profile_as(rt, NO_BATCH_GAIN)  # batching gains nothing: sc launches in waves
    question = "What is 2 + 2? Reply with just the number."
    full = rt.ask(question, strategy="sc", n=8, seed=5, temperature=0.2, early_stop=False, max_tokens=64)
    early = rt.ask(question, strategy="sc", n=8, seed=5, temperature=0.2, early_stop=True, max_tokens=64)
    assert len(set(p.answer for p in full.paths)) == 1  # they agree...
    assert early.early_stopped and early.extracted == full.extracted
    assert len(early.paths) == first_paths(8) == 3  # only the paths whose agreement could end it ran
    assert max(early.batch_widths) == 3 and max(full.batch_widths) == 8
    assert early.completion_tokens <= 0.5 * full.completion_tokens  # ...so 3 of 8 suffice


def test_sc_launches_more_paths_when_answers_disagree(rt, profile_as):
    profile_as(rt, NO_BATCH_GAIN)
    question = "A shop sells pens at 3 dollars each and notebooks at 7 dollars each. Tom buys 4 pens and 6 notebooks. How much does he pay?"
    result = rt.ask(question, strategy="sc", n=8, seed=11, temperature=1.3, max_tokens=96)
    first = [p.answer for p in result.paths[: first_paths(8)]]
    assert len(set(first)) > 1  # the 135M model disagrees with itself here...
    assert len(result.paths) > len(first)  # ...so the vote needed more than the first paths


def test_sc_weighted_votes_by_confidence(rt):
    result = rt.ask(SHEEP, strategy="sc", n=8, seed=3, weighted=True, early_stop=False, max_tokens=160)
    voting = [p for p in result.paths if p.vote > 0]
    assert voting and all(0 < p.vote <= 1 for p in voting)
    assert all(p.vote == 0 for p in result.paths if p.finish_reason == "pruned")


def test_plan_then_solve_phases(rt):
    result = rt.ask(SHEEP, strategy="plan", seed=1, max_tokens=300)
    assert result.text.startswith("Plan:\n1.")
    assert "Now I carry out the plan step by step." in result.text
    assert result.forced_tokens > 10


def test_reflect_drafts_critiques_and_revises(rt):
    question, seed = ANSWERS_ITSELF[0]
    result = rt.ask(question, strategy="reflect", seed=seed, max_tokens=400)
    assert "Let me check each step of this solution for mistakes." in result.text
    assert result.text.count("Final answer:") >= 2  # the draft's and the revised one
    assert "Let me check each step" in result.reasoning  # the answer is the revised one
    assert result.text.rstrip().endswith(result.answer)


def test_thinking_models_close_the_think_block(rt):
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n<think>\n")
    chat = ChatFormat(template)
    assert chat.thinking
    result = run_strategy("budget", task(rt, SHEEP, chat=chat, budget=Budget(max_tokens=40), max_tokens=40))
    path = result.paths[0]
    assert "</think>" in path.text and "Final answer" not in path.text
    assert path.reasoning and "</think>" not in path.reasoning
    with pytest.raises(EdgesrmError, match="without a thinking mode"):
        run_strategy("plan", task(rt, SHEEP, chat=chat))


def test_auto_without_budget_is_cot_and_with_tight_deadline_stays_in_time(rt):
    assert rt.ask(SHEEP, strategy="auto", seed=1, max_tokens=64).strategy == "auto:cot"
    result = rt.ask(ESSAY, strategy="auto", seed=1, budget=Budget(deadline_s=1.0), max_tokens=1000)
    assert result.strategy.startswith("auto:") and not result.deadline_missed


def test_auto_choice_follows_measured_speed(rt, profile_as):
    t = task(rt, SHEEP, budget=Budget(deadline_s=10.0), max_tokens=256)
    profile_as(rt, {w: 100.0 * w for w in (1, 2, 4, 8, 16)})  # 100 tok/s per path at any width
    assert auto.choose(t) == ("sc", 8)  # 8 paths at once, about 3 s
    profile_as(rt, {w: 40.0 * w ** 0.5 for w in (1, 2, 4, 8, 16)})
    assert auto.choose(t) == ("cot", 1)  # 6.4 s alone; paths in parallel are too slow
    profile_as(rt, {w: 10.0 for w in (1, 2, 4, 8, 16)})
    assert auto.choose(t) == ("budget", 1)  # even one chain would take 25 s
    t = task(rt, SHEEP, budget=Budget(max_tokens=200), max_tokens=256)
    assert auto.choose(t) == ("budget", 1)  # fewer tokens than one typical chain


def test_lead_probability():
    assert lead_probability(4, 0) == pytest.approx(1 - 0.5**5)
    assert lead_probability(3, 0) < 0.95 < lead_probability(4, 0)
    assert lead_probability(2, 2) == pytest.approx(0.5)
    assert lead_probability(2, 1) == pytest.approx(11 / 16)


def test_paths_needed_launches_only_what_could_end_the_vote():
    assert first_paths(8, confidence=0.95) == 4  # four agreeing answers end a question
    assert first_paths(8, confidence=0.9) == 3
    assert first_paths(2, confidence=0.95) == 2  # fewer paths than a stop needs
    assert paths_needed(1, 0, 1, running=3, left=4, confidence=0.95) == 0  # the first four may still agree
    assert paths_needed(1, 1, 2, running=2, left=4, confidence=0.95) == 3  # a dissent: 6 against 1 is needed
    assert paths_needed(2, 2, 4, running=0, left=4, confidence=0.95) == 4  # no agreement can end it: run them all
    assert paths_needed(1, 1, 2, running=0, left=6, confidence=0.65) == 1  # 2 against 1 is enough at 0.65


def test_vote_decided():
    def decided(answers, undecided, confidence=0.95, weights=None):
        return vote_decided(vote(answers, weights)[1], vote(answers)[1], undecided, confidence)

    assert decided(["3"] * 4, undecided=4)  # 4 of 4 agree: Beta criterion
    assert not decided(["3"] * 3, undecided=5)
    assert decided(["3"] * 5 + ["4"], undecided=2)  # cannot be overtaken
    assert not decided(["3"] * 4 + ["4"] * 2, undecided=2)  # 4-4 still possible
    assert not decided(["3"] * 8, undecided=0)  # nothing left to stop
    assert not decided([], undecided=8)
    assert not decided(["3", "3"], undecided=6, confidence=0.6)  # never on fewer than 3 answers
    # The leader has to beat the runner-up, not every dissenter together: wrong answers scatter.
    assert decided(["3"] * 4 + ["4", "5"], undecided=4, confidence=0.85)  # 4 against 1
    assert not decided(["3"] * 4 + ["4", "4"], undecided=4, confidence=0.85)  # 4 against 2
    # With weights, the leader is the weighted winner; the criterion counts its paths.
    assert not decided(["3", "3", "3", "4", "4"], undecided=3, confidence=0.6, weights=[0.1] * 3 + [1, 1])


def test_lowest_group_confidence():
    assert lowest_group_confidence([-0.1] * 40 + [-2.0] * 32 + [-0.1] * 10, group=32) == pytest.approx(-2.0)
    assert lowest_group_confidence([None, -1.0, -3.0], group=32) == pytest.approx(-2.0)
    assert lowest_group_confidence([float("nan"), -1.0, -3.0], group=32) == pytest.approx(-2.0)
    assert lowest_group_confidence([None]) is None


def test_unknown_strategy(rt):
    assert set(STRATEGIES) == {"plain", "direct", "cot", "budget", "sc", "plan", "reflect", "auto"}
    with pytest.raises(EdgesrmError, match="unknown strategy"):
        rt.ask(SHEEP, strategy="tree")
