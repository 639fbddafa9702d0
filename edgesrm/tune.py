"""``edgesrm tune``: which quantization suits this machine, measured rather than assumed.

Speed depends on the CPU's kernels as much as on bits (llama.cpp repacks some types into faster
layouts on some CPUs, and which ones differs between x86 and ARM), and batched decoding gains
more for some types than for others. So each candidate type or mix is made from the source
model (with an importance matrix when one is given) and measured here:

- file size, and the peak resident memory of a process that loads it and decodes ``paths``
  sequences (a child process per candidate, so that candidates do not share a peak);
- decode speed at 1 and at ``paths`` sequences through the engine: the batch-speed profile
  (``edgesrm.speed``), which is kept in the speed cache for the written file, so that sc's
  launch policy and ``auto`` use the measured numbers for it;
- KL divergence against the source on reasoning text (``edgesrm.quality``).

The table lists every candidate that fits ``memory_mb`` and marks the Pareto front (no other
candidate is at least as fast, as small and as close to the source, and better in one). The
recommendation: for ``sc``, the fastest at ``paths`` sequences; for ``cot``, at 1; among the
candidates whose KL is at most Q4_K_M's (the common default), else the closest to the source.
Nothing about kernels is hard-coded: a mix that keeps batched decoding fast (Q4_K where Q4_K_M
puts Q6_K) wins only when it measures faster here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import EdgesrmError

# Candidates: (name, llama ftype, tensor type overrides). "Q4_K_M-Q4K" is Q4_K_M with Q4_K where
# Q4_K_M puts Q6_K (half of ffn_down, attn_v; the output keeps its own type).
CANDIDATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Q4_0": ("Q4_0", ()),
    "IQ4_NL": ("IQ4_NL", ()),
    "Q4_K_S": ("Q4_K_S", ()),
    "Q4_K_M": ("Q4_K_M", ()),
    "Q4_K_M-Q4K": ("Q4_K_M", ("ffn_down=q4_k", "attn_v=q4_k")),
    "Q5_K_M": ("Q5_K_M", ()),
    "Q6_K": ("Q6_K", ()),
    "Q8_0": ("Q8_0", ()),
}
WITH_IMATRIX = {"IQ3_XXS": ("IQ3_XXS", ()), "Q3_K_S": ("Q3_K_S", ())}  # worth trying only with a matrix
BASELINE = "Q4_K_M"


@dataclass
class Measured:
    """One candidate on this machine."""

    name: str
    path: str
    size_mb: float
    peak_rss_mb: float
    speeds: dict[int, float]  # batch width -> aggregate tokens/s
    kl_mean: float
    kl_p99: float
    top1: float
    fits: bool = True
    pareto: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict: what was not measured is None (JSON has no NaN)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def candidates(names: list[str] | None, *, imatrix: bool) -> dict[str, tuple[str, tuple[str, ...]]]:
    known = {**CANDIDATES, **WITH_IMATRIX}
    if names:
        unknown = [n for n in names if n.upper() not in {k.upper() for k in known}]
        if unknown:
            raise EdgesrmError(f"unknown candidate {unknown[0]!r}; choose from {', '.join(known)}")
        by_upper = {k.upper(): k for k in known}
        return {by_upper[n.upper()]: known[by_upper[n.upper()]] for n in names}
    return {**CANDIDATES, **(WITH_IMATRIX if imatrix else {})}


def probe(path: str, paths: int, threads: int | None) -> dict:
    """In a child process: load ``path``, measure its batch-speed profile up to ``paths`` sequences
    (now, never from the speed cache: decoding ``paths`` sequences is also what the peak RSS must
    include) and report it with the process's peak RSS (MiB)."""
    import resource

    from . import speed
    from .engine import Engine, EngineConfig

    with Engine(path, EngineConfig(n_threads=threads, max_sequences=max(paths, 1), n_ctx=4096)) as engine:
        speeds = speed.measure_widths(engine, speed.profile_widths(min(paths, engine.max_parallel)))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20
    return {"speeds": {str(w): s for w, s in speeds.items()}, "peak_rss_mb": peak_mb}


def _probe_in_child(path: Path, paths: int, threads: int | None) -> dict:
    code = (f"import json; from edgesrm.tune import probe; "
            f"print(json.dumps(probe({str(path)!r}, {paths}, {threads!r})))")
    # -P (Python 3.11+): the current directory is not put on the import path, so a json.py there
    # cannot shadow the standard library in the child.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    run = subprocess.run([sys.executable, *safe_path, "-c", code], capture_output=True, text=True)
    if run.returncode < 0 or "MemoryError" in run.stderr:  # killed (the OOM killer): it does not fit
        return {"speeds": {}, "peak_rss_mb": float("nan"), "killed": f"signal {-run.returncode}"
                if run.returncode < 0 else "out of memory"}
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:  # this candidate is not measured; the others still are
        errors = run.stderr.strip().splitlines()
        reason = re.sub(r"^[\w.]+(Error|Exception): ", "", errors[-1]) if errors else f"exit status {run.returncode}"
        return {"speeds": {}, "peak_rss_mb": float("nan"), "failed": reason}
    return json.loads(lines[-1])


def pareto(rows: list[Measured], width: int) -> None:
    """Mark the rows no other row dominates in (speed at ``width``, peak memory, KL)."""
    for row in rows:
        row.pareto = row.fits and not any(
            other is not row and other.fits
            and other.speeds[width] >= row.speeds[width] and other.peak_rss_mb <= row.peak_rss_mb
            and other.kl_mean <= row.kl_mean
            and (other.speeds[width] > row.speeds[width] or other.peak_rss_mb < row.peak_rss_mb
                 or other.kl_mean < row.kl_mean)
            for other in rows)


def recommend(rows: list[Measured], width: int) -> Measured:
    """The fastest at ``width`` among the fitting candidates no further from the source than
    Q4_K_M (or, without Q4_K_M among them, the closest to the source)."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        raise EdgesrmError("no candidate fits the memory budget")
    base = next((r for r in rows if r.name == BASELINE), None)
    good = [r for r in fitting if base is not None and r.kl_mean <= base.kl_mean * 1.0001]
    if not good:
        return min(fitting, key=lambda r: r.kl_mean)
    return max(good, key=lambda r: r.speeds[width])


def tune(model: str | Path, out: str | Path, *, memory_mb: float, strategy: str = "sc", paths: int = 8,
         names: list[str] | None = None, imatrix: str | Path | None = None, traces: int = 4,
         text: str | None = None, threads: int | None = None, force: bool = False,
         log: Callable[[str], None] = lambda m: None,
         on_trace: Callable[[], None] | None = None) -> tuple[list[Measured], Measured]:
    """Measure the candidates made from ``model`` (a path or a store name; best an f16/bf16 GGUF),
    write the recommended one to ``out`` and return (every row, the recommended row).

    ``memory_mb``: what the process may take at its peak (MiB); ``strategy``: ``sc`` judges speed
    at ``paths`` sequences, ``cot`` at one; ``names``: the candidates (default: ``CANDIDATES``,
    and ``WITH_IMATRIX`` with an ``imatrix``); ``text``: the KL text (default: the source's
    reasoning on ``traces`` GSM8K test questions; ``on_trace()`` after each). Raises ``EdgesrmError`` for bad input (before
    the work) and when nothing fits ``memory_mb``."""
    from .budget import ModelShape, estimate_memory
    from .convert import quantize
    from .convert.quantize import UNQUANTIZED_FILE_TYPES, input_file_type, quant_type
    from .imatrix import check_against
    from .imatrix import read as read_imatrix
    from .convert.writer import check_destination, remove_stale
    from .models import resolve_model
    from .quality import check_text, compare_many, reasoning_text

    if strategy not in ("sc", "cot"):
        raise EdgesrmError(f"strategy must be sc or cot, got {strategy!r}")
    if not isinstance(paths, int) or not 1 <= paths <= 64:
        raise EdgesrmError(f"paths must be 1 to 64, got {paths!r}")
    if not isinstance(memory_mb, (int, float)) or not memory_mb > 0:
        raise EdgesrmError(f"memory must be a positive number of MiB, got {memory_mb!r}")
    src = resolve_model(str(model))
    out = Path(out).expanduser()
    check_destination(out, force, inputs=[src] + ([Path(imatrix).expanduser()] if imatrix is not None else []))
    chosen = candidates(names, imatrix=imatrix is not None)
    for name, (quant, _) in chosen.items():  # a type that needs an importance matrix, without one
        quant_type(quant, imatrix=imatrix is not None)
    if imatrix is not None:  # another model's matrix is refused now, not once per candidate
        check_against(read_imatrix(Path(imatrix).expanduser()), src)
    width = paths if strategy == "sc" else 1
    source_type = input_file_type(src)
    requantize = source_type is not None and source_type not in UNQUANTIZED_FILE_TYPES
    if requantize:
        log(f"note: {src.name} is already quantized; candidates are requantized from it (quality is lost twice: "
            "tune an f16/bf16 file when you have one)")
    if text is None:
        log(f"KL text: {src.name}'s reasoning on {traces} GSM8K test questions (generated once, cached)")
        text = reasoning_text(src, traces, threads=threads, on_trace=on_trace)
    check_text(src, text, threads=threads)  # too short for KL: said now, not after every candidate
    rows: list[Measured] = []
    failures: list[str] = []
    remove_stale(out.parent, r"edgesrm-tune-(\d+)-.*")  # candidates a killed tune left (GBs)
    work = Path(tempfile.mkdtemp(prefix=f"edgesrm-tune-{os.getpid()}-", dir=out.parent))
    try:
        for i, (name, (quant, overrides)) in enumerate(chosen.items(), 1):
            log(f"[{i}/{len(chosen)}] {name}: quantizing, then measuring speed (1 to {paths} sequences), "
                "memory and KL")
            path = work / f"{src.stem}-{name}.gguf"
            try:
                quantize(src, path, quant, threads=threads, allow_requantize=requantize, imatrix=imatrix,
                         tensor_types=overrides)
            except EdgesrmError as exc:
                log(f"  {name} skipped: {exc}")
                failures.append(f"{name}: {exc}")
                continue
            # A first cut on the estimate (weights + KV cache + buffers): what is far over is not measured.
            est = estimate_memory(ModelShape.of(path), n_ctx=4096, kv_type="f16", n_seqs=paths, n_batch=512)
            if est.total_mb > 1.5 * memory_mb:
                rows.append(Measured(name, str(path), path.stat().st_size / 2**20, est.total_mb, {}, float("nan"),
                                     float("nan"), float("nan"), fits=False, notes=["estimated far over the budget"]))
                continue
            probed = _probe_in_child(path, paths, threads)
            if "failed" in probed:
                log(f"  {name} skipped: measuring it failed: {probed['failed']}")
                failures.append(f"{name}: measuring it failed: {probed['failed']}")
                continue
            if "killed" in probed:
                rows.append(Measured(name, str(path), path.stat().st_size / 2**20, est.total_mb, {}, float("nan"),
                                     float("nan"), float("nan"), fits=False,
                                     notes=[f"the measuring process was stopped ({probed['killed']})"]))
                continue
            rows.append(Measured(name, str(path), path.stat().st_size / 2**20, probed["peak_rss_mb"],
                                 {int(w): s for w, s in probed["speeds"].items()}, float("nan"), float("nan"),
                                 float("nan"), fits=probed["peak_rss_mb"] <= memory_mb))
        if not rows:
            raise EdgesrmError(f"no candidate could be made and measured ({failures[0]})" if failures
                               else "no candidates")
        measured = [r for r in rows if r.speeds]
        if not any(r.fits for r in measured):  # before the KL pass, which would be wasted
            peaks = [r.peak_rss_mb for r in measured if math.isfinite(r.peak_rss_mb)]
            smallest = min(peaks or [r.peak_rss_mb for r in rows])
            how = "peaked at" if peaks else "was estimated at"  # far over the budget: not run at all
            hint = "fewer --paths or a smaller model" if paths > 1 else "a smaller model or a larger --memory"
            raise EdgesrmError(f"no candidate fits {memory_mb:,.0f} MiB: the smallest {how} {smallest:,.0f} MiB "
                               f"with {paths} sequence{'s' * (paths > 1)} (try {hint})")
        log(f"KL against {src.name} ({len(measured)} candidates; the source decodes the text once)")
        for row, quality in zip(measured, compare_many([r.path for r in measured], src, text, threads=threads,
                                                       max_chunks=8)):
            row.kl_mean, row.kl_p99, row.top1 = quality.kl_mean, quality.kl_p99, quality.top1
        pareto(measured, width)
        best = recommend(measured, width)
        shutil.move(best.path, out)
        _keep_profile(out, best, threads)
        for row in rows:  # the other candidates are deleted with the work directory
            row.path = str(out) if row is best else ""
        return rows, best
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _keep_profile(out: Path, best: Measured, threads: int | None) -> None:
    """File the measured profile under the written file (the speed cache is keyed by file name,
    size and threads), so that sc and auto on it use what tune measured."""
    from .engine.backend import default_threads
    from .speed import remember_file

    remember_file(out, threads or default_threads(), best.speeds)


def table(rows: list[Measured], width: int, best: Measured) -> list[str]:
    """The rows as a markdown table, the recommended one marked."""
    head = f"| candidate | size MiB | peak RSS MiB | tok/s @1 | tok/s @{width} | KL mean | KL p99 | top-1 | Pareto |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in sorted(rows, key=lambda r: r.size_mb):
        if not r.speeds:
            lines.append(f"| {r.name} | {r.size_mb:,.0f} | ~{r.peak_rss_mb:,.0f} (est.) | - | - | - | - | - | over budget |")
            continue
        mark = " (recommended)" if r.name == best.name else ""
        lines.append(f"| {r.name}{mark} | {r.size_mb:,.0f} | {r.peak_rss_mb:,.0f}{'' if r.fits else ' (over)'} | "
                     f"{r.speeds.get(1, float('nan')):.1f} | {r.speeds.get(width, float('nan')):.1f} | {r.kl_mean:.4f} | "
                     f"{r.kl_p99:.3f} | {100 * r.top1:.1f}% | {'yes' if r.pareto else ''} |")
    return lines
