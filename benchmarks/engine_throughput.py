"""Aggregate decode throughput: edgesrm's ``Generation`` against a plain ``llama_decode`` loop.

Both sides run in one process on the same model, context and threads (the plain loop reuses
the engine's own ``llama_context``), decode N sequences over one shared prompt with identical
sampler chains and seeds, and are timed alternately so that a noisy machine hits both alike.
Tokens/s = tokens sampled over all sequences / decode wall time (prefill and load excluded).

    python benchmarks/engine_throughput.py [--reps 5] [--tokens 128] [--n 1,4,8] [--quants Q4_1,Q4_0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgesrm.engine import EOS, Engine, EngineConfig, SamplingParams, backend_report
from edgesrm.convert import quantize
from edgesrm.models import default_model_path

SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
PROMPT = ("<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper who finds a "
          "strange map washed up on the shore. Describe every room of the lighthouse.<|im_end|>\n"
          "<|im_start|>assistant\n")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "bench"


@dataclass
class Run:
    """One timed decode: tokens sampled, wall seconds, seconds inside llama_decode, decodes."""

    sampled: int
    seconds: float
    decode_s: float
    steps: int
    tokens: list[list[int]]

    @property
    def rate(self) -> float:
        return self.sampled / self.seconds

    @property
    def host_ms(self) -> float:
        """Milliseconds per step outside batch fill + llama_decode (sampling, bookkeeping)."""
        return 1e3 * (self.seconds - self.decode_s) / max(self.steps, 1)


class Clock:
    """Wraps a decode function and adds up the time spent in it."""

    def __init__(self, fn: Callable[..., int]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: object) -> int:
        start = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def model_for(quant: str) -> Path:
    """The shipped Q4_1 model, or it requantized by llama.cpp to ``quant`` (cached)."""
    src = default_model_path()
    if quant == "Q4_1":
        return src
    out = CACHE / src.name.replace("Q4_1", quant)
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        quantize(src, out, quant, allow_requantize=True)
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


def run_plain(eng: Engine, prompt: list[int], n: int, max_tokens: int) -> Run:
    """Prefill seq 0, copy it to seqs 1..n-1, then one token per live sequence per decode.

    Mirrors edgesrm's rules: the first token comes from the prefill logits; a sequence ends
    at an end-of-generation token or after ``max_tokens`` sampled (that token is not decoded)
    and its KV cells are freed at once, so both sides decode the same tokens in the same cells.
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

        def submit(live: list[tuple[int, int]], pos: int) -> int:
            """Fill the batch and decode: the span edgesrm's ``Engine._decode`` covers too."""
            for i, (s, token) in enumerate(live):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = s, True
            batch.n_tokens = len(live)
            return llama.llama_decode(ctx, batch)

        out: list[list[int]] = [[] for _ in range(n)]
        rows = {s: len(prompt) - 1 for s in range(n)}  # seq -> batch row of its logits
        sampled, pos, decode = 0, len(prompt), Clock(submit)
        start = time.perf_counter()
        while rows:
            live: list[tuple[int, int]] = []
            for s, row in rows.items():
                token = llama.llama_sampler_sample(chains[s], ctx, row)
                sampled += 1
                if not llama.llama_vocab_is_eog(eng.vocab, token):
                    out[s].append(token)
                    if len(out[s]) < max_tokens:
                        live.append((s, token))
                        continue
                llama.llama_memory_seq_rm(mem, s, -1, -1)  # free its KV cells, as edgesrm does
            if not live:
                break
            assert decode(live, pos) == 0, "decode failed"
            rows, pos = {s: i for i, (s, _) in enumerate(live)}, pos + 1
        return Run(sampled, time.perf_counter() - start, decode.seconds, decode.calls, out)
    finally:
        for chain in chains:
            llama.llama_sampler_free(chain)
        llama.llama_batch_free(batch)


def run_edgesrm(eng: Engine, prompt: list[int], n: int, max_tokens: int) -> Run:
    """The engine as users run it: ``start`` (prefill), ``add`` n sequences, ``run``."""
    gen = eng.start(prompt)
    seqs = [gen.add(SamplingParams(**SAMPLING, seed=i), max_tokens=max_tokens) for i in range(n)]
    eng._decode = decode = Clock(Engine._decode.__get__(eng))  # instance attribute: this engine only
    try:
        start = time.perf_counter()
        gen.run()
        elapsed = time.perf_counter() - start
    finally:
        del eng._decode
    gen.close()
    sampled = sum(s.n_sampled + (s.finish_reason == EOS) for s in seqs)
    return Run(sampled, elapsed, decode.seconds, decode.calls, [s.tokens for s in seqs])


def machine() -> str:
    """CPU model, cores, library versions and llama.cpp's backend report."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    report = backend_report()
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores; llama-cpp-python {report.llama_cpp_python}; "
            f"backend {report.name} ({', '.join(report.cpu_features)})")


def compare(eng: Engine, prompt: list[int], n: int, args: argparse.Namespace) -> dict[str, float | str]:
    """One warm-up, then ``args.reps`` alternating (plain, edgesrm) pairs; medians per side."""
    run_plain(eng, prompt, n, args.tokens), run_edgesrm(eng, prompt, n, args.tokens)
    pairs = [(run_plain(eng, prompt, n, args.tokens), run_edgesrm(eng, prompt, n, args.tokens)) for _ in range(args.reps)]
    med = statistics.median
    plain, edge = med(p.rate for p, _ in pairs), med(e.rate for _, e in pairs)
    return {
        "plain": plain, "edgesrm": edge, "ratio": edge / plain,
        "paired": med(e.rate / p.rate for p, e in pairs),  # neighbours in time share the noise
        "host_plain": med(p.host_ms for p, _ in pairs), "host_edgesrm": med(e.host_ms for _, e in pairs),
        "spread": f"{min(p.rate for p, _ in pairs):.0f}-{max(p.rate for p, _ in pairs):.0f} / "
                  f"{min(e.rate for _, e in pairs):.0f}-{max(e.rate for _, e in pairs):.0f}",
        "same": "yes" if all(p.tokens == e.tokens for p, e in pairs) else "no",
    }


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
    rows: list[tuple[str, int, dict]] = []
    for quant in args.quants.split(","):
        eng = Engine(model_for(quant), EngineConfig(n_ctx=4096, n_threads=args.threads, max_sequences=max(16, *ns)))
        prompt = eng.tokenize(PROMPT, add_special=eng.add_bos)
        print(f"{quant}: {eng.model_path.name}, {eng.n_threads} threads, prompt {len(prompt)} tokens", flush=True)
        for n in ns:
            r = compare(eng, prompt, n, args)
            print(f"  N={n}: plain {r['plain']:.1f} tok/s, edgesrm {r['edgesrm']:.1f} tok/s, ratio {r['ratio']:.3f} "
                  f"(range {r['spread']})", flush=True)
            rows.append((quant, n, r))
        eng.close()
    print(f"\n{machine()}\nmedians of {args.reps} alternating runs, {args.tokens} tokens per sequence; "
          f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| quant | N | plain tok/s | edgesrm tok/s | edgesrm / plain | paired ratio | "
          "host ms/step plain / edgesrm | range tok/s plain / edgesrm | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for quant, n, r in rows:
        flag = "" if r["ratio"] >= 0.95 else " (< 0.95)"
        print(f"| {quant} | {n} | {r['plain']:.1f} | {r['edgesrm']:.1f} | {r['ratio']:.3f}{flag} | {r['paired']:.3f} | "
              f"{r['host_plain']:.2f} / {r['host_edgesrm']:.2f} | {r['spread']} | {r['same']} |")


if __name__ == "__main__":
    main()
