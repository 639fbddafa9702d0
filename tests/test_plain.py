"""plain: the user's messages untouched, the model's whole reply (issue 16, item 1).

`edgesrm ask -s direct "Write a haiku about the sea"` returned one line, and `cot` showed the
haiku as "reasoning": every reply was bent into a reasoning shape. `plain` adds no instruction
and returns the whole reply; thinking models keep their own <think> split.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgesrm.cli import cli
from edgesrm.engine import Engine, EngineConfig
from edgesrm.errors import EdgesrmError
from edgesrm.runtime import Runtime
from edgesrm.strategies.base import BY_MODEL
from edgesrm.strategies.direct import DIRECT_SYSTEM
from edgesrm.chat import STEP_BY_STEP_SYSTEM

HAIKU = "Write a haiku about the sea"


@pytest.fixture(scope="module")
def rt(engine) -> Runtime:
    return Runtime(engine)


def streamed_ask(rt, *args, **kw):
    pieces = {"reasoning": "", "answer": ""}

    def on_text(kind, text):
        pieces[kind] += text

    result = rt.ask(*args, on_text=on_text, **kw)
    return result, (pieces["reasoning"], pieces["answer"])


def prompt_of(rt, messages) -> int:
    """Prompt tokens of ``messages`` rendered by the model's template, as given."""
    return len(rt.engine.tokenize_prompt(rt.chat.prompt(messages).pieces))


def test_plain_returns_the_whole_reply_untouched(rt):
    lines = []
    for seed in range(2, 8):  # which seeds give a haiku on several lines depends on the KV cache's state
        result, streamed = streamed_ask(rt, HAIKU, strategy="plain", seed=seed, max_tokens=128)
        # The prompt is the user's message alone: no step-by-step or final-answer instruction.
        assert result.prompt_tokens == prompt_of(rt, [{"role": "user", "content": HAIKU}])
        assert result.reasoning == "" and result.answer == result.text.strip()
        assert streamed == ("", result.answer)  # everything streams as the answer, nothing as reasoning
        assert result.strategy == "plain"
        if result.finish_reason == "eos":
            assert result.paths[0].answer_complete
        lines.append(result.answer.count("\n") + 1)
    assert max(lines) > 1  # whole replies of several lines (direct's contract would keep only the first)


def test_other_strategies_keep_their_contract(rt):
    """direct keeps its final-answer line; cot its reasoning: plain changes neither."""
    direct = rt.ask(HAIKU, strategy="direct", seed=3, max_tokens=96, temperature=0.0)
    assert "\n" not in direct.answer
    cot = rt.ask(HAIKU, strategy="cot", seed=3, max_tokens=96, temperature=0.0)
    assert cot.prompt_tokens > prompt_of(rt, [{"role": "user", "content": HAIKU}])  # its instruction
    assert DIRECT_SYSTEM and STEP_BY_STEP_SYSTEM  # (the instructions plain leaves out)


def test_plain_keeps_the_token_cap_and_system(rt):
    result = rt.ask("Tell me a long story about a lighthouse keeper.", strategy="plain", seed=1, max_tokens=20,
                    system="You are a pirate.")
    assert result.completion_tokens + result.forced_tokens <= 20
    assert result.finish_reason == "length" and not result.paths[0].answer_complete
    assert result.notes == ["the reply was cut off by the token limit before it ended"]  # said once, as a reply
    assert result.prompt_tokens == prompt_of(rt, [{"role": "system", "content": "You are a pirate."},
                                                  {"role": "user", "content": "Tell me a long story about a "
                                                   "lighthouse keeper."}])


def test_a_conversation_goes_to_the_template_as_given(rt):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    result = rt.ask(messages=messages, seed=2, max_tokens=32)
    assert result.strategy == "plain"  # the default for a conversation
    assert result.question == "What is my name?"
    assert result.prompt_tokens == prompt_of(rt, messages)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"question": "hi", "messages": [{"role": "user", "content": "hi"}]}, "not both"),
    ({}, "give a question"),
    ({"messages": []}, "messages is empty"),
    ({"messages": "hi"}, "must be a list"),
    ({"messages": [{"role": "user", "content": 3}]}, "must be text"),
    ({"messages": [{"role": "user", "content": "hi"}], "strategy": "cot"}, "plain strategy"),
])
def test_bad_conversations_get_one_clear_error(rt, kwargs, fragment):
    with pytest.raises(EdgesrmError, match=fragment):
        rt.ask(max_tokens=8, **kwargs)
    assert rt.ask("Say hi.", strategy="plain", max_tokens=4).completion_tokens <= 4  # the runtime still works


def test_a_thinking_model_still_thinks(deepseek_r1_tiny):
    """DeepSeek-R1-Distill's template opens <think>: the reasoning is the think block, the answer
    what follows </think> (the tiny model's random weights never close it: the cap does)."""
    with Engine(deepseek_r1_tiny, EngineConfig(n_ctx=1024, max_sequences=1)) as engine:
        rt = Runtime(engine)
        assert rt.chat.thinking
        result, streamed = streamed_ask(rt, HAIKU, strategy="plain", seed=1, max_tokens=300)
    path = result.paths[0]
    assert path.tokens + path.forced_tokens <= 300
    assert result.reasoning and "</think>" in result.text  # the think block was closed for the answer
    assert path.reasoning_ended in ("tokens", BY_MODEL)
    assert streamed == (result.reasoning, result.answer)


def test_cli_plain(model_path):
    out = CliRunner().invoke(cli, ["ask", "-s", "plain", "--seed", "3", "--temperature", "0", "--max-tokens", "96",
                                   HAIKU])
    assert out.exit_code == 0, out.output
    assert "[plain:" in out.stderr
    help_text = CliRunner().invoke(cli, ["ask", "--help"]).output
    assert "plain" in help_text and "Examples:" in help_text


def test_a_runtime_answers_calls_from_several_threads_in_turn(rt):
    """Three threads calling ask on one Runtime: one failed with llama.cpp's 'failed to decode'."""
    import threading

    results, errors = [], []

    def call():
        try:
            results.append(rt.ask("What is 2+2?", strategy="plain", max_tokens=24, seed=1, temperature=0))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3
    assert len({r.text for r in results}) == 1  # the same request alone each time: the same text


def test_cli_memory_budget_gets_no_contradicting_note(model_path):
    out = CliRunner().invoke(cli, ["ask", "--memory", "400", "--max-tokens", "8", "--seed", "1", "What is 3+4?"])
    assert out.exit_code == 0, out.output
    assert "changes nothing" not in out.stderr


def test_the_next_turn_of_a_conversation_prefills_only_what_is_new(rt):
    turn1 = [{"role": "user", "content": "Name a colour."}]
    first = rt.ask(messages=turn1, seed=1, max_tokens=16)
    turn2 = turn1 + [{"role": "assistant", "content": first.answer}, {"role": "user", "content": "And another?"}]
    second = rt.ask(messages=turn2, seed=1, max_tokens=16)
    assert second.cached_tokens >= first.prompt_tokens - 2  # the history was not prefilled again
    assert second.cached_tokens < second.prompt_tokens
