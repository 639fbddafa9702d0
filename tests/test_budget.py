"""Budgets: deadline bookkeeping, and memory estimates checked against llama.cpp and the
process's measured peak resident memory."""

import json
import subprocess
import sys
import time

import pytest

from edgesrm.budget import Budget, Deadline, ModelShape, estimate_memory, plan_memory
from edgesrm.engine import Engine, EngineConfig
from edgesrm.engine.backend import _log_lines, clear_errors
from edgesrm.errors import EdgesrmError


def test_budget_rejects_nonsense():
    for kwargs in ({"max_tokens": 0}, {"deadline_s": 0}, {"memory_mb": -1}):
        with pytest.raises(EdgesrmError):
            Budget(**kwargs)


def test_no_deadline_never_hurries():
    d = Deadline(None)
    d.observe_step(10.0)
    assert d.remaining == float("inf") and not d.must_answer(100) and not d.must_stop() and not d.missed


def test_deadline_reserves_the_answer_and_stops_before_overshooting():
    d = Deadline(1.0)
    for _ in range(4):
        d.observe_step(0.05)
    assert d.step_s == pytest.approx(0.05)
    assert not d.must_answer(5)  # 0.3 s of answer steps fit in ~1 s
    d.start = time.perf_counter() - 0.75  # 0.25 s left
    assert d.must_answer(5) and not d.must_stop()
    d.start = time.perf_counter() - 0.97  # 0.03 s left: the next step would end late
    assert d.must_stop() and not d.missed
    d.start = time.perf_counter() - 1.2
    assert d.missed


def test_the_last_step_is_judged_by_the_slowest_recent_one():
    d = Deadline(1.0)
    for seconds in (0.05, 0.05, 0.05, 0.2):
        d.observe_step(seconds)
    assert d.step_s == pytest.approx(0.05)  # the median plans the answer's steps
    d.start = time.perf_counter() - 0.9  # 0.1 s left: a median step fits, the slow one would not
    assert d.must_stop()

def test_compute_buffer_estimate_matches_llama_cpp(model_path):
    shape = ModelShape.of(model_path)
    assert (shape.n_layer, shape.n_embd, shape.n_vocab) == (30, 576, 49152)
    for n_batch in (512, 128):
        clear_errors()
        with Engine(model_path, EngineConfig(n_ctx=1024, n_batch=n_batch, max_sequences=1)):
            reported = [line for line in _log_lines if "compute buffer size" in line]
        mib = float(reported[-1].split("=")[1].split()[0])
        estimate = estimate_memory(shape, n_ctx=1024, kv_type="f16", n_seqs=1, n_batch=n_batch).compute_mb
        assert estimate == pytest.approx(mib, rel=0.1)


def test_plan_gives_up_kv_precision_then_batch_then_paths(model_path):
    roomy = plan_memory(model_path, 10_000, n_ctx=8192, n_seqs=8)
    assert (roomy.kv_type, roomy.n_batch, roomy.n_seqs, roomy.n_ctx) == ("f16", 512, 8, 8192)
    tight = plan_memory(model_path, roomy.total_mb - 100, n_ctx=8192, n_seqs=8)
    assert tight.total_mb <= roomy.total_mb - 100
    assert tight.n_seqs == 8 and tight.n_ctx == 8192  # paths and context kept...
    assert tight.kv_type != "f16" or tight.n_batch < 512  # ...precision or batch given up
    with pytest.raises(EdgesrmError, match=r"does not fit in 100 MB.*allow at least \d+ MB"):
        plan_memory(model_path, 100, n_ctx=8192, n_seqs=8)


MEASURE = r"""
import json, resource, sys, psutil
from edgesrm.budget import plan_memory
from edgesrm.engine import Engine, EngineConfig, SamplingParams
from edgesrm.models import default_model_path
path = default_model_path()
plan = plan_memory(path, None, n_ctx=int(sys.argv[1]), n_seqs=8, kv_type=sys.argv[2])
proc, peak = psutil.Process(), 0
with Engine(path, EngineConfig(n_ctx=plan.n_ctx, kv_type=plan.kv_type, max_sequences=8, n_batch=plan.n_batch)) as e:
    gen = e.start("Write a story about the sea. " * 90)  # longer than a batch: every buffer is touched
    for i in range(8):
        gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=48)
    while gen.active:
        gen.step()
        peak = max(peak, proc.memory_info().rss)
print(json.dumps({"estimate_mb": plan.total_mb, "peak_mb": peak / 2**20,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.parametrize("n_ctx, kv_type", [(4096, "f16"), (32768, "f16"), (32768, "q8_0")])
def test_memory_estimate_matches_measured_peak_rss(n_ctx, kv_type):
    out = subprocess.run([sys.executable, "-c", MEASURE, str(n_ctx), kv_type], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    m = json.loads(out)
    # A planner's estimate must not fall short of the real peak, and should not waste much:
    # it counts llama.cpp's whole compute buffer, of which decoding touches about half.
    assert 0.98 * m["peak_mb"] <= m["estimate_mb"] <= 1.3 * m["peak_mb"], m
