"""`edgesrm pull` of a large GGUF from a Hub stand-in on 127.0.0.1, against `hf_hub_download` alone.

Both download the same file from the same stand-in (tests/hub_standin.py, run as a separate
process) into a fresh Hugging Face cache each time, in alternating pairs; the medians of the wall
times and the pull's peak RSS are reported. What pull adds: listing the repo, the free-disk check,
the sha256 (computed while the file downloads), the GGUF header check and the store's index.

    python benchmarks/pull.py [--file PATH (default: the 1.1 GB evaluation model)] [--pairs 3]
                              [--rate MB_PER_S] [--json benchmarks/results/pull.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
REPO = "bench/Model-GGUF"

HF_ALONE = r"""
import sys
from huggingface_hub import hf_hub_download
hf_hub_download(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3], endpoint=sys.argv[4])
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, sampled every 10 ms) of a command."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path,
                        default=Path.home() / ".cache/edgesrm/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=None,
                        help="MB/s the stand-in sends at, to stand for a network link (default: loopback speed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    name = "Model-Q4_K_M.gguf"
    load_before = os.getloadavg()[0]
    server_env = {**os.environ, **({"HUB_STANDIN_RATE": str(args.rate * 1e6)} if args.rate else {})}
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_standin.py"), REPO, f"{name}={args.file}"],
                              stdout=subprocess.PIPE, text=True, env=server_env)
    try:
        url = server.stdout.readline().split()[0]
        rows: dict[str, list[tuple[float, float]]] = {"hf_hub_download": [], "edgesrm pull": []}
        with tempfile.TemporaryDirectory(dir=Path.home() / ".cache") as tmp:
            env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            for i in range(args.pairs):
                runs = [
                    ("hf_hub_download", lambda c: [sys.executable, "-c", HF_ALONE, REPO, name, str(c), url], {}),
                    ("edgesrm pull", lambda c: [sys.executable, "-m", "edgesrm", "pull", REPO],
                     {"HF_HUB_CACHE": None, "EDGESRM_HOME": None}),
                ]
                for label, cmd, extra in runs if i % 2 == 0 else runs[::-1]:
                    cache = Path(tmp) / "hf"
                    shutil.rmtree(cache, ignore_errors=True)
                    shutil.rmtree(Path(tmp) / "store", ignore_errors=True)
                    run_env = {**env, **({"HF_HUB_CACHE": str(cache), "EDGESRM_HOME": str(Path(tmp) / "store")}
                                         if extra else {})}
                    rows[label].append(timed(cmd(cache), run_env))
    finally:
        server.terminate()
        server.wait()
    size = args.file.stat().st_size
    result = {"file": args.file.name, "bytes": size, "pairs": args.pairs, "rate_MB_per_s": args.rate,
              "load_before": load_before}
    for label, values in rows.items():
        wall = statistics.median(v[0] for v in values)
        result[label] = {"wall_s": wall, "MB_per_s": size / 1e6 / wall,
                         "peak_rss_mib": max(v[1] for v in values), "runs": [[round(a, 3), round(b, 1)] for a, b in values]}
    result["ratio_wall"] = result["edgesrm pull"]["wall_s"] / result["hf_hub_download"]["wall_s"]
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
