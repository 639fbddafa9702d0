"""The vocabulary part of a GGUF, read from a checkpoint's tokenizer files without transformers.

Two kinds, as llama.cpp implements them:
- byte-level BPE (``tokenizer.ggml.model = "gpt2"``) from ``tokenizer.json``: tokens, merges and
  the *pre-tokenizer name*. llama.cpp does not read the pre-tokenizer regex from the file; it
  picks a hard-coded one by name, so the name must describe exactly what tokenizer.json does.
  llama.cpp's own converter finds the name by hashing the Hugging Face tokenizer's output on a
  probe text (which needs transformers). We read the pre-tokenizer definition itself and
  match it against the definitions llama.cpp implements: same result, no transformers, and an
  unknown definition is an error instead of a silently wrong tokenizer.
- SentencePiece (``"llama"``) from ``tokenizer.model``, for families that ship one (Gemma,
  Llama 2 style models);
- SentencePiece (``"llama"``) from a *SentencePiece-style* ``tokenizer.json``: a BPE with byte
  fallback whose spaces become ``▁`` (Metaspace, or the normalizers Prepend/Replace), as Hugging
  Face converts SentencePiece models, for checkpoints that ship no tokenizer.model. llama.cpp's
  SentencePiece tokenizer merges the adjacent pair whose *result* has the highest score; a BPE
  merges the pair that comes first in its merge list. Scoring each token by minus the rank of
  the first merge that makes it turns one into the other (see ``merge_scores``).

Special tokens, add_bos/add_eos and the chat template come from gguf-py's ``SpecialVocab``,
which reads tokenizer_config.json, tokenizer.json's post-processor, chat_template.jinja and
config.json the way llama.cpp's converter does.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..errors import EdgesrmError
from .sentencepiece import read_model
from .source import read_json_object

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = (int(t) for t in (
    gguf.TokenType.NORMAL, gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL,
    gguf.TokenType.USER_DEFINED, gguf.TokenType.UNUSED, gguf.TokenType.BYTE,
))

# Split regexes of the pre-tokenizers we recognise, as they appear in tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Pre-tokenizer pipelines (as flattened steps) -> the name llama.cpp knows them by.
# ByteLevel(use_regex=True) applies GPT-2's regex itself.
KNOWN_PRETOKENIZERS: dict[tuple[str, ...], str] = {
    (f"Split:{LLAMA3_SPLIT}", "ByteLevel"): "llama-bpe",  # Llama 3, DeepSeek-R1-Distill-Llama
    (f"Split:{QWEN2_SPLIT}", "ByteLevel"): "qwen2",  # Qwen2/2.5/3, DeepSeek-R1-Distill-Qwen
    ("Digits:individual", "ByteLevel+regex"): "smollm",  # SmolLM, SmolLM2, StarCoder2
    ("ByteLevel+regex",): "gpt-2",
}
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"  # DeepSeek-R1 distills name their Qwen2 pre-tokenizer


@dataclass
class Vocab:
    """Everything ``tokenizer.*`` in a GGUF holds."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    add_space_prefix: bool = False
    special: gguf.SpecialVocab | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges:
            w.add_token_merges(self.merges)
        w.add_add_space_prefix(self.add_space_prefix)
        if self.special is not None:
            self.special.add_to_gguf(w, quiet=True)


def load_vocab(directory: Path, n_vocab: int | None, *, prefer_sentencepiece: bool = False) -> Vocab:
    """Read the tokenizer of the checkpoint in ``directory``.

    ``n_vocab`` is the embedding's row count: the token list is padded to it (padding rows
    of the embedding are real rows that tokens must exist for). ``None`` keeps the
    tokenizer's own size (the caller trims the embedding instead).
    """
    tokenizer_json = directory / "tokenizer.json"
    spm_file = directory / "tokenizer.model"
    parsed = _load_json(tokenizer_json) if tokenizer_json.is_file() else None
    byte_level = parsed is not None and _is_byte_level(parsed)

    if spm_file.is_file() and (prefer_sentencepiece or not byte_level):
        vocab = _sentencepiece_vocab(directory, spm_file, n_vocab)
    elif parsed is not None and byte_level:
        vocab = _bpe_vocab(directory, parsed, n_vocab)
    elif parsed is not None and escapes_spaces(parsed):
        vocab = _sentencepiece_style_vocab(directory, parsed, n_vocab)
    elif parsed is not None:
        kind = (parsed.get("model") or {}).get("type")
        raise EdgesrmError(
            f"{tokenizer_json} is a {kind} tokenizer that is neither byte-level BPE nor SentencePiece-style BPE "
            "(spaces as ▁), and there is no tokenizer.model: edgesrm converts byte-level and SentencePiece-style "
            "BPE tokenizers from tokenizer.json and SentencePiece from tokenizer.model"
        )
    else:
        raise EdgesrmError(f"no tokenizer in {directory}: expected tokenizer.json or tokenizer.model")
    del parsed
    vocab.special = _special_vocab(directory, len(vocab), default_add_bos=vocab.model == "llama")
    return vocab


def _load_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "a tokenizer definition")


def _steps(pre: dict | None) -> list[dict]:
    """A pre-tokenizer as a flat list of steps (``Sequence`` nodes expanded)."""
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def _is_byte_level(tok: dict) -> bool:
    return (any(s.get("type") == "ByteLevel" for s in _steps(tok.get("pre_tokenizer")))
            or (tok.get("decoder") or {}).get("type") == "ByteLevel")


def _signature(step: dict) -> str:
    kind = step.get("type")
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return "ByteLevel+prefix_space"
        return "ByteLevel+regex" if step.get("use_regex", True) else "ByteLevel"
    if kind == "Split":
        pattern = step.get("pattern") or {}
        if step.get("behavior") != "Isolated" or step.get("invert") or "Regex" not in pattern:
            return f"Split:{json.dumps(step, sort_keys=True)}"
        return f"Split:{pattern['Regex']}"
    if kind == "Digits":
        return "Digits:individual" if step.get("individual_digits") else "Digits:grouped"
    return json.dumps(step, sort_keys=True)


def pretokenizer_name(tok: dict) -> str:
    """The llama.cpp name of tokenizer.json's pre-tokenizer, or an error naming what it is."""
    signature = tuple(_signature(s) for s in _steps(tok.get("pre_tokenizer")))
    name = KNOWN_PRETOKENIZERS.get(signature)
    if name is None:
        shown = json.dumps(tok.get("pre_tokenizer"))
        raise EdgesrmError(
            f"tokenizer.json has a pre-tokenizer llama.cpp is not known to implement ({shown[:300]}); "
            f"edgesrm knows {', '.join(sorted(set(KNOWN_PRETOKENIZERS.values())))}"
        )
    if name == "qwen2" and any(t.get("content") == DEEPSEEK_BOS for t in tok.get("added_tokens", [])):
        name = "deepseek-r1-qwen"  # the same pre-tokenizer in llama.cpp, named after its source
    return name


def looks_special(token: str) -> bool:
    """Added tokens some checkpoints forget to mark special (``<|...|>``, DeepSeek's ``<｜...｜>``)."""
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def _bpe_vocab(directory: Path, tok: dict, n_vocab: int | None) -> Vocab:
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise EdgesrmError(f"{directory / 'tokenizer.json'} is not a BPE tokenizer (model type {model.get('type')!r})")
    pre = pretokenizer_name(tok)
    normalizer = tok.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":  # NFC leaves ordinary text unchanged
        logging.getLogger(__name__).warning("tokenizer.json normalizer %s is ignored", normalizer.get("type"))

    id_to_token: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added: dict[int, dict] = {}
    for entry in tok.get("added_tokens", []):
        id_to_token[entry["id"]] = entry["content"]
        added[entry["id"]] = entry
    size = _vocab_size(directory, max(id_to_token) + 1, n_vocab)

    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        text = id_to_token.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(text)
            types.append(CONTROL if added[i].get("special") or looks_special(text) else USER_DEFINED)
        else:
            tokens.append(text)
            types.append(NORMAL)

    merges = []
    for merge in model.get("merges", []):
        if isinstance(merge, str):
            merges.append(merge)
        elif isinstance(merge, list) and len(merge) == 2 and " " not in merge[0] and " " not in merge[1]:
            merges.append(f"{merge[0]} {merge[1]}")
        else:
            raise EdgesrmError(f"tokenizer.json has a merge llama.cpp cannot store: {merge!r}")
    return Vocab(model="gpt2", pre=pre, tokens=tokens, types=types, merges=merges)


def _sentencepiece_vocab(directory: Path, path: Path, n_vocab: int | None) -> Vocab:
    spm = read_model(path)
    if spm.model_type != "bpe":
        raise EdgesrmError(f"{path} is a SentencePiece {spm.model_type} model; llama.cpp's SentencePiece "
                           "tokenizer reproduces BPE models only")
    tokens, scores, types = list(spm.pieces), list(spm.scores), list(spm.types)

    # Tokens added on top of the SentencePiece model (chat markers...), as transformers adds them.
    extra: dict[int, tuple[str, bool]] = {}
    added_file = directory / "added_tokens.json"
    if added_file.is_file():
        for text, i in _load_json(added_file).items():
            extra[int(i)] = (text, False)
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        for i, entry in (_load_json(config_file).get("added_tokens_decoder") or {}).items():
            extra[int(i)] = (entry["content"], bool(entry.get("special")))
    size = _vocab_size(directory, max([len(tokens) - 1, *extra]) + 1, n_vocab)
    while len(tokens) < size:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    for i, (text, special) in extra.items():
        if special or looks_special(text):
            types[i] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp matches user-defined tokens on raw text
            types[i] = USER_DEFINED
        tokens[i] = text
        scores[i] = -1000.0
    return Vocab(model="llama", pre="default", tokens=tokens, types=types, scores=scores,
                 add_space_prefix=spm.add_dummy_prefix)


SPACE = "\u2581"  # ▁, SentencePiece's visible space
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")  # as both llama.cpp and tokenizers' byte fallback spell them


def _normalizers(tok: dict) -> list[dict]:
    node = tok.get("normalizer")
    if not node:
        return []
    return list(node.get("normalizers", [])) if node.get("type") == "Sequence" else [node]


def _replaces_spaces(step: dict) -> bool:
    return (step.get("type") == "Replace" and (step.get("pattern") or {}).get("String") == " "
            and step.get("content") == SPACE)


def escapes_spaces(tok: dict) -> bool:
    """Whether tokenizer.json writes spaces as ▁ the way SentencePiece does (Metaspace or Replace)."""
    return (any(_replaces_spaces(n) for n in _normalizers(tok))
            or any(s.get("type") == "Metaspace" for s in _steps(tok.get("pre_tokenizer"))))


def sentencepiece_style(tok: dict, where: Path) -> bool:
    """Check that llama.cpp's SentencePiece tokenizer can reproduce this tokenizer.json; return
    ``add_space_prefix`` (whether a ▁ is put before the text).

    llama.cpp escapes spaces as ▁, optionally prepends one, and runs the merges over the whole
    text between special tokens, falling back to ``<0xNN>`` tokens for characters it has no
    token for. So: a plain BPE with byte fallback, spaces replaced by ▁ (the normalizer
    ``Replace(" ", "▁")``, or Metaspace), optionally a prepended ▁ (the normalizer
    ``Prepend("▁")``, or Metaspace's prepend_scheme), and no split into words that a merge
    could otherwise cross. Anything else is an error naming what does not fit.
    """
    model = tok.get("model") or {}

    def refuse(why: str) -> EdgesrmError:
        return EdgesrmError(f"{where} is a SentencePiece-style tokenizer that llama.cpp cannot reproduce: {why}")

    if model.get("type") != "BPE":
        raise refuse(f"its model is {model.get('type')!r}, not BPE (llama.cpp's SentencePiece tokenizer is a BPE)")
    if not model.get("byte_fallback"):
        raise refuse("it has no byte fallback (llama.cpp always falls back to <0xNN> tokens, "
                     "transformers would give <unk>)")
    if model.get("ignore_merges") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise refuse("its BPE uses ignore_merges, a subword prefix or an end-of-word suffix")
    if model.get("dropout"):
        raise refuse("its BPE has dropout, so transformers' tokenization is random")

    prefix = escaped = False
    for step in _normalizers(tok):
        if step.get("type") == "Prepend" and step.get("prepend") == SPACE:
            prefix = True
        elif _replaces_spaces(step):
            escaped = True
        elif step.get("type") != "NFC":  # NFC leaves ordinary text unchanged
            raise refuse(f"normalizer {json.dumps(step)[:200]}")
    split = False
    for step in _steps(tok.get("pre_tokenizer")):
        kind = step.get("type")
        if kind == "Metaspace" and step.get("replacement", SPACE) == SPACE:
            escaped = True
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            prefix = prefix or scheme in ("always", "first")
            split = split or bool(step.get("split", False))
        elif kind == "Split" and escaped and (step.get("pattern") or {}).get("String") == " ":
            continue  # Gemma's Split(" ") after Replace(" ", "▁"): no spaces are left to split on
        else:
            raise refuse(f"pre-tokenizer {json.dumps(step)[:200]}")
    if not escaped:
        raise refuse("it does not write spaces as ▁")
    if split:
        # Metaspace(split=True) cuts the text before each ▁; llama.cpp does not cut it, which is the
        # same as long as no merge makes a token with a ▁ after its first character.
        crossing = [t for t in _merge_results(model) if SPACE in t[1:]]
        if crossing:
            raise refuse(f"its pre-tokenizer splits words at ▁ but merges make tokens across words ({crossing[0]!r})")
    return prefix


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for merge in model.get("merges", []):
        if isinstance(merge, str):
            left, sep, right = merge.partition(" ")
        elif isinstance(merge, list) and len(merge) == 2:
            left, sep, right = merge[0], " ", merge[1]
        else:
            sep = ""
        if not sep:
            raise EdgesrmError(f"tokenizer.json has a malformed merge: {merge!r}")
        pairs.append((left, right))
    return pairs


def _merge_results(model: dict) -> list[str]:
    return [left + right for left, right in _merge_pairs(model)]


def merge_scores(model: dict) -> dict[str, float]:
    """SentencePiece scores under which llama.cpp's merging reproduces this BPE's merges.

    A BPE merges, among the adjacent pairs of the text, the one with the lowest rank in its
    merge list. llama.cpp's SentencePiece tokenizer merges the adjacent pair whose concatenation
    is the vocabulary token with the highest score (leftmost on ties, as the BPE). With
    score(token) = -(rank of the first merge that makes it), the pair the BPE picks is the one
    llama.cpp picks, provided every pair of tokens that concatenates to a token is itself a
    merge: true of tokenizer.json files converted from SentencePiece models, whose merge lists
    hold every such pair, ranked by the result's SentencePiece score.
    """
    scores: dict[str, float] = {}
    for rank, text in enumerate(_merge_results(model)):
        scores.setdefault(text, -float(rank))
    return scores


def _sentencepiece_style_vocab(directory: Path, tok: dict, n_vocab: int | None) -> Vocab:
    path = directory / "tokenizer.json"
    add_space_prefix = sentencepiece_style(tok, path)
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():  # transformers' Llama tokenizer and llama.cpp's converter read this too
        explicit = _load_json(config_file).get("add_prefix_space")
        if isinstance(explicit, bool):
            add_space_prefix = explicit
    model = tok["model"]
    if not isinstance(model.get("vocab"), dict):
        raise EdgesrmError(f"{path} has no BPE vocabulary")
    scores_by_text = merge_scores(model)
    floor = -float(len(model.get("merges") or []) + 1)  # below every merge: for tokens no merge makes

    id_to_token: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added: dict[int, dict] = {}
    for entry in tok.get("added_tokens", []):
        id_to_token[entry["id"]] = entry["content"]
        added[entry["id"]] = entry
    size = _vocab_size(directory, max(id_to_token) + 1, n_vocab)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in model["vocab"]]
    if missing:
        more = f" nor {len(missing) - 1} other byte tokens" if len(missing) > 1 else ""
        raise EdgesrmError(f"{path} has byte fallback but no token {missing[0]}{more}; "
                           "llama.cpp needs all 256 byte tokens <0x00>..<0xFF>")
    unk = model.get("unk_token")

    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(size):
        text = id_to_token.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            scores.append(floor)
            continue
        if i in added:
            if added[i].get("special") or looks_special(text):
                kind = CONTROL
            else:
                kind = USER_DEFINED
                text = text.replace(SPACE, " ")  # llama.cpp matches user-defined tokens on raw text
        elif text == unk:
            kind = UNKNOWN
        elif BYTE_TOKEN.fullmatch(text):
            kind = BYTE
        else:
            kind = NORMAL
        tokens.append(text)
        types.append(kind)
        scores.append(scores_by_text.get(text, floor) if kind == NORMAL else floor)
    return Vocab(model="llama", pre="default", tokens=tokens, types=types, scores=scores,
                 add_space_prefix=add_space_prefix)


def _vocab_size(directory: Path, needed: int, n_vocab: int | None) -> int:
    if n_vocab is None:
        return needed
    if needed > n_vocab:
        raise EdgesrmError(
            f"the tokenizer in {directory} has {needed:,} tokens but the model's vocab_size is {n_vocab:,}"
        )
    return n_vocab


def _special_vocab(directory: Path, n_tokens: int, *, default_add_bos: bool) -> gguf.SpecialVocab:
    # gguf-py warns about template details it does not model (Llama 3's pair template, a
    # mask token absent from the vocabulary); they do not affect the GGUF, so keep them quiet.
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(directory, load_merges=False, n_vocab=n_tokens)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgesrmError(f"cannot read the special tokens in {directory}: {exc}") from None
    finally:
        log.setLevel(level)
    # Say it explicitly either way: llama.cpp's defaults differ between tokenizer kinds.
    special.add_special_token.setdefault("bos", default_add_bos)
    special.add_special_token.setdefault("eos", False)
    return special
