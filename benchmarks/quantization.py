"""Quantization tuned to reasoning: importance matrices from reasoning traces against none and
against generic text, by KL divergence from the reference, on the evaluation model.

The evaluation model exists here only as Q4_K_M, so the reference is its dequantization to f16
(``edgesrm quantize --quant F16 --allow-requantize``): every KL below is *relative to that
reference*, not to the original bf16 weights. Steps, each cached in ``--work`` so that a rerun
resumes:

1. ``reference``: the f16 file.
2. ``traces``: the Q4_K_M model's chains of thought (``cot``, 384 tokens) on GSM8K **train**
   questions (``edgesrm.imatrix.train_questions``; calibration) and on GSM8K **test** questions
   (``--test-traces``; only for measuring KL), decoded 8 at a time.
3. ``generic``: text on non-reasoning prompts (short stories, descriptions, letters) written by
   ``--generic-model`` (default: the embedded SmolLM2-135M: 96 replies, 154 kB, in 11 minutes
   here, where the evaluation model took 17 for 48), cut to the same token count as the reasoning
   calibration text. Like the wiki text llama.cpp users calibrate on, it is not the evaluated
   model's own text.
4. ``imatrix``: two importance matrices of the f16 reference, one per calibration text (same
   token count).
5. For each of ``--types`` (default Q3_K_S, IQ3_XXS, Q2_K): quantize the reference without an
   imatrix (when the type allows it), with the reasoning matrix and with the generic matrix;
   KL (mean, p99), top-1 and perplexity against the reference on the test traces.

Results go to ``--out`` (JSON) and a markdown table is printed, with the target ratio: mean KL
with the reasoning imatrix / without <= 0.7.

    python benchmarks/quantization.py                       # about an hour on 2 cores
    python benchmarks/quantization.py --train-traces 8 --test-traces 2 --types Q2_K   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reasoning import eval_model  # noqa: E402

from edgesrm import imatrix as imx  # noqa: E402
from edgesrm.convert import quantize  # noqa: E402
from edgesrm.engine.backend import token_piece  # noqa: E402
from edgesrm.engine.scoring import Scorer  # noqa: E402
from edgesrm.models import resolve_model  # noqa: E402
from edgesrm.quality import compare_many, test_questions  # noqa: E402

GENERIC_PROMPTS = [
    f"Write a {kind} about {topic}." for kind in ("short story", "description", "letter", "news report")
    for topic in ("a lighthouse on a foggy coast", "a market in a desert town", "the first day of spring",
                  "an old library", "a long train journey", "a village festival", "a mountain storm", "a new bridge")
]


def cached_text(path: Path, make) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8")
    text = make()
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return text


def generic_text(model: Path, n: int, max_tokens: int) -> str:
    from edgesrm.runtime import load

    with load(model, max_sequences=8, n_ctx=8 * (max_tokens + 256)) as rt:
        rt.start_scheduler()
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> str:
            prompt = GENERIC_PROMPTS[i % len(GENERIC_PROMPTS)]
            return rt.ask(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, seed=i).answer

        with ThreadPoolExecutor(8) as pool:
            return "\n\n".join(pool.map(one, range(n)))


def same_tokens(model: Path, text: str, tokens: int) -> str:
    """``text`` cut to its first ``tokens`` tokens (by ``model``'s tokenizer)."""
    with Scorer(model, n_ctx=64) as scorer:
        ids = scorer.tokenize(text)
        if len(ids) < tokens:
            raise SystemExit(f"the generic text has {len(ids)} tokens, fewer than {tokens}: raise --generic")
        out = [token_piece(scorer.vocab, t, special=True) for t in ids[:tokens]]
        return b"".join(out).decode("utf-8", "replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["Q3_K_S", "IQ3_XXS", "Q2_K"])
    parser.add_argument("--train-traces", type=int, default=48)
    parser.add_argument("--test-traces", type=int, default=16)
    parser.add_argument("--generic", type=int, default=96, help="generic replies generated (cut to the same tokens)")
    parser.add_argument("--generic-model", default=None,
                        help="the model that writes the generic text (default: the embedded default model)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edgesrm" / "bench-quantization")
    parser.add_argument("--variants", default="none,reasoning,generic",
                        help="which quantizations per type: none (no imatrix), reasoning, generic")
    parser.add_argument("--texts-only", action="store_true", help="stop after the reference and the texts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantization.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    q4km = eval_model()
    reference = args.work / "reference-f16.gguf"
    if not reference.exists():
        quantize(q4km, reference, "F16", allow_requantize=True)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    train = cached_text(args.work / f"train-traces-{args.train_traces}.txt", lambda: "\n\n".join(
        imx.reasoning_traces_for(q4km, imx.train_questions(args.train_traces), max_tokens=args.max_tokens)))
    test = cached_text(args.work / f"test-traces-{args.test_traces}.txt", lambda: "\n\n".join(
        imx.reasoning_traces_for(q4km, test_questions(args.test_traces), max_tokens=args.max_tokens)))
    with Scorer(reference, n_ctx=64) as scorer:
        n_train = len(scorer.tokenize(train))
    variants = [v for v in args.variants.split(",") if v]
    calibration = {"reasoning": train}
    if "generic" in variants:  # the same token count for both matrices: the shorter text's
        writer = resolve_model(args.generic_model)
        raw = cached_text(args.work / f"generic-raw-{writer.stem}-{args.generic}-{args.max_tokens}.txt",
                          lambda: generic_text(writer, args.generic, args.max_tokens))
        with Scorer(reference, n_ctx=64) as scorer:
            n_cal = min(n_train, len(scorer.tokenize(raw)))
        calibration = {"reasoning": same_tokens(reference, train, n_cal), "generic": same_tokens(reference, raw, n_cal)}
    else:
        n_cal = n_train
    say(f"calibration: {n_cal} tokens each of {' and '.join(calibration)} text")
    if args.texts_only:
        return
    matrices = {}
    for name, text in calibration.items():
        path = args.work / f"imatrix-{name}-{n_cal}.gguf"
        if not path.exists():
            started = time.perf_counter()
            im = imx.collect(reference, [text], datasets=[name])
            imx.write(im, path)
            say(f"imatrix {name}: {im.chunks} chunks in {time.perf_counter() - started:.0f} s")
        matrices[name] = path
    files = []
    for quant in args.types:
        for variant in variants:
            if variant == "none" and quant.upper() in imx_needed():
                continue
            out = args.work / f"{quant}-{variant}-{n_cal if variant != 'none' else 0}.gguf"
            if not out.exists():
                started = time.perf_counter()
                quantize(reference, out, quant, imatrix=None if variant == "none" else matrices[variant])
                say(f"{out.name}: quantized in {time.perf_counter() - started:.0f} s")
            files.append((quant, variant, out))
    say(f"KL of {len(files)} files against the reference on {args.test_traces} test traces")
    rows = []
    for (quant, variant, out), q in zip(files, compare_many([f for _, _, f in files], reference, test)):
        rows.append({"type": quant, "imatrix": variant, "size_mb": round(out.stat().st_size / 2**20, 1),
                     **q.to_dict()})
        say(f"{quant} {variant}: KL {q.kl_mean:.4f} (p99 {q.kl_p99:.3f}), top-1 {100 * q.top1:.1f}%")
    result = {"reference": "Q4_K_M dequantized to f16", "calibration_tokens": n_cal, "test_traces": args.test_traces, "rows": rows,
              "load_before": load_before, "load_after": os.getloadavg(), "at": time.strftime("%Y-%m-%d %H:%M")}
    args.out.write_text(json.dumps(result, indent=1))
    print("| type | imatrix | size MiB | KL mean | KL p99 | top-1 | PPL |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['type']} | {r['imatrix']} | {r['size_mb']} | {r['kl_mean']:.4f} | {r['kl_p99']:.3f} | "
              f"{100 * r['top1']:.1f}% | {r['ppl']:.3f} |")
    for quant in args.types:
        by = {r["imatrix"]: r["kl_mean"] for r in rows if r["type"] == quant}
        if "none" in by and "reasoning" in by:
            print(f"{quant}: reasoning imatrix / none = {by['reasoning'] / by['none']:.2f} (target <= 0.7)")
        if "generic" in by and "reasoning" in by:
            print(f"{quant}: reasoning / generic = {by['reasoning'] / by['generic']:.2f}")


def imx_needed() -> tuple[str, ...]:
    from edgesrm.convert.quantize import NEEDS_IMATRIX

    return NEEDS_IMATRIX


if __name__ == "__main__":
    main()
