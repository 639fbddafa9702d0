"""Start-up: process start to the first token on stdout, edgesrm against llama-cpp-python.

edgesrm: ``edgesrm ask --max-tokens 1 -m MODEL "QUESTION"`` (its console script, default
strategy) as a user runs it. llama-cpp-python: a script that imports ``llama_cpp``, builds
``Llama(MODEL)`` and prints ``create_chat_completion(max_tokens=1)``'s text. Both are timed from
``Popen`` to the first byte on stdout (and to exit), in alternating pairs, medians reported.

On a CPU whose llama.cpp build has AMX compiled in, llama-cpp-python 0.3.36 crashes on its
first multi-token decode; the peer script then turns llama.cpp's extra buffer types off, as
edgesrm does on such a CPU (``edgesrm.engine.backend.use_extra_buffer_types``), so both load the
same weight layout.

    python benchmarks/startup.py [--model PATH] [--pairs 5] [--json benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEER = r"""
import sys
import llama_cpp.llama_cpp as low
if sys.argv[2] == "no-extra-bufts":
    default = low.llama_model_default_params
    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    low.llama_model_default_params = params
from llama_cpp import Llama
llm = Llama(sys.argv[1], verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": sys.argv[3]}], max_tokens=1)
sys.stdout.write(out["choices"][0]["message"]["content"] or "?")
sys.stdout.flush()
"""


def first_byte(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from start to the first byte on stdout, and to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    byte = proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.stdout.read()
    code = proc.wait()
    end = time.perf_counter() - start
    if code != 0 or not byte:
        raise SystemExit(f"{cmd[0]} failed (exit code {code})")
    return first, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the evaluation model)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--question", default="Hi")
    parser.add_argument("--strategy", default=None, help="edgesrm's -s (default: ask's default, cot)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or str(Path.home() / ".cache/edgesrm/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    from edgesrm.engine.backend import use_extra_buffer_types

    bufts = "default" if use_extra_buffer_types() else "no-extra-bufts"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    edgesrm = [str(Path(sys.executable).with_name("edgesrm")), "ask", "--max-tokens", "1", "-m", model, args.question]
    if args.strategy:
        edgesrm[2:2] = ["-s", args.strategy]
    peer = [sys.executable, "-c", PEER, model, bufts, args.question]
    load_before = os.getloadavg()[0]
    first_byte(edgesrm, env)  # page cache warm for both
    rows = {"edgesrm": [], "llama-cpp-python": []}
    for i in range(args.pairs):
        order = [("edgesrm", edgesrm), ("llama-cpp-python", peer)]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            rows[name].append(first_byte(cmd, env))
    result = {"model": Path(model).name, "pairs": args.pairs, "peer_buffer_types": bufts,
              "edgesrm_strategy": args.strategy or "cot (default)",
              "load_before": load_before}
    for name, times in rows.items():
        result[name] = {"first_token_s": statistics.median(t[0] for t in times),
                        "exit_s": statistics.median(t[1] for t in times),
                        "runs": [[round(a, 3), round(b, 3)] for a, b in times]}
    result["ratio_first_token"] = result["edgesrm"]["first_token_s"] / result["llama-cpp-python"]["first_token_s"]
    result["ratio_exit"] = result["edgesrm"]["exit_s"] / result["llama-cpp-python"]["exit_s"]
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
