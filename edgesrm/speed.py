"""Decode speed of a model on this machine: the batch-speed profile, measured once and remembered.

How fast the engine decodes depends on how many sequences each step carries (its batch width),
and how much a wider batch gains depends on the model, its quantization types and the CPU's
kernels (llama.cpp repacks some types into faster layouts on some CPUs). So nothing about it is
assumed: the aggregate tokens/s at each width that matters is measured on first use and kept in
the user's cache directory (``speed.json``), keyed by model file, size and thread count.

This module owns the profile. sc's launch policy (``strategies.early_stopping``) and ``auto`` read it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .engine import Engine, SamplingParams
from .models import write_cache_file

PROBE_STEPS = 12  # decode steps per measurement
ROUNDS = 2  # measurements per width; the fastest is kept
MIN_SPEED = 1e-3  # tokens/s: a cached speed below this is not a measurement (5e-324 made steps take forever)
MAX_WIDTH = 1 << 16  # sequences: a cached width above this is not one either
log = logging.getLogger("edgesrm")  # the CLI shows its INFO messages on stderr
# Speeds this process measured but could not write to the cache (by cache file and key): the
# strategy asks for the profile again after the runtime did, and must not measure twice.
_unsaved: dict[tuple[str, str], dict[int, float]] = {}


@dataclass(frozen=True)
class SpeedProfile:
    """Aggregate decode speed (tokens/s, all sequences together) at measured batch widths.

    A width between two measured ones gets the step time interpolated linearly between theirs;
    a width beyond the widest measured one costs that width's time per sequence.
    """

    tokens_per_s: dict[int, float]  # batch width (sequences per step) -> aggregate tokens/s

    def __post_init__(self) -> None:
        if not self.tokens_per_s or any(not 1 <= w <= MAX_WIDTH or not MIN_SPEED <= s < math.inf
                                        for w, s in self.tokens_per_s.items()):
            raise ValueError(f"a speed profile needs speeds of {MIN_SPEED:g} tokens/s or more, finite, at "
                             f"widths 1 to {MAX_WIDTH}; got {self.tokens_per_s}")

    def step_s(self, width: int) -> float:
        """Seconds one decode step takes with ``width`` sequences."""
        points = sorted((w, w / s) for w, s in self.tokens_per_s.items())
        if width <= points[0][0]:
            return points[0][1]
        for (w0, t0), (w1, t1) in zip(points, points[1:]):
            if width <= w1:
                return t0 + (t1 - t0) * (width - w0) / (w1 - w0)
        w, t = points[-1]
        return t * width / w

    def speed(self, width: int) -> float:
        """Aggregate tokens/s with ``width`` sequences."""
        return width / self.step_s(width)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesrm"


def profile_key(path: Path, threads: int) -> str:
    """The cache's key for a model file run with ``threads`` threads: its name, size and threads."""
    return f"{path.name}:{path.stat().st_size}:{threads}t"


def _key(engine: Engine) -> str:
    return profile_key(engine.model_path, engine.n_threads)


def profile_widths(n: int) -> list[int]:
    """The widths measured for runs of up to ``n`` sequences: 1, the powers of two below ``n``, and ``n``."""
    widths, w = {1, max(1, n)}, 2
    while w < n:
        widths.add(w)
        w *= 2
    return sorted(widths)


def profile(engine: Engine, n: int, widths: Iterable[int] | None = None) -> SpeedProfile:
    """The profile for runs of up to ``n`` sequences (capped by what the engine decodes at once).
    Widths not yet known are measured now, once per model and machine: ``ROUNDS`` interleaved
    rounds of ``PROBE_STEPS`` steps each, keeping each width's fastest round, so that a moment
    of load from another process does not stay in the profile (about 2 s for a 135M model and
    40 s for a 1.5B one at widths 1, 2, 4 and 8 on 2 cores)."""
    n = max(1, min(n, engine.max_parallel))
    wanted = sorted({w for w in (widths or profile_widths(n)) if 1 <= w <= n})
    file, key = cache_dir() / "speed.json", _key(engine)
    known = {**_unsaved.get((str(file), key), {}), **_valid(_read_table().get(key))}
    missing = [w for w in wanted if w not in known]
    if missing:
        log.info(f"measuring {engine.model_path.name}'s decode speed with {', '.join(map(str, missing))} "
                 f"sequences at once on this machine, once (cached in {file})")
        measured = measure_widths(engine, missing)
        log.info("tokens/s: " + ", ".join(f"{measured[w]:.1f} with {w}" for w in missing))
        known = {**known, **_valid(remember(engine, measured))}
    return SpeedProfile({w: known[w] for w in wanted})


def measure_widths(engine: Engine, widths: Iterable[int]) -> dict[int, float]:
    """Aggregate tokens/s at each of ``widths``, measured now (the cache is neither read nor
    written): the fastest of ``ROUNDS`` interleaved rounds."""
    widths = list(widths)
    measured = {w: 0.0 for w in widths}
    for _ in range(ROUNDS):
        for w in widths:
            measured[w] = max(measured[w], measure_speed(engine, w))
    return measured


def _valid(entry: object) -> dict[int, float]:
    """The usable widths and speeds of a cache entry (a hand-edited file may hold anything)."""
    if not isinstance(entry, dict):
        return {}
    speeds = {}
    for w, s in entry.items():
        w = str(w)
        if not (w.isascii() and w.isdigit() and 1 <= int(w) <= MAX_WIDTH):  # ("²".isdigit(), but int("²") fails)
            continue
        if isinstance(s, (int, float)) and not isinstance(s, bool) and MIN_SPEED <= s < math.inf:
            speeds[int(w)] = float(s)
    return speeds


def _read_table() -> dict:
    try:
        table = json.loads((cache_dir() / "speed.json").read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def remember(engine: Engine, speeds: dict[int, float]) -> dict[str, float]:
    """Add ``speeds`` (width -> tokens/s) to the profile of ``engine``'s model and threads."""
    return remember_file(engine.model_path, engine.n_threads, speeds)


def remember_file(path: Path, threads: int, speeds: dict[int, float]) -> dict[str, float]:
    """Add ``speeds`` to the cached profile of the model file ``path`` run with ``threads`` threads
    (the file is re-read first: another process may have added widths); the entry as it now is.
    A cache that cannot be written keeps the entry for this process only."""
    file, table = cache_dir() / "speed.json", _read_table()
    key = profile_key(path, threads)
    known = table.get(key)
    known = known if isinstance(known, dict) else {}
    known.update({str(w): round(s, 2) for w, s in speeds.items()})
    table[key] = known
    if not write_cache_file(file, json.dumps(table, indent=1)):
        _unsaved[(str(file), key)] = {**_unsaved.get((str(file), key), {}), **_valid(known)}
    return known


def measure_speed(engine: Engine, n: int) -> float:
    """Aggregate tokens/s over ``PROBE_STEPS`` decode steps of up to ``n`` sequences (after one warm-up step)."""
    n = min(n, engine.max_parallel)
    gen = engine.start(engine.tokenize_prompt("Write a long story about a lighthouse keeper.\n"))
    try:
        for i in range(n):
            gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=PROBE_STEPS + 4)
        gen.step()  # warm-up, and the prompt's own logits
        start = time.perf_counter()
        tokens = steps = 0
        while steps < PROBE_STEPS and gen.active:
            tokens += len(gen.active)  # (a sequence may end early)
            gen.step()
            steps += 1
        return max(tokens, 1) / max(time.perf_counter() - start, 1e-6)
    finally:
        gen.close()
