"""The Python API that apps embed: ``edgesrm.load`` and ``Runtime.ask``."""


import pytest

import edgesrm
from edgesrm.errors import EdgesrmError
from edgesrm.runtime import Runtime


@pytest.fixture(scope="module")
def runtime(engine) -> Runtime:
    return Runtime(engine)


def test_ask_returns_answer_reasoning_counts_and_timings(runtime):
    streamed: list[tuple[str, str]] = []
    result = runtime.ask("What is 3 + 4?", seed=5, max_tokens=64, on_text=lambda k, t: streamed.append((k, t)))
    assert result.text.strip()
    assert result.answer or result.reasoning
    assert 0 < result.completion_tokens <= 64
    assert result.prompt_tokens > 10
    assert result.prefill_s > 0 and result.decode_s > 0 and result.total_s >= result.decode_s
    assert result.tokens_per_s > 0
    assert result.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # What streamed is the reply, in order: reasoning first, then the answer.
    kinds = [k for k, _ in streamed]
    assert kinds == sorted(kinds, key=lambda k: k == "answer")
    def squash(text: str) -> str:
        return "".join(text.split())

    assert squash("".join(t for _, t in streamed)) == squash(result.reasoning + result.answer)
    d = result.to_dict()
    assert d["seed"] == 5 and d["tokens_per_s"] > 0


def test_same_seed_same_result(runtime):
    a = runtime.ask("Name three fruits.", seed=42, max_tokens=24)
    b = runtime.ask("Name three fruits.", seed=42, max_tokens=24)
    assert a.text == b.text


def test_non_thinking_model_gets_the_step_by_step_prompt(runtime):
    assert not runtime.chat.thinking
    prompt = runtime.chat.reasoning_prompt("Q?").text
    assert "Final answer:" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_load_default_model_and_ask(model_path):
    with edgesrm.load(n_ctx=1024, max_sequences=1) as rt:
        assert rt.model_path == model_path
        result = rt.ask("Say hello.", seed=1, max_tokens=8)
        assert result.completion_tokens <= 8


def test_empty_question_is_an_error(runtime):
    with pytest.raises(EdgesrmError, match="empty"):
        runtime.ask("  ")
