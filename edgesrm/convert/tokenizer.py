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
from collections.abc import Callable, Iterator
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
    if parsed is not None:
        _check_types(parsed, tokenizer_json)
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


def _check_types(tok: dict, path: Path) -> None:
    """The parts of tokenizer.json the converter reads have the JSON types tokenizers gives them."""
    def bad(what: str) -> EdgesrmError:
        return EdgesrmError(f"{path} is not a valid tokenizer definition: {what}")

    for key in ("normalizer", "pre_tokenizer", "decoder", "model"):
        if tok.get(key) is not None and not isinstance(tok[key], dict):
            raise bad(f'"{key}" is {json.dumps(tok[key])[:80]}, not an object')

    def check_sequence(node: dict | None, key: str, steps_key: str) -> None:
        if node is None or node.get("type") != "Sequence":
            return
        steps = node.get(steps_key)
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            raise bad(f'the {key} Sequence has "{steps_key}": {json.dumps(steps)[:80]}, not a list of objects')
        for step in steps:
            check_sequence(step, key, steps_key)

    check_sequence(tok.get("normalizer"), "normalizer", "normalizers")
    check_sequence(tok.get("pre_tokenizer"), "pre_tokenizer", "pretokenizers")
    merges = (tok.get("model") or {}).get("merges", [])
    if not isinstance(merges, list):
        raise bad(f'"model.merges" is {json.dumps(merges)[:80]}, not a list')
    added = tok.get("added_tokens", [])
    if not isinstance(added, list):
        raise bad(f'"added_tokens" is {json.dumps(added)[:80]}, not a list')
    for entry in added:
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("content"), str):
            raise bad(f"the added token {json.dumps(entry)[:120]} needs an integer id and a text content")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tokens_by_id(tok: dict, path: Path) -> tuple[dict[int, str], dict[int, dict]]:
    """The BPE vocabulary and the added tokens by id (the added ones replacing the vocabulary's),
    and the added tokens' entries by id."""
    vocab = tok["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise EdgesrmError(f"{path} has no BPE vocabulary")
    id_to_token: dict[int, str] = {}
    for text, i in vocab.items():
        if not _is_id(i):
            raise EdgesrmError(f"{path} gives the token {text!r} the id {i!r}, not a non-negative integer")
        if i in id_to_token:
            raise EdgesrmError(f"{path} gives the tokens {id_to_token[i]!r} and {text!r} the same id {i}")
        id_to_token[i] = text
    added: dict[int, dict] = {}
    for entry in tok.get("added_tokens", []):
        id_to_token[entry["id"]] = entry["content"]
        added[entry["id"]] = entry
    if not id_to_token:
        raise EdgesrmError(f"{path} has no tokens")
    return id_to_token, added


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

    id_to_token, added = _tokens_by_id(tok, directory / "tokenizer.json")
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


def _string_pattern(step: dict) -> Any:
    pattern = step.get("pattern")
    return pattern.get("String") if isinstance(pattern, dict) else None


def _replaces_spaces(step: dict) -> bool:
    return step.get("type") == "Replace" and _string_pattern(step) == " " and step.get("content") == SPACE


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
    ``Prepend("▁")``, or Metaspace's prepend_scheme), no split into words that a merge
    could otherwise cross, and merges that ``merge_scores`` can turn into scores (each joins
    two vocabulary tokens into one, and every two tokens that make a token are a merge).
    Anything else is an error naming what does not fit.
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
            if scheme not in ("first", "always", "never"):
                raise EdgesrmError(f"{where} has a Metaspace prepend_scheme {scheme!r}; "
                                   "tokenizers knows first, always and never")
            prefix = prefix or scheme in ("always", "first")
            split = split or bool(step.get("split", False))
        elif kind == "Split" and escaped and _string_pattern(step) == " ":
            continue  # Gemma's Split(" ") after Replace(" ", "▁"): no spaces are left to split on
        else:
            raise refuse(f"pre-tokenizer {json.dumps(step)[:200]}")
    if not escaped:
        raise refuse("it does not write spaces as ▁")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise EdgesrmError(f"{where} has no BPE vocabulary")
    pairs = _merge_pairs(model, where)
    for left, right in pairs:  # transformers refuses to load these too
        if left not in vocab or right not in vocab:
            raise EdgesrmError(f"{where} has a merge {left!r} + {right!r} of tokens its vocabulary does not have")
        if left + right not in vocab:
            raise EdgesrmError(f"{where} has a merge {left!r} + {right!r} into {left + right!r}, "
                               "which its vocabulary does not have")
    if split:
        # Metaspace(split=True) cuts the text before each ▁; llama.cpp does not cut it, which is the
        # same as long as no merge makes a token with a ▁ after its first character.
        crossing = [left + right for left, right in pairs if SPACE in (left + right)[1:]]
        if crossing:
            raise refuse(f"its pre-tokenizer splits words at ▁ but merges make tokens across words ({crossing[0]!r})")
    _check_every_split_is_a_merge(vocab, pairs, refuse)
    return prefix


def _splits(vocab: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every way of cutting a vocabulary token in two vocabulary tokens."""
    for text in vocab:
        for k in range(1, len(text)):
            if text[:k] in vocab and text[k:] in vocab:
                yield text[:k], text[k:]


def _check_every_split_is_a_merge(vocab: dict[str, Any], pairs: list[tuple[str, str]],
                                  refuse: Callable[[str], EdgesrmError]) -> None:
    """What ``merge_scores`` relies on: every two tokens that make a token are a merge, else
    llama.cpp joins them where the BPE does not. Every (checked) merge is such a split, so it
    holds when there are as many distinct merges as splits (counting them costs under a second
    for Gemma 3's 262,144 tokens; finding the missing one runs only when it fails)."""
    merges = set(pairs)
    if sum(1 for _ in _splits(vocab)) == len(merges):
        return
    left, right = next(split for split in _splits(vocab) if split not in merges)
    if not merges:
        raise refuse(f"it has no merges, but its vocabulary has tokens made of other tokens ({left + right!r}: "
                     "transformers never produces them, llama.cpp would)")
    raise refuse(f"{left!r} and {right!r} make its token {left + right!r} but are not one of its merges "
                 "(llama.cpp would join them, transformers does not)")


def _merge_pairs(model: dict, where: Path | str = "tokenizer.json") -> list[tuple[str, str]]:
    pairs = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            left, sep, right = merge.partition(" ")
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(part, str) for part in merge):
            left, sep, right = merge[0], " ", merge[1]
        else:
            sep = ""
        if not sep:
            raise EdgesrmError(f"{where} has a malformed merge: {merge!r}")
        pairs.append((left, right))
    return pairs


def merge_scores(model: dict) -> dict[str, float]:
    """SentencePiece scores under which llama.cpp's merging reproduces this BPE's merges.

    A BPE merges, among the adjacent pairs of the text, the one with the lowest rank in its
    merge list. llama.cpp's SentencePiece tokenizer merges the adjacent pair whose concatenation
    is the vocabulary token with the highest score (leftmost on ties, as the BPE). With
    score(token) = -(rank of the first merge that makes it), the pair the BPE picks is the one
    llama.cpp picks, provided every pair of tokens that concatenates to a token is itself a
    merge (``sentencepiece_style`` checks it): true of tokenizer.json files converted from
    SentencePiece models, whose merge lists hold every such pair, ranked by the result's SentencePiece score.
    """
    scores: dict[str, float] = {}
    for rank, (left, right) in enumerate(_merge_pairs(model)):
        scores.setdefault(left + right, -float(rank))
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
    id_to_token, added = _tokens_by_id(tok, path)
    scores_by_text = merge_scores(model)
    floor = -float(len(model.get("merges") or []) + 1)  # below every merge: for tokens no merge makes
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
