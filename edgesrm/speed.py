"""Decode speed of a model on this machine, measured once and remembered.

``auto`` chooses a strategy from the budget and this speed: how many tokens per second the
engine decodes with N sequences at once. The numbers are kept in the user's cache
directory, keyed by model file, size and thread count.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .engine import Engine, SamplingParams

PROBE_STEPS = 12
log = logging.getLogger("edgesrm")  # the CLI shows its INFO messages on stderr


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm"


def _key(engine: Engine) -> str:
    path = engine.model_path
    return f"{path.name}:{path.stat().st_size}:{engine.n_threads}t"


def decode_speed(engine: Engine, n: int) -> float:
    """Aggregate tokens/s decoding ``n`` sequences at once (measured on first use)."""
    file = cache_dir() / "speed.json"
    try:
        table = json.loads(file.read_text())
    except (OSError, ValueError):
        table = {}
    known = table.get(_key(engine), {})
    if str(n) in known:
        return float(known[str(n)])
    log.info(f"measuring {engine.model_path.name}'s decode speed with {n} "
             f"sequence{'s' if n > 1 else ''} on this machine, once (a few seconds; cached in {file})")
    speed = measure_speed(engine, n)
    log.info(f"{speed:.1f} tokens/s with {n} sequence{'s' if n > 1 else ''}")
    known[str(n)] = round(speed, 2)
    table[_key(engine)] = known
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(file)
    except OSError:
        pass  # a read-only cache only costs a new measurement next time
    return speed


def measure_speed(engine: Engine, n: int) -> float:
    n = min(n, engine.max_parallel)
    gen = engine.start("Write a long story about a lighthouse keeper.\n")
    try:
        for i in range(n):
            gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=PROBE_STEPS + 4)
        gen.step()  # warm-up, and the prompt's own logits
        start = time.perf_counter()
        steps = 0
        while steps < PROBE_STEPS and gen.active:
            gen.step()
            steps += 1
        return n * steps / max(time.perf_counter() - start, 1e-6)
    finally:
        gen.close()
