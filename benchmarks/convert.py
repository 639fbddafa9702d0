"""The converter against llama.cpp's own ``convert_hf_to_gguf.py``, and what each quant type costs.

1. Conversion: wall time and peak RSS of ``edgesrm convert`` and of the reference script, run
   alternately (ABBA) as separate processes on the same real-weights checkpoint
   (SmolLM2-135M-Instruct as bf16 safetensors, made by scripts/make_test_checkpoints.py), bf16 ->
   f16, after one untimed warm-up each so both read from the page cache. Peak RSS is the child's
   ru_maxrss. The two outputs' tensor data are compared.
2. Quantization: time and file size of ``edgesrm quantize`` per type, from the bf16 GGUF.
3. Decode speed per type: tokens/s of greedy decoding with edgesrm's engine (prompt prefilled,
   then ``--tokens`` tokens one by one), types measured round-robin, median of ``--reps``.

The reference script ships in llama-cpp-python's source distribution (vendor/llama.cpp); it is
run as a yardstick only. It is taken from /tmp/dl if unpacked there, else downloaded once with
``pip download --no-binary :all: llama-cpp-python==0.3.36`` into ~/.cache/edgesrm/bench. It
needs torch and transformers, which this benchmark (not edgesrm) depends on.

    python benchmarks/convert.py [--reps 5] [--quants Q4_0,Q4_K_M,...] [--tokens 128] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "bench"
LLAMA_CPP_PYTHON = "0.3.36"
UNPACKED = Path("/tmp/dl") / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
QUANTS = "Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0,IQ4_XS"
PROMPT = ("<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper who finds a strange map "
          "washed up on the shore.<|im_end|>\n<|im_start|>assistant\n")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_script() -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (unpacked once)."""
    for base in (UNPACKED, CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"):
        script = base / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        if script.is_file():
            return script
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(CACHE)], check=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    with tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and
                  (m.name.endswith("convert_hf_to_gguf.py") or "/conversion/" in m.name or "/gguf-py/" in m.name)]
        tar.extractall(CACHE, members=wanted, filter="data")
    return CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


def edgesrm_command() -> list[str]:
    """``edgesrm`` as installed (``python -m edgesrm``), for its ``convert`` command."""
    return [sys.executable, "-m", "edgesrm"]


# Runs a command and reports its peak RSS. A child forked from this (large) benchmark process
# would start with our resident pages counted in its ru_maxrss; the shim is small, so the peak
# it reports is the command's own.
SHIM = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak RSS of the command in MiB)."""
    with tempfile.TemporaryFile() as log:  # the reference logs a lot: a pipe could fill and block it
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", SHIM, *cmd], stdout=subprocess.DEVNULL, stderr=log)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read().decode(errors="replace")
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{output[-2000:]}")
    return seconds, int(output.strip().splitlines()[-1]) / 1024


def same_tensors(a: Path, b: Path) -> str:
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    if ta.keys() != tb.keys():
        return f"different tensor sets ({len(ta)} vs {len(tb)})"
    differ = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type or
              not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))]
    return "bit-identical tensor data" if not differ else f"{len(differ)} of {len(ta)} tensors differ"


def bench_conversion(checkpoint: Path, work: Path, reps: int) -> tuple[list[str], dict]:
    ours = [*edgesrm_command(), "convert", str(checkpoint), "-o", str(work / "edgesrm.gguf"), "--outtype", "f16",
            "--force", "--no-progress"]
    ref = [sys.executable, str(reference_script()), str(checkpoint), "--outfile", str(work / "reference.gguf"),
           "--outtype", "f16"]
    runs: dict[str, list[tuple[float, float]]] = {"edgesrm": [], "reference": []}
    timed(ours), timed(ref)  # warm-up: page cache, .pyc files
    for i in range(reps):
        order = [("edgesrm", ours), ("reference", ref)]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            runs[name].append(timed(cmd))
            print(f"  {name:<9} run {i + 1}: {runs[name][-1][0]:.2f} s, {runs[name][-1][1]:.0f} MiB", flush=True)
    identical = same_tensors(work / "edgesrm.gguf", work / "reference.gguf")
    med = {name: (statistics.median(t for t, _ in r), statistics.median(m for _, m in r)) for name, r in runs.items()}
    (t_e, m_e), (t_r, m_r) = med["edgesrm"], med["reference"]
    rows = [
        "| converter (bf16 -> f16) | wall time, median | peak RSS, median | runs (s) |",
        "|---|---|---|---|",
        f"| `edgesrm convert` | {t_e:.2f} s | {m_e:.0f} MiB | {', '.join(f'{t:.2f}' for t, _ in runs['edgesrm'])} |",
        f"| llama.cpp `convert_hf_to_gguf.py` | {t_r:.2f} s | {m_r:.0f} MiB | "
        f"{', '.join(f'{t:.2f}' for t, _ in runs['reference'])} |",
        f"| ratio (target <= 0.7 time, <= 0.6 RSS) | **{t_e / t_r:.2f}x** | **{m_e / m_r:.2f}x** | |",
        "",
        f"Outputs: {identical} (metadata differs only in naming).",
    ]
    return rows, {"time_ratio": t_e / t_r, "rss_ratio": m_e / m_r}


def stretched_checkpoint(src: Path, dst: Path, factor: int) -> Path:
    """``src`` with ``factor`` times as many layers (layer i repeats layer i mod n), streamed to disk.

    A bigger checkpoint from the same real weights, to see how peak memory grows with model size.
    """
    import json

    from edgesrm.convert.safetensors import FLOAT_DTYPES, open_checkpoint

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    n_layers = config["num_hidden_layers"]
    config["num_hidden_layers"] = n_layers * factor
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    refs = open_checkpoint(src)
    layout = []  # (name, source ref)
    for name, ref in refs.items():
        if ".layers." not in name:
            layout.append((name, ref))
            continue
        head, rest = name.split(".layers.", 1)
        index, tail = rest.split(".", 1)
        layout += [(f"{head}.layers.{int(index) + k * n_layers}.{tail}", ref) for k in range(factor)]
    header, offset = {}, 0
    for name, ref in layout:
        header[name] = {"dtype": ref.dtype, "shape": list(ref.shape), "data_offsets": [offset, offset + ref.nbytes]}
        offset += ref.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(dst / "model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for _, ref in layout:
            step = max(1, (64 * 2**20) // max(1, ref.row_elements * FLOAT_DTYPES[ref.dtype]))
            for start in range(0, ref.rows, step):
                f.write(ref.read_raw(start, min(ref.rows, start + step)).tobytes())
    return dst


def bench_scaling(checkpoint: Path, work: Path, factor: int, reps: int) -> list[str]:
    """Peak RSS of both converters on the checkpoint and on a ``factor`` x deeper copy."""
    big = stretched_checkpoint(checkpoint, work / "stretched", factor)
    rows = ["| checkpoint | size | `edgesrm convert` peak RSS | reference peak RSS | `edgesrm` / reference time |",
            "|---|---|---|---|---|"]
    for label, ckpt in (("SmolLM2-135M", checkpoint), (f"same, {factor}x the layers", big)):
        ours = [*edgesrm_command(), "convert", str(ckpt), "-o", str(work / "s-edgesrm.gguf"), "--outtype", "f16",
                "--force", "--no-progress"]
        ref = [sys.executable, str(reference_script()), str(ckpt), "--outfile", str(work / "s-ref.gguf"),
               "--outtype", "f16"]
        runs = {"ours": [], "ref": []}
        for i in range(reps):
            pairs = [("ours", ours), ("ref", ref)]
            for name, cmd in pairs if i % 2 == 0 else pairs[::-1]:
                runs[name].append(timed(cmd))
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        t_o, m_o = (statistics.median(x[j] for x in runs["ours"]) for j in (0, 1))
        t_r, m_r = (statistics.median(x[j] for x in runs["ref"]) for j in (0, 1))
        rows.append(f"| {label} | {size / 2**20:,.0f} MiB | {m_o:.0f} MiB | {m_r:.0f} MiB | "
                    f"{t_o:.1f} s / {t_r:.1f} s |")
        print(f"  {label}: edgesrm {m_o:.0f} MiB {t_o:.1f} s, reference {m_r:.0f} MiB {t_r:.1f} s", flush=True)
    shutil.rmtree(big, ignore_errors=True)
    return rows


def bench_quantization(bf16: Path, work: Path, quants: list[str], reps: int) -> tuple[list[str], dict[str, Path]]:
    from edgesrm.convert import quantize

    rows = ["| type | quantize time, median | file size | bits/weight |", "|---|---|---|---|"]
    n_params = _n_params(bf16)
    rows.append(f"| BF16 (input) | - | {bf16.stat().st_size / 2**20:.1f} MiB | "
                f"{bf16.stat().st_size * 8 / n_params:.2f} |")
    files = {"BF16": bf16}
    for quant in quants:
        out = work / f"{quant}.gguf"
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            quantize(bf16, out, quant, force=True)
            times.append(time.perf_counter() - start)
        size = out.stat().st_size
        rows.append(f"| {quant} | {statistics.median(times):.2f} s | {size / 2**20:.1f} MiB | "
                    f"{size * 8 / n_params:.2f} |")
        files[quant] = out
        print(f"  {quant}: {statistics.median(times):.2f} s, {size / 2**20:.1f} MiB", flush=True)
    return rows, files


def _n_params(path: Path) -> int:
    from edgesrm.models import read_header

    return sum(t.n_elements for t in read_header(path).tensors)


def bench_decode(files: dict[str, Path], tokens: int, reps: int, threads: int) -> dict[str, list[float]]:
    """Greedy decode speed of each file, round-robin so that a noisy moment hits every type alike."""
    from edgesrm.engine import GREEDY, Engine, EngineConfig

    engines = {name: Engine(path, EngineConfig(n_ctx=512, max_sequences=1, n_threads=threads))
               for name, path in files.items()}
    speeds: dict[str, list[float]] = {name: [] for name in files}
    try:
        for _ in range(reps):
            for name, eng in engines.items():
                gen = eng.start(eng.tokenize(PROMPT))
                seq = gen.add(GREEDY, max_tokens=tokens)
                gen.run()
                if seq.n_sampled < tokens // 2:
                    raise SystemExit(f"{name}: stopped after {seq.n_sampled} tokens ({seq.finish_reason})")
                speeds[name].append(seq.n_sampled / gen.timings.decode_s)
                gen.close()
    finally:
        for eng in engines.values():
            eng.close()
    return speeds


def decode_table(results: dict[int, dict[str, list[float]]], tokens: int) -> list[str]:
    counts = sorted(results)
    rows = ["| type | " + " | ".join(f"tokens/s, {n} thread{'s' if n > 1 else ''} (median; runs)" for n in counts) + " |",
            "|---|" + "---|" * len(counts)]
    for name in next(iter(results.values())):
        cells = [f"{statistics.median(results[n][name]):.1f} ({', '.join(f'{v:.1f}' for v in results[n][name])})"
                 for n in counts]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows += ["", f"Greedy decoding of {tokens} tokens after a {len(PROMPT)}-character prompt; prefill excluded."]
    return rows


def machine() -> str:
    import llama_cpp

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "?")
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, llama-cpp-python {llama_cpp.__version__}; load average at start "
            f"{os.getloadavg()[0]:.2f} (the machine is shared)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed conversions per side (alternating)")
    ap.add_argument("--quants", default=QUANTS, help="quant types, comma-separated")
    ap.add_argument("--quant-reps", type=int, default=3, help="timed quantizations per type")
    ap.add_argument("--tokens", type=int, default=128, help="tokens decoded per decode-speed run")
    ap.add_argument("--decode-reps", type=int, default=5, help="decode-speed runs per type (round-robin)")
    ap.add_argument("--threads", default=None, help="llama.cpp threads for decoding, comma-separated "
                                                    "(default: edgesrm's default)")
    ap.add_argument("--scale", type=int, default=4, help="also convert a copy with this many times the layers "
                                                          "(peak memory vs size); 1 to skip")
    ap.add_argument("--scale-reps", type=int, default=3, help="alternating runs per side for --scale")
    ap.add_argument("--out", type=Path, default=None, help="also write the results to this Markdown file")
    args = ap.parse_args()

    checkpoint = load_script("make_test_checkpoints").smollm2_checkpoint(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm" / "test-fixtures")
    from edgesrm.convert import convert

    lines = ["## Converter: `edgesrm convert` vs llama.cpp's `convert_hf_to_gguf.py`", "",
             f"Machine: {machine()}.", "",
             f"Checkpoint: SmolLM2-135M-Instruct, real weights, bf16 safetensors ({checkpoint.name}, "
             f"{sum(f.stat().st_size for f in checkpoint.glob('*.safetensors')) / 2**20:.0f} MiB), made from the "
             "embedded GGUF by scripts/make_test_checkpoints.py. Command: "
             "`python benchmarks/convert.py " + " ".join(sys.argv[1:]) + "`.", ""]
    with tempfile.TemporaryDirectory(prefix="edgesrm-bench-") as tmp:
        work = Path(tmp)
        print(f"conversion, {args.reps} alternating runs per side:", flush=True)
        rows, ratios = bench_conversion(checkpoint, work, args.reps)
        lines += rows + [""]
        if args.scale > 1:
            print(f"peak memory against checkpoint size ({args.scale}x deeper copy):", flush=True)
            lines += ["### Peak memory against checkpoint size", ""]
            lines += bench_scaling(checkpoint, work, args.scale, args.scale_reps) + [""]
            lines += ["edgesrm streams tensors in slices: its peak memory stays flat as the checkpoint grows.", ""]
        print("quantization:", flush=True)
        bf16 = convert(checkpoint, work / "bf16.gguf", outtype="bf16", progress=False)
        rows, files = bench_quantization(bf16, work, [q.strip().upper() for q in args.quants.split(",") if q.strip()],
                                         args.quant_reps)
        lines += ["### Quantization (llama.cpp's quantizer, from the bf16 GGUF)", ""] + rows + [""]
        print("decode speed:", flush=True)
        files = {"F16": work / "edgesrm.gguf", **{k: v for k, v in files.items() if k != "BF16"}}
        from edgesrm.engine.backend import default_threads

        counts = [int(n) for n in args.threads.split(",")] if args.threads else [default_threads()]
        decode = {n: bench_decode(files, args.tokens, args.decode_reps, n) for n in counts}
        lines += ["### Decode speed per type (edgesrm engine)", ""] + decode_table(decode, args.tokens) + [""]
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    if ratios["time_ratio"] > 0.7 or ratios["rss_ratio"] > 0.6:
        print("\nTARGET MISSED: wall time <= 0.7x and peak RSS <= 0.6x of the reference", file=sys.stderr)


if __name__ == "__main__":
    main()
