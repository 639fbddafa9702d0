"""Converted tiny random checkpoints of every family against Hugging Face transformers.

For each family (Llama with Llama 3 rope scaling, Qwen2 in DeepSeek-R1-Distill style,
Qwen3 with explicit head_dim and tied embeddings, Gemma 3 with sliding windows and a trimmed
vocabulary) a tiny checkpoint is made at test time, converted to f32 and f16, and llama.cpp's
next-token log-probabilities over a 32-token text are compared with transformers' (float32).

Bounds, with what was measured on the machine that set them (x86-64, 2 cores):
- f32: 1e-3 (Llama, Qwen: 2e-5 measured); 5e-3 for Gemma 3 (1e-3 measured: llama.cpp's CPU
  GELU reads an f16 table);
- f16: 0.06 (0.021 measured: weights rounded to f16, and llama.cpp's f16 matmuls round
  activations to f16 too);
- quantized against the f32 GGUF, mean KL over the 32 positions: Q8_0 <= 0.01 (0.003
  measured), Q4_K_M <= 0.5 (0.26 measured; random weights have no structure to preserve).
Top-1 must agree wherever the reference's top-2 margin exceeds the bound. The negative
controls at the end show that the bounds catch a conversion mistake.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert_support import LlamaCpp, checkpoints, compare, hf_logprobs, hf_model, hf_tokenizer, kl_divergence, log_softmax
from edgesrm.convert import convert, quantize

FAMILIES = checkpoints.FAMILIES
F32_BOUND = {"llama": 1e-3, "qwen2": 1e-3, "qwen3": 1e-3, "gemma3": 5e-3}
F16_BOUND = 0.06
KL_BOUND = {"Q8_0": 0.01, "Q4_K_M": 0.5}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family) or tiny(style=...): the checkpoint directory, made once per session."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(family: str = "llama", style: str | None = None) -> Path:
        key = f"{family}-{style}" if style else family
        if key not in made:
            extra = {"num_hidden_layers": 1} if style else {}
            made[key] = checkpoints.tiny_checkpoint(root / key, family, style=style, **extra)
        return made[key]

    return make


@pytest.fixture(scope="session")
def converted(tiny, tmp_path_factory):
    """converted(family, outtype): the GGUF, converted once per session."""
    made: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("gguf")

    def make(family: str, outtype: str, style: str | None = None) -> Path:
        key = (family, outtype, style)
        if key not in made:
            made[key] = convert(tiny(family, style), root / f"{family}-{style}-{outtype}.gguf",
                                outtype=outtype, progress=False)
        return made[key]

    return make


@pytest.fixture(scope="session")
def reference(tiny):
    """reference(family): (token ids, transformers' log-probs over llama.cpp's vocabulary)."""
    made: dict[str, tuple] = {}

    def make(family: str):
        if family not in made:
            directory = tiny(family)
            ids = hf_tokenizer(directory)(checkpoints.LOGITS_TEXT).input_ids[:32]
            assert len(ids) == 32
            logp = hf_logprobs(hf_model(directory), ids)
            made[family] = (ids, logp)
        return made[family]

    return make


def restricted(logp: np.ndarray, n_vocab: int) -> np.ndarray:
    """The reference renormalised over the tokens llama.cpp has (Gemma drops rows no token uses)."""
    return logp if logp.shape[1] == n_vocab else log_softmax(logp[:, :n_vocab])


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_next_token_logprobs_match_transformers(family, outtype, converted, reference):
    ids, ref = reference(family)
    with LlamaCpp(converted(family, outtype)) as lc:
        ours = lc.logprobs(ids)
    ref = restricted(ref, ours.shape[1])
    bound = F32_BOUND[family] if outtype == "f32" else F16_BOUND
    assert (ref.max(-1) - ref.min(-1)).mean() > 3.0  # peaked, not near-uniform: the comparison means something
    diff, decided, agree = compare(ours, ref, bound)
    assert diff <= bound, f"{family} {outtype}: max |log-prob difference| {diff:.2e} > {bound}"
    assert decided >= 24, f"only {decided} positions with a clear top-1"
    assert agree == decided, f"top-1 differs at {decided - agree} of {decided} clear positions"


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_models_stay_close_to_f32(family, quant, converted, reference, tmp_path):
    ids, _ = reference(family)
    f32 = converted(family, "f32")
    out = quantize(f32, tmp_path / f"{quant}.gguf", quant)
    with LlamaCpp(f32) as lc:
        base = lc.logprobs(ids)
    with LlamaCpp(out) as lc:
        quantized = lc.logprobs(ids)
    kl = kl_divergence(base, quantized)
    assert 0 < kl <= KL_BOUND[quant], f"{family} {quant}: mean KL {kl:.4f} > {KL_BOUND[quant]}"
    assert out.stat().st_size < f32.stat().st_size / 3


def test_gguf_metadata_describes_each_family(converted):
    from convert_support import gguf_fields

    expected = {"llama": ("llama", "llama-bpe"), "qwen2": ("qwen2", "deepseek-r1-qwen"),
                "qwen3": ("qwen3", "qwen2"), "gemma3": ("gemma3", "default")}
    for family, (arch, pre) in expected.items():
        fields = gguf_fields(converted(family, "f16"), "general.architecture", "tokenizer.ggml.pre",
                             "general.file_type", "tokenizer.chat_template")
        assert fields["general.architecture"] == arch
        assert fields["tokenizer.ggml.pre"] == pre
        assert fields["general.file_type"] == 1  # MOSTLY_F16
        assert "{% for m in messages %}" in fields["tokenizer.chat_template"]
    gemma = gguf_fields(converted("gemma3", "f16"), "gemma3.attention.sliding_window",
                        "gemma3.attention.sliding_window_pattern", "gemma3.rope.freq_base_swa")
    assert gemma == {"gemma3.attention.sliding_window": 8, "gemma3.attention.sliding_window_pattern": [True, True, False],
                     "gemma3.rope.freq_base_swa": 10000.0}


@pytest.mark.parametrize("style", ["llama-bpe", "deepseek-r1-qwen", "qwen2", "smollm", "gpt-2", "sentencepiece"])
def test_tokenization_matches_transformers(style, tiny, converted):
    family = {"llama-bpe": "llama", "deepseek-r1-qwen": "qwen2", "qwen2": "qwen3", "sentencepiece": "gemma3"}.get(style)
    directory = tiny(family) if family else tiny("llama", style)
    gguf = converted(family, "f16") if family else converted("llama", "f16", style)
    tok = hf_tokenizer(directory)
    texts = [checkpoints.TOKENIZER_TEXT, "<|im_start|>user\n  hi <|im_end|>\n<think>x</think>",
             "<start_of_turn>user\n\n Hi there<end_of_turn>\n"]
    with LlamaCpp(gguf) as lc:
        for text in texts:
            for add_special in (False, True):
                assert lc.tokenize(text, add_special=add_special) == tok(text, add_special_tokens=add_special).input_ids
        assert lc.llama.llama_vocab_bos(lc.vocab) == tok.bos_token_id
        assert lc.llama.llama_vocab_eos(lc.vocab) == tok.eos_token_id


def test_the_test_text_tells_the_pretokenizers_apart():
    """One vocabulary under each pre-tokenizer gives a different tokenization of the test text,
    so a converter that named the wrong pre-tokenizer would fail the test above."""
    from tokenizers import Tokenizer

    base, _ = checkpoints.byte_level_tokenizer("gpt-2")
    results = set()
    for style in ("llama-bpe", "qwen2", "smollm", "gpt-2"):
        styled, _ = checkpoints.byte_level_tokenizer(style)
        tok = Tokenizer.from_str(base.to_str())
        tok.pre_tokenizer = styled.pre_tokenizer
        results.add(tuple(tok.encode(checkpoints.TOKENIZER_TEXT, add_special_tokens=False).ids))
    assert len(results) == 4


# -- negative controls: the bounds above catch real conversion mistakes ---------------------

@pytest.mark.parametrize("mistake", ["no q/k permutation", "no llama3 rope_freqs", "gemma norms without +1"])
def test_a_conversion_mistake_breaks_the_bounds(mistake, monkeypatch, tiny, reference, tmp_path):
    from edgesrm.convert.archs.gemma3 import Gemma3
    from edgesrm.convert.archs.llama import Llama

    family = "gemma3" if "gemma" in mistake else "llama"
    if mistake == "no q/k permutation":
        monkeypatch.setattr(Llama, "transform", lambda self, kind, name: (None, 1))
    elif mistake == "no llama3 rope_freqs":
        monkeypatch.setattr(Llama, "extra_tensors", lambda self: [])
    else:
        monkeypatch.setattr(Gemma3, "transform", lambda self, kind, name: (None, 1))
    out = convert(tiny(family), tmp_path / "wrong.gguf", outtype="f32", progress=False)
    ids, ref = reference(family)
    with LlamaCpp(out) as lc:
        ours = lc.logprobs(ids)
    diff, _, _ = compare(ours, restricted(ref, ours.shape[1]), F16_BOUND)
    assert diff > 10 * F16_BOUND
