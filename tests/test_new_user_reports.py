"""What a new user's attempt to break edgesrm found (issues 14 and 15), one test each."""

import json
import os
import subprocess
import sys

import pytest

import edgesrm
from edgesrm.answers import extract_answer, vote
from edgesrm.chat import ChatFormat
from edgesrm.engine import EngineConfig
from edgesrm.errors import EdgesrmError
from edgesrm.runtime import Runtime

Q = "What is 2+3?"


@pytest.fixture(scope="module")
def runtime(engine) -> Runtime:
    return Runtime(engine)


def edgesrm_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesrm", *args], capture_output=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.parametrize("n_ctx, seqs", [(16, 16), (64, 64), (128, 255)])
def test_a_context_smaller_than_the_sequences_is_an_error_not_an_abort(n_ctx, seqs):
    with pytest.raises(EdgesrmError, match="cannot hold"):
        EngineConfig(n_ctx=n_ctx, max_sequences=seqs)


def test_cli_too_small_context_for_the_paths_is_one_error_line():
    proc = edgesrm_cli("ask", "-s", "sc", "-n", "64", "--ctx", "64", "--max-tokens", "8", "2+2?")
    assert proc.returncode == 1 and proc.stderr.decode().count("\n") == 1 and b"cannot hold" in proc.stderr


def test_sc_keeps_a_token_budget_smaller_than_its_paths(runtime):
    for budget in (1, 3):
        result = runtime.ask(Q, strategy="sc", n=4, seed=1, max_tokens=64, budget=edgesrm.Budget(max_tokens=budget))
        assert result.completion_tokens + result.forced_tokens <= budget
        assert any("instead of 4" in note for note in result.notes)


def test_a_memory_budget_given_to_ask_is_said_to_change_nothing(runtime):
    result = runtime.ask(Q, seed=1, max_tokens=8, budget=edgesrm.Budget(memory_mb=1))
    assert any("memory budget" in note for note in result.notes)


def test_a_missed_deadline_is_said(runtime):
    result = runtime.ask(Q, strategy="budget", seed=7, max_tokens=64, budget=edgesrm.Budget(deadline_s=1e-6))
    assert result.deadline_missed and any("missed" in note for note in result.notes)


def test_a_cap_with_no_room_for_an_answer_is_said(runtime):
    result = runtime.ask(Q, strategy="direct", seed=1, max_tokens=64, budget=edgesrm.Budget(max_tokens=3))
    assert result.completion_tokens + result.forced_tokens <= 3
    assert result.answer or any("no path finished an answer" in note for note in result.notes)


def test_question_bytes_that_are_not_utf8_are_replaced_in_the_result(runtime):
    question = b"caf\xff 2+2?".decode("utf-8", "surrogateescape")
    result = runtime.ask(question, seed=1, max_tokens=4)
    assert result.question == "caf\ufffd 2+2?"
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")  # valid text all the way


@pytest.mark.parametrize("kwargs", [{"parse_special": "no"}, {"weighted": "yes"}, {"early_stop": None},
                                    {"on_text": 5}, {"system": 3}])
def test_flags_and_callbacks_are_checked(runtime, kwargs):
    with pytest.raises(EdgesrmError):
        runtime.ask(Q, max_tokens=4, **kwargs)


def test_a_template_that_does_not_parse_is_said_once():
    with pytest.raises(EdgesrmError) as exc:
        ChatFormat("{{ messages | nosuchfilter }}").render([{"role": "user", "content": "hi"}])
    assert str(exc.value).count("chat template") == 1 and "EdgesrmError" not in str(exc.value)


def test_an_invalid_option_is_one_error_line():
    proc = edgesrm_cli("ask", "--deadline", "nan", "hi")
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "--deadline" in lines[0]


def test_answer_helpers_refuse_what_they_cannot_use():
    with pytest.raises(EdgesrmError):
        vote(["1", "2"], [float("nan"), 1.0])
    with pytest.raises(EdgesrmError):
        vote(["1", "2"], [1.0])
    with pytest.raises(EdgesrmError):
        extract_answer(5)
