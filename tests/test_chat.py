"""Chat templates and the split of a reply into reasoning and answer."""

import pytest

from edgesrm.chat import CHATML_TEMPLATE, STEP_BY_STEP_SYSTEM, ChatFormat, ReasoningSplitter
from edgesrm.errors import EdgesrmError

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Shaped like the DeepSeek-R1-Distill template: drops earlier reasoning, opens <think>.
R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'].split('</think>')[-1] }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"
)


def test_model_template_renders_with_generation_prompt():
    fmt = ChatFormat(SMOLLM2_TEMPLATE)
    prompt = fmt.reasoning_prompt("What is 2+2?").text
    assert prompt.startswith("<|im_start|>system\n" + STEP_BY_STEP_SYSTEM)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert not fmt.thinking


def test_fallback_is_chatml():
    fmt = ChatFormat(None)
    assert not fmt.has_template
    prompt = fmt.render([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ChatFormat(CHATML_TEMPLATE).render([{"role": "user", "content": "hi"}]) == prompt


def test_thinking_template_gets_no_system_prompt_and_opens_think():
    fmt = ChatFormat(R1_TEMPLATE, bos_token="<｜begin▁of▁sentence｜>")
    assert fmt.thinking
    prompt = fmt.reasoning_prompt("What is 2+2?").text
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    splitter = fmt.splitter(prompt)
    assert splitter.opened


def test_template_errors_are_one_clear_error():
    with pytest.raises(EdgesrmError, match="does not parse"):
        ChatFormat("{% for x in %}").render([])
    with pytest.raises(EdgesrmError, match="failed: no system"):
        ChatFormat("{{ raise_exception('no system') }}").render([])


@pytest.mark.parametrize(
    "thinking, opened, text, reasoning, answer",
    [
        (True, True, "2 plus 2 is 4.\n</think>\n\nThe answer is 4.", "2 plus 2 is 4.", "The answer is 4."),
        (True, False, "<think>\nadd them\n</think>4", "add them", "4"),
        (True, False, "4, no thinking", "", "4, no thinking"),
        (True, True, "still thinking when cut off", "still thinking when cut off", ""),
        (False, False, "2 + 2 = 4.\nFinal answer: 4", "2 + 2 = 4.", "4"),
        (False, False, "Add.\n**Final Answer:** 4", "Add.", "4"),
        (False, False, "just 4", "", "just 4"),
    ],
)
def test_split(thinking, opened, text, reasoning, answer):
    split = ReasoningSplitter(thinking, opened).split(text)
    assert (split.reasoning, split.answer) == (reasoning, answer)


@pytest.mark.parametrize(
    "thinking, opened, text",
    [
        (True, True, "Let me see. 2 and 2.\n</think>\n\nIt is 4."),
        (True, False, "<think>hmm</think>Four."),
        (False, False, "Step 1: add.\nStep 2: done.\nFinal answer: 4 apples"),
        (False, False, "fine answer: not the marker, final answer: 7"),
    ],
)
def test_streamed_split_matches_whole_split(thinking, opened, text):
    whole = ReasoningSplitter(thinking, opened).split(text)
    for chunk in (1, 3, 7):
        splitter = ReasoningSplitter(thinking, opened)
        got = {"reasoning": "", "answer": ""}
        order = []
        for i in range(0, len(text), chunk):
            for kind, piece in splitter.feed(text[i : i + chunk]):
                got[kind] += piece
                order.append(kind)
        for kind, piece in splitter.finish():
            got[kind] += piece
            order.append(kind)
        assert got["answer"] == whole.answer
        assert got["reasoning"].strip() == whole.reasoning
        assert "answer" not in order or "reasoning" not in order[order.index("answer") :]


def test_stream_never_shows_a_partial_marker():
    splitter = ReasoningSplitter(thinking=False)
    shown = "".join(piece for _, piece in splitter.feed("so it is 4.\nFinal ans"))
    assert "Final" not in shown
