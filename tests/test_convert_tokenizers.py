"""Every tokenizer form of the supported families, converted and checked against transformers.

A SentencePiece-style tokenizer.json (a BPE with byte fallback whose spaces are ▁, as
transformers converts SentencePiece models) with no tokenizer.model beside it, for Llama 2
style models (a ▁ before the text) and Gemma 3 (none): the GGUF gets llama.cpp's SentencePiece
vocabulary, with scores derived from the merge ranks. Each tiny checkpoint's tokenizer is a
SentencePiece BPE trained on the test corpus and converted by transformers (as the Hub's
tokenizer.json files were), with a few hundred merges, so the merge order decides the tokens.

Also the language model of a Gemma3ForConditionalGeneration (Gemma 3 4B and up).

One divergence is pinned rather than hidden: for Llama 2 style tokenizers, llama.cpp (like
SentencePiece itself) puts a ▁ before text that starts with a space and after every special
token; transformers 5 builds a Llama tokenizer with Metaspace(prepend_scheme="first"), which does
neither. No GGUF setting expresses that, for tokenizer.model and tokenizer.json alike; the tests
check that llama.cpp then agrees with SentencePiece, and with transformers wherever the
tokenizer.json itself says to prepend (the normalizer form of Llama 2's original tokenizer.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from convert_support import (LlamaCpp, checkpoints, compare, edgesrm_cli, gguf_fields, hf_logprobs, hf_model,
                             hf_tokenizer, log_softmax)
from edgesrm.convert import convert
from edgesrm.errors import EdgesrmError

# Texts llama.cpp and transformers must tokenize alike, besides the converter's test text.
TEXTS = [
    checkpoints.TOKENIZER_TEXT, checkpoints.LOGITS_TEXT, "", "Hello world", "multiple   spaces  inside  ",
    "\n\nnew\nlines\n\n", "tab\tseparated\t", "byte fallback: ©®Œ ƒ∑ 🐉🧬 𝔘𝔫𝔦 ﷺ", "trailing space ",
]
LEADING_SPACE = [" ", "  two leading spaces", " one"]
AFTER_SPECIAL = {"llama": ["Hi</s> after a special token", "<s>[INST] hi [/INST]"],
                 "gemma3": ["<start_of_turn>user\n  Hi<end_of_turn>\n", "<s>text after bos</s> and eos"]}
# (family, tokenizer style) of each checkpoint these tests make.
FORMS = {"llama2-json": "llama", "llama2-spm": "llama", "sentencepiece-json": "gemma3"}
BOUND = {"llama": 1e-3, "gemma3": 5e-3}  # f32, as in test_convert_models.py


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """ckpt(style): a one-layer tiny checkpoint with that tokenizer; ckpt("multimodal"): a
    Gemma3ForConditionalGeneration. Made once per session."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tokenizer-checkpoints")

    def make(style: str) -> Path:
        if style not in made:
            if style == "multimodal":
                made[style] = checkpoints.tiny_checkpoint(root / style, "gemma3", multimodal=True)
            else:
                made[style] = checkpoints.tiny_checkpoint(root / style, FORMS[style], style=style, num_hidden_layers=1)
        return made[style]

    return make


@pytest.fixture(scope="session")
def gguf(ckpt, tmp_path_factory):
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tokenizer-gguf")

    def make(style: str) -> Path:
        if style not in made:
            made[style] = convert(ckpt(style), root / f"{style}.gguf", outtype="f32", progress=False)
        return made[style]

    return make


def mismatches(lc: LlamaCpp, tok, texts: list[str]) -> list[tuple[str, bool]]:
    """(text, add_special) where llama.cpp's tokens differ from transformers'."""
    return [(text, add) for text in texts for add in (False, True)
            if lc.tokenize(text, add_special=add) != tok(text, add_special_tokens=add).input_ids]


@pytest.mark.parametrize("style", ["llama2-json", "sentencepiece-json"])
def test_sentencepiece_style_tokenizer_json_tokenizes_like_transformers(style, ckpt, gguf):
    directory = ckpt(style)
    assert not (directory / "tokenizer.model").exists()
    family = FORMS[style]
    fields = gguf_fields(gguf(style), "tokenizer.ggml.model", "tokenizer.ggml.add_space_prefix",
                         "tokenizer.ggml.add_bos_token")
    assert fields == {"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_space_prefix": family == "llama",
                      "tokenizer.ggml.add_bos_token": True}
    tok = hf_tokenizer(directory)
    texts = TEXTS if family == "llama" else TEXTS + LEADING_SPACE + AFTER_SPECIAL[family]
    with LlamaCpp(gguf(style)) as lc:
        assert mismatches(lc, tok, texts) == []
        assert len(lc.tokenize(checkpoints.TOKENIZER_TEXT, add_special=False)) < 0.5 * len(checkpoints.TOKENIZER_TEXT)
        assert lc.llama.llama_vocab_bos(lc.vocab) == tok.bos_token_id
        assert lc.llama.llama_vocab_eos(lc.vocab) == tok.eos_token_id


def test_llama2_tokenizer_json_tokenizes_like_its_tokenizer_model(ckpt, gguf):
    """The GGUF from tokenizer.json and the one from tokenizer.model tokenize alike everywhere,
    leading spaces and text after special tokens included; there, both follow SentencePiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ckpt("llama2-spm") / "tokenizer.model"))
    with LlamaCpp(gguf("llama2-json")) as from_json, LlamaCpp(gguf("llama2-spm")) as from_model:
        for text in TEXTS + LEADING_SPACE + AFTER_SPECIAL["llama"]:
            for add in (False, True):
                assert from_json.tokenize(text, add_special=add) == from_model.tokenize(text, add_special=add), text
        for text in TEXTS + LEADING_SPACE:
            assert from_json.tokenize(text, add_special=False) == sp.encode(text), text
        tok = hf_tokenizer(ckpt("llama2-spm"))  # transformers, where it reads tokenizer.model's checkpoint
        assert mismatches(from_model, tok, TEXTS) == []


def test_llama2_normalizer_form_matches_transformers_everywhere(ckpt, tmp_path):
    """Llama 2's original tokenizer.json prepends ▁ with a normalizer (Prepend, then Replace),
    which transformers applies to each piece between special tokens, as llama.cpp does: loaded
    as written (PreTrainedTokenizerFast), it agrees on leading spaces and after specials too."""
    directory = tmp_path / "llama2-normalizer"
    shutil.copytree(ckpt("llama2-json"), directory)
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["pre_tokenizer"] = None
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 keeps the file's pipeline
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    out = convert(directory, tmp_path / "out.gguf", outtype="f16", progress=False)
    tok = hf_tokenizer(directory)
    assert "".join(tok.tokenize(" one")).startswith("▁▁")  # the file's pipeline, not Metaspace's
    with LlamaCpp(out) as lc:
        assert mismatches(lc, tok, TEXTS + LEADING_SPACE + AFTER_SPECIAL["llama"]) == []


@pytest.mark.parametrize("style", ["llama2-json", "sentencepiece-json"])
def test_next_token_logprobs_match_transformers(style, ckpt, gguf):
    directory = ckpt(style)
    ids = hf_tokenizer(directory)(checkpoints.LOGITS_TEXT).input_ids[:32]
    assert len(ids) == 32
    ref = hf_logprobs(hf_model(directory), ids)
    with LlamaCpp(gguf(style)) as lc:
        assert lc.tokenize(checkpoints.LOGITS_TEXT, add_special=True)[:32] == ids
        ours = lc.logprobs(ids)
    ref = log_softmax(ref[:, :ours.shape[1]])  # Gemma's embedding rows beyond the tokenizer are dropped
    bound = BOUND[FORMS[style]]
    diff, decided, agree = compare(ours, ref, bound)
    assert diff <= bound, f"{style}: max |log-prob difference| {diff:.2e} > {bound}"
    assert decided >= 24 and agree == decided, (decided, agree)


@pytest.mark.parametrize("wrong", ["every score equal", "reversed ranks"])
@pytest.mark.parametrize("style", ["llama2-json", "sentencepiece-json"])
def test_wrong_scores_break_the_tokenization(style, wrong, ckpt, monkeypatch, tmp_path):
    """Negative control: the scores decide llama.cpp's merge order. Equal scores (what llama.cpp's
    own LlamaHfVocab writes) merge left to right; reversed ones merge the rarest pairs first."""
    from edgesrm.convert import tokenizer

    right = tokenizer.merge_scores
    if wrong == "every score equal":
        monkeypatch.setattr(tokenizer, "merge_scores", lambda model: {t: -1000.0 for t in right(model)})
    else:
        monkeypatch.setattr(tokenizer, "merge_scores", lambda model: {t: -s for t, s in right(model).items()})
    out = convert(ckpt(style), tmp_path / "wrong.gguf", outtype="f16", progress=False)
    tok = hf_tokenizer(ckpt(style))
    with LlamaCpp(out) as lc:
        assert mismatches(lc, tok, [checkpoints.TOKENIZER_TEXT])


def test_gemma3_conditional_generation_converts_the_language_model(ckpt, tmp_path):
    """The CLI converts the text model, says in one line that the vision tower was left out, and
    the GGUF's next-token log-probs match transformers' Gemma3ForConditionalGeneration on text."""
    import torch
    from safetensors import safe_open
    from transformers import Gemma3ForConditionalGeneration

    directory = ckpt("multimodal")
    with safe_open(directory / "model.safetensors", "np") as f:
        names = list(f.keys())
    n_vision = sum(n.startswith("vision_tower.") for n in names)
    n_projector = sum(n.startswith("multi_modal_projector.") for n in names)
    assert n_vision > 10 and n_projector == 2 and any(n.startswith("language_model.model.") for n in names)

    out = tmp_path / "gemma3-text.gguf"
    proc = edgesrm_cli("convert", str(directory), "-o", str(out), "--outtype", "f32", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "left out" in line]
    assert notes == [f"note: Gemma3ForConditionalGeneration: converted the language model only; left out the "
                     f"vision tower ({n_vision} tensors) and the multimodal projector ({n_projector} tensors) "
                     "(llama.cpp reads images through a separate mmproj file)"]
    assert gguf_fields(out, "general.architecture")["general.architecture"] == "gemma3"

    torch.set_num_threads(1)
    model = Gemma3ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    tok = hf_tokenizer(directory)
    ids = tok(checkpoints.LOGITS_TEXT).input_ids[:32]
    ref = hf_logprobs(model, ids)
    with LlamaCpp(out) as lc:
        assert lc.tokenize(checkpoints.TOKENIZER_TEXT, add_special=True) == tok(checkpoints.TOKENIZER_TEXT).input_ids
        ours = lc.logprobs(ids)
    ref = log_softmax(ref[:, :ours.shape[1]])
    assert (ref.max(-1) - ref.min(-1)).mean() > 3.0
    diff, decided, agree = compare(ours, ref, BOUND["gemma3"])
    assert diff <= BOUND["gemma3"], diff
    assert decided >= 24 and agree == decided, (decided, agree)


def test_gemma3_conditional_generation_in_transformers_4_layout(ckpt, tmp_path):
    """transformers 4.5x saved model.language_model.*, model.vision_tower.*, lm_head: the same GGUF."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "v4-layout"
    shutil.copytree(ckpt("multimodal"), directory)
    weights = load_file(directory / "model.safetensors")
    renamed = {}
    for name, value in weights.items():
        for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector.")):
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = value
    save_file(renamed, directory / "model.safetensors")
    notes: list[str] = []
    a = convert(ckpt("multimodal"), tmp_path / "a.gguf", outtype="f32", progress=False, note=lambda _: None)
    b = convert(directory, tmp_path / "b.gguf", outtype="f32", progress=False, note=notes.append)
    assert len(notes) == 1 and "vision tower" in notes[0]
    ta = {t.name: np.asarray(t.data) for t in GGUFReader(a).tensors}
    tb = {t.name: np.asarray(t.data) for t in GGUFReader(b).tensors}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


# -- what cannot be reproduced is refused, with the reason ------------------------------------

@pytest.mark.parametrize("change, fragment", [
    ({"model.byte_fallback": False}, "no byte fallback"),
    ({"model.dropout": 0.1}, "dropout"),
    ({"normalizer": {"type": "Lowercase"}}, "normalizer"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}},
     "splits words at ▁"),
    ({"model.vocab.<0x41>": None}, "<0x41>"),
])
def test_unreproducible_sentencepiece_style_tokenizers_are_refused(change, fragment, ckpt, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(ckpt("llama2-json"), directory)
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in change.items():
        target = data
        parts = key.split(".", 2) if key.startswith("model.vocab.") else key.split(".")
        for part in parts[:-1]:
            target = target[part]
        if value is None:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(EdgesrmError, match="tokenizer.json") as err:
        convert(directory, tmp_path / "out.gguf", progress=False)
    assert fragment in str(err.value)
    assert not (tmp_path / "out.gguf").exists()


def edited_copy(src: Path, directory: Path, name: str, edit) -> Path:
    """``src`` with its JSON file ``name`` changed by ``edit`` (the other files linked, not copied)."""
    directory.mkdir()
    for f in src.iterdir():
        if f.name != name:
            (directory / f.name).symlink_to(f)
    data = json.loads((src / name).read_text(encoding="utf-8"))
    edit(data)
    (directory / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return directory


def first_merge(tok: dict) -> tuple[str, str]:
    left, right = tok["model"]["merges"][0]
    return left, right


def set_id(offset):
    """The vocabulary id of the first merge's result, changed from that token's id ``i`` to ``offset(i, tok)``."""
    def edit(tok):
        token = "".join(first_merge(tok))
        tok["model"]["vocab"][token] = offset(tok["model"]["vocab"][token], tok)
    return edit


def set_key(path: str, value):
    def edit(tok):
        *parents, last = path.split(".")
        target = tok
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


# tokenizer.json edits, each one error: malformed values (A), and values transformers loads or
# rejects but llama.cpp's SentencePiece tokenizer cannot reproduce (B).
MALFORMED_TOKENIZERS = {
    "normalizer is a string": (set_key("normalizer", "NFC"), '"normalizer" is "NFC", not an object'),
    "normalizer Sequence of null": (set_key("normalizer", {"type": "Sequence", "normalizers": None}),
                                    '"normalizers": null, not a list of objects'),
    "normalizer Sequence of strings": (set_key("normalizer", {"type": "Sequence", "normalizers": ["NFC"]}),
                                       "not a list of objects"),
    "normalizer Sequence of a dict": (set_key("normalizer", {"type": "Sequence", "normalizers": {"a": 1}}),
                                      "not a list of objects"),
    "pre_tokenizer is a string": (set_key("pre_tokenizer", "Metaspace"), '"pre_tokenizer" is "Metaspace"'),
    "pre_tokenizer Sequence of null": (set_key("pre_tokenizer", {"type": "Sequence", "pretokenizers": None}),
                                       '"pretokenizers": null'),
    "merges null": (set_key("model.merges", None), '"model.merges" is null, not a list'),
    "vocabulary ids are strings": (lambda tok: tok["model"].update(vocab={t: str(i) for t, i in
                                                                          tok["model"]["vocab"].items()}),
                                   "the id '0', not a non-negative integer"),
    "added token without id": (lambda tok: tok["added_tokens"].append({"content": "<x>", "special": True}),
                               "needs an integer id"),
    "added token with a string id": (lambda tok: tok["added_tokens"].append({"id": "5", "content": "<x>"}),
                                     "needs an integer id"),
    "added token with a null id": (lambda tok: tok["added_tokens"].append({"id": None, "content": "<x>"}),
                                   "needs an integer id"),
    "added token with a dict id": (lambda tok: tok["added_tokens"].append({"id": {}, "content": "<x>"}),
                                   "needs an integer id"),
    "no merges": (set_key("model.merges", []), "it has no merges, but its vocabulary has tokens made of other tokens"),
    "merges key missing": (set_key("model.merges", KeyError), "it has no merges"),
    "float id": (set_id(lambda i, tok: i + 0.5), ".5, not a non-negative integer"),
    "duplicate id": (set_id(lambda i, tok: tok["model"]["vocab"]["<0x41>"]), "the same id"),
    "negative id": (set_id(lambda i, tok: -5), "the id -5, not a non-negative integer"),
    "merged token missing from the vocabulary": (lambda tok: tok["model"]["vocab"].pop("".join(first_merge(tok))),
                                                 "which its vocabulary does not have"),
    "merge of unknown tokens": (lambda tok: tok["model"]["merges"].insert(0, "qqq rrr"),
                                "merge 'qqq' + 'rrr' of tokens its vocabulary does not have"),
    "a split of a token that is not a merge": (lambda tok: tok["model"]["merges"].pop(0), "are not one of its merges"),
    "unknown prepend_scheme": (set_key("pre_tokenizer.prepend_scheme", "sometimes"),
                               "prepend_scheme 'sometimes'; tokenizers knows first, always and never"),
}


@pytest.mark.parametrize("case", MALFORMED_TOKENIZERS)
def test_malformed_or_unreproducible_tokenizer_json_is_one_error(case, ckpt, tmp_path):
    edit, fragment = MALFORMED_TOKENIZERS[case]
    directory = edited_copy(ckpt("llama2-json"), tmp_path / "ckpt", "tokenizer.json", edit)
    with pytest.raises(EdgesrmError) as err:
        convert(directory, tmp_path / "out.gguf", progress=False)
    message = str(err.value)
    assert "tokenizer.json" in message and fragment in message and "\n" not in message, message
    assert not (tmp_path / "out.gguf").exists()


# Gemma3ForConditionalGeneration text_config values of the wrong type: one error naming the key.
MALFORMED_TEXT_CONFIGS = {
    "query_pre_attn_scalar string": ({"query_pre_attn_scalar": "64"}, "query_pre_attn_scalar is '64', not a number"),
    "query_pre_attn_scalar null": ({"query_pre_attn_scalar": None}, "it has no 'query_pre_attn_scalar'"),
    "layer_types integer": ({"layer_types": 3}, "layer_types is 3, not a list of"),
    "layer_types unknown": ({"layer_types": ["foo", "bar", "baz"]},
                            "not a list of full_attention or sliding_attention"),
    "rope_parameters string": ({"rope_parameters": "default"}, "rope_parameters is 'default', not an object"),
    "rope_parameters.sliding_attention string": (
        {"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": "x"}},
        "rope_parameters.sliding_attention is 'x', not an object"),
    "rope_theta string": ({"rope_parameters": {"full_attention": {"rope_theta": "big"}, "sliding_attention": {}}},
                          "rope_parameters.full_attention.rope_theta is 'big', not a number"),
    "rms_norm_eps string": ({"rms_norm_eps": "abc"}, "rms_norm_eps is 'abc', not a number"),
    "final_logit_softcapping string": ({"final_logit_softcapping": "abc"},
                                       "final_logit_softcapping is 'abc', not a number"),
    "tie_word_embeddings string": ({"tie_word_embeddings": "false"},
                                   "tie_word_embeddings is 'false', not true or false"),
}


@pytest.mark.parametrize("case", MALFORMED_TEXT_CONFIGS)
def test_malformed_gemma3_text_config_is_one_error(case, ckpt, tmp_path):
    change, fragment = MALFORMED_TEXT_CONFIGS[case]
    directory = edited_copy(ckpt("multimodal"), tmp_path / "ckpt", "config.json",
                            lambda config: config["text_config"].update(change))
    with pytest.raises(EdgesrmError) as err:
        convert(directory, tmp_path / "out.gguf", progress=False)
    message = str(err.value)
    assert "config.json" in message and fragment in message and "\n" not in message, message
    assert not (tmp_path / "out.gguf").exists()


# -- Gemma 3's real vocabulary -----------------------------------------------------------------

REAL_GEMMA3_SIZE = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32)


def test_gemma3_real_vocabulary_from_tokenizer_json(tmp_path):
    """Gemma 3's own 262,144-token vocabulary as a tokenizer.json only (transformers rebuilds it
    from google/gemma-3-270m's GGUF header): the converted GGUF tokenizes like transformers, and
    like llama.cpp with the real header, i.e. the vocabulary llama.cpp's converter made from
    Gemma's tokenizer.model with its true SentencePiece scores."""
    from tiny_models import real_header_path, tiny_model_from_header

    header = real_header_path("gemma3")  # skips when the package is not installed
    directory = checkpoints.tiny_checkpoint(tmp_path / "ckpt", "gemma3", style="gemma3-real-json", **REAL_GEMMA3_SIZE)
    assert not (directory / "tokenizer.model").exists()
    out = convert(directory, tmp_path / "ours.gguf", outtype="f16", progress=False)
    real = tiny_model_from_header(header, tmp_path / "real.gguf")
    tok = hf_tokenizer(directory)
    texts = TEXTS + LEADING_SPACE + AFTER_SPECIAL["gemma3"] + sorted(set(checkpoints.CORPUS))
    with LlamaCpp(out) as ours, LlamaCpp(real) as official:
        assert ours.n_vocab == official.n_vocab == 262_144
        assert mismatches(ours, tok, texts) == []
        for text in texts:
            assert ours.tokenize(text, add_special=True) == official.tokenize(text, add_special=True), text
