"""The real-weights check: SmolLM2-135M-Instruct as a Hugging Face checkpoint, converted by edgesrm.

The checkpoint (bf16 safetensors, like the Hub's) is rebuilt from the embedded GGUF by
scripts/make_test_checkpoints.py and cached in ~/.cache/edgesrm/test-fixtures by content.

Bounds (measured on the machine that set them): f32 log-probs within 1e-3 of transformers
(7e-5 measured: bf16 widens to f32 exactly); f16 within 0.1 (0.04 measured); quantized
against f32, mean KL <= 0.03 for Q8_0 (0.010 measured) and <= 0.3 for Q4_K_M (0.13 measured).
"""

from __future__ import annotations

import pytest

from convert_support import (LlamaCpp, checkpoints, compare, edgesrm_cli, gguf_fields, hf_greedy, hf_logprobs,
                             hf_model, hf_tokenizer, kl_divergence)
from edgesrm.convert import convert, quantize
from edgesrm.engine import GREEDY, Engine, EngineConfig

BOUND = {"f32": 1e-3, "f16": 0.1}
KL_BOUND = {"Q8_0": 0.03, "Q4_K_M": 0.3}
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def smollm2():
    return checkpoints.smollm2_checkpoint(checkpoints.fixture_cache())


@pytest.fixture(scope="module")
def hf(smollm2):
    return hf_model(smollm2), hf_tokenizer(smollm2)


@pytest.fixture(scope="module")
def ggufs(smollm2, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    return {t: convert(smollm2, root / f"smollm2-{t}.gguf", outtype=t, progress=False) for t in ("f32", "f16")}


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_logprobs_match_transformers(outtype, hf, ggufs):
    model, tok = hf
    ids = tok(checkpoints.LOGITS_TEXT).input_ids[:32]
    ref = hf_logprobs(model, ids)
    with LlamaCpp(ggufs[outtype]) as lc:
        ours = lc.logprobs(ids)
    diff, decided, agree = compare(ours, ref, BOUND[outtype])
    assert diff <= BOUND[outtype]
    assert decided >= 28 and agree == decided


def test_greedy_continuation_matches_transformers(hf, ggufs):
    """Through edgesrm's own engine (its default settings), as a user would run the model."""
    model, tok = hf
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                      tokenize=False)
    ids = tok(prompt).input_ids
    expected, margins = hf_greedy(model, ids, 24, eos=tok.eos_token_id)
    with Engine(ggufs["f16"], EngineConfig(n_ctx=256, max_sequences=1, n_threads=1)) as eng:
        gen = eng.start(ids)
        seq = gen.add(GREEDY, max_tokens=24)
        gen.run()
        ours = seq.tokens + ([tok.eos_token_id] if seq.finish_reason == "eos" else [])
    # Identical, except after a near-tie (top-2 margin under the f16 bound) where rounding may pick either.
    for i, (a, b) in enumerate(zip(ours, expected)):
        if a != b:
            assert margins[i] < BOUND["f16"], f"greedy token {i} differs with a clear margin {margins[i]:.3f}"
            break
    else:
        assert len(ours) == len(expected)
    assert "Paris" in tok.decode(expected)


def test_tokenizer_matches_transformers_and_the_original_gguf(hf, ggufs):
    _, tok = hf
    with LlamaCpp(ggufs["f16"]) as lc:
        for add_special in (False, True):
            text = checkpoints.TOKENIZER_TEXT
            assert lc.tokenize(text, add_special=add_special) == tok(text, add_special_tokens=add_special).input_ids
    # The checkpoint was made from the shipped GGUF: the vocabulary must come back unchanged.
    from edgesrm.models import default_model_path

    keys = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token", "tokenizer.chat_template", "llama.rope.freq_base", "llama.block_count")
    assert gguf_fields(ggufs["f16"], *keys) == gguf_fields(default_model_path(), *keys)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_stays_close_to_f32(quant, hf, ggufs, tmp_path):
    _, tok = hf
    ids = tok(checkpoints.LOGITS_TEXT).input_ids[:32]
    out = quantize(ggufs["f32"], tmp_path / f"{quant}.gguf", quant)
    with LlamaCpp(ggufs["f32"]) as lc:
        base = lc.logprobs(ids)
    with LlamaCpp(out) as lc:
        kl = kl_divergence(base, lc.logprobs(ids))
    assert 0 < kl <= KL_BOUND[quant], f"{quant}: mean KL {kl:.4f}"


def test_convert_command_with_quant_gives_a_model_edgesrm_runs(smollm2, hf, tmp_path):
    out = tmp_path / "smollm2-q4_k_m.gguf"
    proc = edgesrm_cli("convert", str(smollm2), "-o", str(out), "--quant", "Q4_K_M")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no intermediate left behind
    assert gguf_fields(out, "general.file_type")["general.file_type"] == 15  # MOSTLY_Q4_K_M
    _, tok = hf
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     tokenize=False)
    with Engine(out, EngineConfig(n_ctx=256, max_sequences=1, n_threads=1)) as eng:
        gen = eng.start(eng.tokenize(prompt))
        seq = gen.add(GREEDY, max_tokens=12)
        gen.run()
    assert "Paris" in seq.text
