"""The engine through real llama.cpp with the embedded SmolLM2-135M model.

llama.cpp on CPU is not bitwise batch-invariant: the same sequence decoded alone and in a
batch gets logits that differ by up to ~0.9 (KL ~0.005, measured here), and greedy texts
part after 2 to 40 tokens. So batch-shape tests compare distributions within the stated
tolerance below, never texts.
"""

import numpy as np
import pytest

from edgesrm.engine import CONTEXT, DROPPED, EOS, GREEDY, LENGTH, STOP, Engine, EngineConfig, SamplingParams
from edgesrm.errors import EdgesrmError

MAX_KL = 0.05  # nats; 10x the divergence measured between batch shapes
MAX_LOGIT_DIFF = 2.0  # measured up to 0.9


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert kl(a, b) < MAX_KL
    assert np.abs(a - b).max() < MAX_LOGIT_DIFF
    top2 = np.sort(log_softmax(a))[-2:]
    if top2[1] - top2[0] > MAX_LOGIT_DIFF:  # a clear favourite stays the favourite
        assert a.argmax() == b.argmax()


def test_shared_prompt_is_decoded_once_and_seeds_every_sequence(engine, chat_prompt):
    # The prompt's next-token distribution, from a generation with one sequence.
    gen = engine.start(chat_prompt)
    alone = gen.add(GREEDY, max_tokens=1)
    gen.step()
    assert gen.timings.decoded_tokens == 0  # sampled straight from the prefill's logits
    prompt_logprobs = log_softmax(gen.last_logits(alone))
    gen.close()

    gen = engine.start(chat_prompt)
    seqs = [gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=4) for i in range(8)]
    gen.step()
    # One prefill, then exactly one decoded token per sequence in the step.
    assert gen.timings.prompt_tokens == len(engine.tokenize(chat_prompt))
    assert gen.timings.decoded_tokens == 8
    assert all(s.n_sampled == 2 for s in seqs)
    # Every sequence drew its first token from the prompt's own distribution.
    for s in seqs:
        assert s.logprobs[0] == pytest.approx(float(prompt_logprobs[s.tokens[0]]), abs=1e-4)
    assert len({s.tokens[0] for s in seqs}) > 1 or prompt_logprobs.max() > -0.1
    gen.close()


def test_sequence_in_a_batch_of_8_stays_close_to_the_same_sequence_alone(engine, chat_prompt):
    continuation = " Once upon a time, there was a little cat named Whiskers who loved to"
    # Alone: the prompt, then the continuation forced, decoded as the only sequence.
    gen = engine.start(chat_prompt)
    alone = gen.add(GREEDY, max_tokens=2)
    gen.force(alone, continuation)
    gen.step()
    logits_alone_forced = gen.last_logits(alone)
    gen.close()
    gen = engine.start(chat_prompt)
    solo = gen.add(GREEDY, max_tokens=1)
    gen.step()
    logits_alone_first = gen.last_logits(solo)
    gen.close()

    # Among 8: seven sequences sample freely; the eighth joins later, so its first decode
    # (the prompt's last token) and its forced continuation share a batch with the others.
    gen = engine.start(chat_prompt)
    for i in range(7):
        gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=64)
    gen.step()
    late = gen.add(GREEDY, max_tokens=2)
    gen.step()
    assert gen.timings.decoded_tokens >= 7 + 7 + 1
    assert_close(logits_alone_first, gen.last_logits(late))
    late2 = gen.add(GREEDY, max_tokens=2)
    gen.force(late2, continuation)
    live = len(gen.active)
    gen.step()
    assert live >= 4  # it really shared the decode with other sequences
    assert_close(logits_alone_forced, gen.last_logits(late2))
    gen.close()


def run_sampled(engine, prompt, seeds, max_tokens=32):
    gen = engine.start(prompt)
    seqs = [gen.add(SamplingParams(temperature=1.0, seed=s), max_tokens=max_tokens) for s in seeds]
    gen.run()
    gen.close()
    return [s.text for s in seqs]


def test_same_seed_and_batch_give_the_same_text(engine, chat_prompt):
    first = run_sampled(engine, chat_prompt, [11, 12, 13, 14])
    again = run_sampled(engine, chat_prompt, [11, 12, 13, 14])
    assert first == again
    assert len(set(first)) > 1  # different seeds really sample differently


def test_greedy_matches_the_argmax_of_its_logits(engine, chat_prompt):
    gen = engine.start(chat_prompt)
    seq = gen.add(GREEDY, max_tokens=16)
    for _ in range(5):
        gen.step()
        logits = gen.last_logits(seq)
        assert seq.tokens[-1] == int(logits.argmax())
        # The kept log-probability is that of the chosen token under the model.
        assert seq.logprobs[-1] == pytest.approx(float(log_softmax(logits)[seq.tokens[-1]]), abs=1e-4)
    gen.close()


def test_stop_string_cuts_the_text_and_is_never_streamed(engine, chat_prompt):
    gen = engine.start(chat_prompt)
    ref = gen.add(GREEDY, max_tokens=40)
    gen.run()
    text = ref.text
    words = text.split()
    assert len(words) > 6, text
    stop = " ".join(words[4:6])
    gen = engine.start(chat_prompt)
    streamed: list[str] = []
    seq = gen.add(GREEDY, max_tokens=40, stop=[stop, "never-appears"], on_text=lambda s, t: streamed.append(t))
    gen.run()
    assert seq.finish_reason == STOP
    assert seq.text == text[: text.index(stop)]
    assert "".join(streamed) == seq.text
    gen.close()


def test_max_tokens_ends_with_length(engine, chat_prompt):
    gen = engine.start(chat_prompt)
    seq = gen.add(GREEDY, max_tokens=5)  # a story takes more than 5 tokens
    gen.run()
    assert (seq.finish_reason, seq.n_sampled, len(seq.tokens)) == (LENGTH, 5, 5)
    assert 0 < seq.seconds and all(lp <= 0 for lp in seq.logprobs)


def test_utf8_multibyte_text_streams_whole_characters(engine):
    text = "Grüße aus Köln, 日本語のテキスト, emoji 🙂🚀 and ∑ symbols."
    tokens = engine.tokenize(text)
    # Byte-level BPE splits these characters over several tokens...
    assert any(engine.piece(t).decode("utf-8", "replace") != engine.piece(t).decode("utf-8", "ignore") for t in tokens)
    gen = engine.start("<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n")
    streamed: list[str] = []
    seq = gen.add(GREEDY, max_tokens=3, on_text=lambda s, t: streamed.append(t))
    gen.force(seq, text)
    # ...yet the forced text arrives whole, with no replacement characters.
    assert seq.text == text
    assert "\ufffd" not in "".join(streamed)
    gen.run()
    assert seq.text.startswith(text)
    assert "".join(streamed) == seq.text
    gen.close()


def test_forced_text_steers_the_continuation(engine):
    gen = engine.start("<|im_start|>user\nCount from 1 to 10.<|im_end|>\n<|im_start|>assistant\n")
    seq = gen.add(GREEDY, max_tokens=6)
    forced = gen.force(seq, "1, 2, 3, 4, 5, 6,")
    gen.run()
    assert seq.n_forced == len(forced)
    assert seq.logprobs[: len(forced)] == [None] * len(forced)
    assert seq.text.startswith("1, 2, 3, 4, 5, 6,")
    assert "7" in seq.text[len("1, 2, 3, 4, 5, 6,") :]
    gen.close()


def test_fork_copies_the_sequence_and_continues_independently(engine, chat_prompt):
    gen = engine.start(chat_prompt)
    parent = gen.add(GREEDY, max_tokens=30)
    for _ in range(6):
        gen.step()
    text_at_fork = parent.text
    child = gen.fork(parent, SamplingParams(temperature=1.0, seed=5))
    assert child.parent == parent.index and child.seq_id != parent.seq_id
    gen.step()
    # Same context, same position: the same next-token distribution.
    assert_close(gen.last_logits(parent), gen.last_logits(child))
    gen.drop(parent)  # the child's KV cells are its own
    assert parent.finish_reason == DROPPED
    gen.run()
    assert child.text.startswith(text_at_fork)
    assert child.n_sampled > parent.n_sampled or child.finish_reason == EOS
    gen.close()


def test_dropped_sequences_free_their_slots(engine, chat_prompt):
    gen = engine.start(chat_prompt)
    for round_ in range(3):  # 3 x 16 sequences through 16 slots
        seqs = [gen.add(SamplingParams(temperature=1.0, seed=round_ * 16 + i), max_tokens=4) for i in range(16)]
        with pytest.raises(EdgesrmError, match="at most 16 sequences"):
            gen.add(GREEDY)
        gen.step()
        for s in seqs:
            gen.drop(s)
    assert not gen.active
    gen.close()


def test_prompt_longer_than_the_context_is_a_clear_error(engine):
    with pytest.raises(EdgesrmError, match="longer than the context"):
        engine.start("word " * 5000)


def test_a_full_context_ends_sequences_instead_of_crashing(model_path):
    with Engine(model_path, EngineConfig(n_ctx=256, max_sequences=8)) as small:
        gen = small.start("<|im_start|>user\nWrite a long essay about the sea.<|im_end|>\n<|im_start|>assistant\n")
        seqs = [gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=1000) for i in range(8)]
        gen.run()
        assert {s.finish_reason for s in seqs} <= {CONTEXT, EOS}
        assert any(s.finish_reason == CONTEXT for s in seqs)
        # The engine is still usable afterwards.
        gen = small.start("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        seq = gen.add(GREEDY, max_tokens=3)
        gen.run()
        assert seq.n_sampled >= 1


def test_bad_settings_are_clear_errors(model_path):
    with pytest.raises(EdgesrmError, match="unknown KV cache type"):
        EngineConfig(kv_type="q9")
    with pytest.raises(EdgesrmError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_pause_cuts_the_string_rewinds_and_resumes(engine):
    gen = engine.start("<|im_start|>user\nCount from 1 to 10.<|im_end|>\n<|im_start|>assistant\n")
    seq = gen.add(GREEDY, max_tokens=30, pause=["5"])
    gen.force(seq, "1, 2, 3,")
    gen.run()  # runs until nothing is active: the sequence is paused, not finished
    assert seq.paused and seq.paused_on == "5" and not seq.finished
    text_at_pause = seq.text
    assert text_at_pause.startswith("1, 2, 3,") and "5" not in text_at_pause and "4" in text_at_pause
    assert seq.n_sampled + seq.n_forced == len(seq.tokens)
    # The KV was rewound to match the text: resumed as is, greedy decoding says "5" again.
    gen.resume(seq)
    gen.run()
    assert seq.paused_on == "5" and seq.text == text_at_pause
    # Forcing other text resumes it from there.
    gen.configure(seq, pause=[])
    gen.force(seq, " five,")
    gen.run()
    assert seq.finished and seq.text.startswith(text_at_pause + " five,")
    continuation = seq.text[len(text_at_pause + " five,") :]
    assert "6" in continuation or "six" in continuation  # it counts on from the forced text
    gen.close()


def test_without_logprobs_rewinding_still_counts_sampled_tokens(engine):
    gen = engine.start("<|im_start|>user\nCount from 1 to 10.<|im_end|>\n<|im_start|>assistant\n", logprobs=False)
    seq = gen.add(GREEDY, max_tokens=30, pause=["5"])
    gen.force(seq, "1, 2, 3,")
    gen.run()
    assert seq.paused and seq.n_sampled + seq.n_forced == len(seq.tokens)
    assert seq.n_forced == sum(lp is None for lp in seq.logprobs) and seq.n_sampled > 0
    assert seq.mean_logprob is None  # nothing was measured
    gen.close()


# -- cache_prompt: the last prompt's KV cells are kept for a prompt that begins like it ------

def _greedy_first(engine, tokens):
    gen = engine.start(tokens)
    seq = gen.add(GREEDY, max_tokens=4)
    gen.run()
    return gen.timings.cached_tokens, seq.tokens[0], seq.logprobs[0]


def test_a_prompt_that_begins_like_the_last_one_prefills_only_the_rest(model_path, chat_prompt):
    with Engine(model_path, EngineConfig(n_ctx=1024, max_sequences=2)) as cached, \
            Engine(model_path, EngineConfig(n_ctx=1024, max_sequences=2, cache_prompt=False)) as fresh:
        first = cached.tokenize_prompt(chat_prompt)
        turn2 = first + cached.tokenize("Once upon a time, a cat named Tom lived by the sea.\n", add_special=False)
        assert _greedy_first(cached, first)[0] == 0
        hit = _greedy_first(cached, turn2)
        assert hit[0] == len(first)  # only the new tokens were prefilled
        miss = _greedy_first(fresh, turn2)
        assert miss[0] == 0
        # The same next-token distribution (llama.cpp is not bitwise batch-invariant: a tolerance).
        assert hit[1] == miss[1] and abs(hit[2] - miss[2]) < 0.1
        # The same prompt again keeps all but its last token, and replays exactly (its last token is
        # always decoded alone); a shorter one keeps what it shares.
        again = _greedy_first(cached, turn2)
        assert again[0] == len(turn2) - 1 and again[1:] == hit[1:]
        assert _greedy_first(cached, first)[0] == len(first) - 1
        other = turn2[:1] + cached.tokenize("Something else entirely.", add_special=False)
        assert _greedy_first(cached, other)[0] == 1


def test_cache_prompt_is_checked():
    with pytest.raises(EdgesrmError, match="cache_prompt must be True or False"):
        EngineConfig(cache_prompt="yes")
