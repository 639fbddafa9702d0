"""Aggregate decode throughput: edgesrm's ``Generation`` against a plain ``llama_decode`` loop.

Both sides run in one process on the same model, context and threads (the plain loop reuses
the engine's own ``llama_context``), decode N sequences over one shared prompt with identical
sampler chains and seeds, and are timed alternately so that a noisy machine hits both alike.
Tokens/s = tokens sampled over all sequences / decode wall time (prefill and load excluded).

    python benchmarks/engine_throughput.py [--reps 5] [--tokens 128] [--n 1,4,8] [--quants Q4_1,Q4_0]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

from edgesrm.engine import EOS, Engine, EngineConfig, SamplingParams, backend_report
from edgesrm.engine.backend import lib
from edgesrm.models import default_model_path

SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
PROMPT = ("<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper who finds a "
          "strange map washed up on the shore. Describe every room of the lighthouse.<|im_end|>\n"
          "<|im_start|>assistant\n")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "bench"


def model_for(quant: str) -> Path:
    """The shipped Q4_1 model, or it requantized by llama.cpp to ``quant`` (cached)."""
    src, llama = default_model_path(), lib()
    if quant == "Q4_1":
        return src
    out = CACHE / src.name.replace("Q4_1", quant)
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        params = llama.llama_model_quantize_default_params()
        params.ftype = getattr(llama, f"LLAMA_FTYPE_MOSTLY_{quant}")
        params.allow_requantize = True
        tmp = out.with_suffix(".tmp")
        if llama.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize to {quant} failed")
        tmp.rename(out)
    return out


def plain_chain(llama, seed: int):
    """The same chain as ``edgesrm.engine.sampling.make_chain`` for ``SAMPLING``."""
    params = llama.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama.llama_sampler_chain_init(params)
    for sampler in (llama.llama_sampler_init_top_k(SAMPLING["top_k"]),
                    llama.llama_sampler_init_top_p(SAMPLING["top_p"], 1),
                    llama.llama_sampler_init_min_p(SAMPLING["min_p"], 1),
                    llama.llama_sampler_init_temp(SAMPLING["temperature"]),
                    llama.llama_sampler_init_dist(seed)):
        llama.llama_sampler_chain_add(chain, sampler)
    return chain


def run_plain(eng: Engine, prompt: list[int], n: int, max_tokens: int) -> tuple[int, float, list[list[int]]]:
    """Prefill seq 0, copy it to seqs 1..n-1, then one token per live sequence per decode.

    Mirrors edgesrm's rules: the first token comes from the prefill logits; a sequence ends
    at an end-of-generation token or after ``max_tokens`` sampled, and that token is not decoded.
    """
    llama, ctx = eng._llama, eng._ctx
    mem = llama.llama_get_memory(ctx)
    llama.llama_memory_clear(mem, True)
    batch = llama.llama_batch_init(max(len(prompt), n), 0, 1)
    chains = [plain_chain(llama, seed) for seed in range(n)]
    try:
        for j, token in enumerate(prompt):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, j, 1
            batch.seq_id[j][0], batch.logits[j] = 0, j == len(prompt) - 1
        batch.n_tokens = len(prompt)
        assert llama.llama_decode(ctx, batch) == 0, "prefill failed"
        for s in range(1, n):
            llama.llama_memory_seq_cp(mem, 0, s, -1, -1)
        out: list[list[int]] = [[] for _ in range(n)]
        rows = {s: len(prompt) - 1 for s in range(n)}  # seq -> batch row of its logits
        sampled, pos = 0, len(prompt)
        start = time.perf_counter()
        while rows:
            live: list[tuple[int, int]] = []
            for s, row in rows.items():
                token = llama.llama_sampler_sample(chains[s], ctx, row)
                sampled += 1
                if llama.llama_vocab_is_eog(eng.vocab, token):
                    continue
                out[s].append(token)
                if len(out[s]) < max_tokens:
                    live.append((s, token))
            if not live:
                break
            for i, (s, token) in enumerate(live):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = s, True
            batch.n_tokens = len(live)
            assert llama.llama_decode(ctx, batch) == 0, "decode failed"
            rows, pos = {s: i for i, (s, _) in enumerate(live)}, pos + 1
        return sampled, time.perf_counter() - start, out
    finally:
        for chain in chains:
            llama.llama_sampler_free(chain)
        llama.llama_batch_free(batch)


def run_edgesrm(eng: Engine, prompt: list[int], n: int, max_tokens: int) -> tuple[int, float, list[list[int]]]:
    """The engine as users run it: ``start`` (prefill), ``add`` n sequences, ``run``."""
    gen = eng.start(prompt)
    seqs = [gen.add(SamplingParams(**SAMPLING, seed=i), max_tokens=max_tokens) for i in range(n)]
    start = time.perf_counter()
    gen.run()
    elapsed = time.perf_counter() - start
    gen.close()
    return sum(s.n_sampled + (s.finish_reason == EOS) for s in seqs), elapsed, [s.tokens for s in seqs]


def machine() -> str:
    """CPU model, cores, library versions and llama.cpp's backend report."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    report = backend_report()
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores; llama-cpp-python {report.llama_cpp_python}; "
            f"backend {report.name} ({', '.join(report.cpu_features)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per side and configuration")
    ap.add_argument("--tokens", type=int, default=128, help="tokens sampled per sequence")
    ap.add_argument("--n", default="1,4,8", help="parallel sequences, comma-separated")
    ap.add_argument("--quants", default="Q4_1,Q4_0", help="Q4_1 = shipped model; others are requantized")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: edgesrm's)")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    load_before = os.getloadavg()[0]  # other processes' load makes multi-threaded decode noisy
    rows: list[tuple[str, int, float, float, str]] = []
    for quant in args.quants.split(","):
        eng = Engine(model_for(quant), EngineConfig(n_ctx=4096, n_threads=args.threads, max_sequences=max(16, max(ns))))
        prompt = eng.tokenize(PROMPT, add_special=eng.add_bos)
        print(f"{quant}: {eng.model_path.name}, {eng.n_threads} threads, prompt {len(prompt)} tokens", flush=True)
        for n in ns:
            run_plain(eng, prompt, n, args.tokens), run_edgesrm(eng, prompt, n, args.tokens)  # warm-up
            plain: list[float] = []
            edge: list[float] = []
            same = True
            for _ in range(args.reps):
                count, seconds, plain_tokens = run_plain(eng, prompt, n, args.tokens)
                plain.append(count / seconds)
                count, seconds, edge_tokens = run_edgesrm(eng, prompt, n, args.tokens)
                edge.append(count / seconds)
                same = same and plain_tokens == edge_tokens  # same seeds and logits: same work
            p, e = statistics.median(plain), statistics.median(edge)
            print(f"  N={n}: plain {p:7.1f} tok/s [{min(plain):.0f}-{max(plain):.0f}]  edgesrm {e:7.1f} tok/s "
                  f"[{min(edge):.0f}-{max(edge):.0f}]  ratio {e / p:.3f}  same tokens: {same}", flush=True)
            rows.append((quant, n, p, e, "yes" if same else "no"))
        eng.close()
    print(f"\n{machine()}\nmedians of {args.reps} alternating runs, {args.tokens} tokens per sequence; "
          f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| quant | N | plain tok/s | edgesrm tok/s | edgesrm / plain | same tokens |")
    print("|---|---:|---:|---:|---:|:---:|")
    for quant, n, p, e, same in rows:
        print(f"| {quant} | {n} | {p:.1f} | {e:.1f} | {e / p:.3f}{'' if e / p >= 0.95 else ' (< 0.95)'} | {same} |")


if __name__ == "__main__":
    main()
