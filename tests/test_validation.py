"""Numbers from users: every numeric argument of the Python API and every numeric option of
the command line is checked (finite, in range, of the right type) with one clear error."""

import math
import os
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

import edgesrm
from edgesrm.budget import Budget
from edgesrm.checks import INT32_MAX, MAX_CTX, MAX_SEED, MAX_SEQUENCES, MAX_THREADS, MAX_TOKENS
from edgesrm.cli import cli
from edgesrm.options import FiniteRange
from edgesrm.engine import EngineConfig, SamplingParams
from edgesrm.errors import EdgesrmError
from edgesrm.runtime import Runtime

NOT_FINITE = [math.nan, math.inf, -math.inf]
NOT_INTS = [True, False, 2.0, 2.5, "3", None, math.nan, math.inf, np.float64(3.0), np.bool_(True)]


def assert_rejected(call, *fragments: str) -> str:
    with pytest.raises(EdgesrmError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- Python API -----------------------------------------------------------------------------


@pytest.mark.parametrize("field, bad", [
    *[("max_tokens", v) for v in [0, -1, INT32_MAX + 1, 10**30, *NOT_INTS[:4], math.nan]],
    *[("deadline_s", v) for v in [0, -1.0, *NOT_FINITE, True, "10", 10**400]],
    *[("memory_mb", v) for v in [0, -5, *NOT_FINITE, False, "1500"]],
])
def test_budget_rejects_every_bad_number_naming_it(field, bad):
    message = assert_rejected(lambda: Budget(**{field: bad}), f"Budget.{field} must be")
    assert ("integer from 1 to 2,147,483,647" if field == "max_tokens" else "finite number > 0") in message


def test_budget_keeps_valid_values_and_makes_them_plain_numbers():
    b = Budget(max_tokens=np.int64(100), deadline_s=np.float32(2.5), memory_mb=1500)
    assert (b.max_tokens, b.deadline_s, b.memory_mb) == (100, 2.5, 1500.0)
    assert type(b.max_tokens) is int and type(b.deadline_s) is float and type(b.memory_mb) is float
    assert Budget() == Budget(None, None, None)
    assert Budget(deadline_s=1e300).deadline_s == 1e300  # huge but finite: no overflow anywhere


@pytest.mark.parametrize("field, bad, allowed", [
    *[("temperature", v, "0 (greedy) or a number from 1e-06 to 100") for v in [-0.1, 1e-9, 100.5, *NOT_FINITE, True, "1"]],
    *[("top_k", v, "integer from 0 to 2,147,483,647") for v in [-1, 2**31, 40.0, True, math.inf]],
    *[("top_p", v, "a number in (0, 1]") for v in [0, 1.01, -1, *NOT_FINITE, True]],
    *[("min_p", v, "a number in [0, 1)") for v in [1, -0.01, *NOT_FINITE, False]],
    *[("seed", v, "integer from 0 to 4,294,967,294") for v in [-1, 2**32 - 1, 2**64, 1.0, True, math.nan]],
])
def test_sampling_params_reject_bad_numbers(field, bad, allowed):
    assert_rejected(lambda: SamplingParams(**{field: bad}), f"{field} must be", allowed)


def test_sampling_params_keep_valid_calls():
    assert SamplingParams() == SamplingParams(0.6, 40, 0.95, 0.05, None)
    p = SamplingParams(temperature=1, top_k=np.int32(5), top_p=1, min_p=0, seed=np.uint32(7))
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.seed) == (1.0, 5, 1.0, 0.0, 7)
    assert type(p.top_k) is int and type(p.seed) is int and type(p.temperature) is float
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=1e-6, seed=2**32 - 2).seed == 2**32 - 2


@pytest.mark.parametrize("field, bad, allowed", [
    *[("n_ctx", v, f"integer from 16 to {MAX_CTX:,}") for v in [15, 0, MAX_CTX + 1, 10**12, 4096.0, True, None]],
    *[("n_threads", v, f"integer from 1 to {MAX_THREADS}") for v in [0, -1, MAX_THREADS + 1, 100000, 4.0, True]],
    *[("n_gpu_layers", v, "integer from -1 to 2,147,483,647") for v in [-2, 2**31, 10**30, 1.5, False]],
    *[("max_sequences", v, f"integer from 1 to {MAX_SEQUENCES}") for v in [0, 256, 10**9, 2.0, True, None]],
    *[("n_batch", v, f"integer from 1 to {MAX_CTX:,}") for v in [0, MAX_CTX + 1, 512.0]],
])
def test_engine_config_rejects_bad_numbers(field, bad, allowed):
    assert_rejected(lambda: EngineConfig(**{field: bad}), field, allowed)


def test_engine_config_keeps_valid_calls():
    c = EngineConfig(n_ctx=np.int64(1024), n_threads=2, n_gpu_layers=-1, max_sequences=255)
    assert (c.n_ctx, c.n_threads, c.n_gpu_layers, c.max_sequences) == (1024, 2, -1, 255)
    assert EngineConfig().n_threads is None and EngineConfig().n_gpu_layers is None
    assert_rejected(lambda: EngineConfig(kv_type=["f16"]), "unknown KV cache type")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n_ctx": 10**12}, "n_ctx must be an integer from 16 to 262,144"),
    ({"n_ctx": 4096.0}, "n_ctx must be an integer"),
    ({"threads": 100000}, "threads must be an integer from 1 to 512"),
    ({"threads": True}, "threads must be"),
    ({"gpu_layers": -5}, "gpu_layers must be an integer from -1"),
    ({"max_sequences": 0}, "max_sequences must be an integer from 1 to 255"),
    ({"memory_mb": math.nan}, "memory_mb must be a finite number > 0 (MB), got nan"),
    ({"memory_mb": math.inf}, "memory_mb must be"),
    ({"memory_mb": -1}, "memory_mb must be"),
])
def test_load_checks_its_numbers_before_loading_anything(kwargs, fragment):
    # A path that does not exist: the numbers must be refused before the file is even looked at.
    assert_rejected(lambda: edgesrm.load("/nonexistent/model.gguf", **kwargs), fragment)


@pytest.fixture(scope="module")
def runtime(engine):
    return Runtime(engine)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n": 0}, "n must be an integer from 1 to 255"),
    ({"n": 10**9}, "n must be an integer from 1 to 255"),
    ({"n": 2.0}, "n must be an integer"),
    ({"n": True}, "n must be an integer"),
    ({"max_tokens": 0}, f"max_tokens must be an integer from 1 to {MAX_TOKENS:,}"),
    ({"max_tokens": 10**18}, "max_tokens must be"),
    ({"max_tokens": 512.0}, "max_tokens must be"),
    ({"temperature": math.nan}, "temperature must be 0 (greedy) or a number from 1e-06 to 100, got nan"),
    ({"temperature": math.inf}, "temperature must be"),
    ({"temperature": -1}, "temperature must be"),
    ({"top_p": 0}, "top_p must be a number in (0, 1]"),
    ({"top_p": math.nan}, "top_p must be"),
    ({"top_k": -1}, "top_k must be an integer"),
    ({"top_k": 40.0}, "top_k must be an integer"),
    ({"min_p": 1.0}, "min_p must be a number in [0, 1)"),
    ({"seed": -1}, "seed must be an integer from 0 to 4,294,967,294"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"waits": -1}, f"waits must be an integer from 0 to {MAX_TOKENS:,}"),
    ({"waits": 1.0}, "waits must be an integer"),
    ({"budget": {"deadline_s": 5}}, "budget must be an edgesrm.Budget"),
])
def test_ask_checks_its_numbers_before_running(runtime, kwargs, fragment):
    steps = runtime.engine._n_decodes
    kwargs = {"budget": Budget(deadline_s=30), **kwargs}  # with a budget, auto would measure the speed first
    assert_rejected(lambda: runtime.ask("What is 2 + 2?", strategy="auto", **kwargs), fragment)
    assert runtime.engine._n_decodes == steps  # nothing ran, not even auto's speed probe


def test_ask_accepts_numpy_numbers(runtime):
    result = runtime.ask("What is 2 + 2?", n=np.int64(1), max_tokens=np.int32(3), temperature=np.float32(0.5), seed=1)
    assert result.completion_tokens <= 3


# -- command line -----------------------------------------------------------------------------

REQUIRED_ARGS = {"ask": ["What is 1 + 1?"], "quantize": ["in.gguf", "out.gguf", "--quant", "Q4_0"],
                 "imatrix": ["in.gguf", "-o", "out.gguf"], "tune": ["in.gguf", "-o", "out.gguf", "--memory", "100"],
                 "quality": ["in.gguf", "--reference", "ref.gguf"]}


def numeric_options():
    """Every numeric option of every command, found by looking (so a new one is covered too)."""
    found = []
    ctx = click.Context(cli)
    for name in sorted(cli.list_commands(ctx)):
        command = cli.get_command(ctx, name)
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.IntParamType,
                                                                            click.types.FloatParamType)):
                found.append((name, param))
    return found


def test_every_numeric_option_is_bounded_and_finite():
    options = numeric_options()
    names = {(c, p.opts[-1]) for c, p in options}
    assert {("ask", "--deadline"), ("ask", "--ctx"), ("eval", "--limit"), ("quantize", "--threads")} <= names
    for command, param in options:
        if isinstance(param.type, click.FloatRange):
            assert isinstance(param.type, FiniteRange), f"{command} {param.opts[-1]} lets nan and inf through"
        else:
            assert isinstance(param.type, click.IntRange), f"{command} {param.opts[-1]} has no range"
            assert param.type.min is not None and param.type.max is not None, f"{command} {param.opts[-1]}"
            assert param.type.max <= MAX_SEED


def bad_values(param: click.Option) -> list[str]:
    values = ["nan", "inf", "-inf", "abc", "1e400", ""]
    if isinstance(param.type, click.IntRange):
        values += ["2.5", "1e3", str(param.type.max + 1), str(param.type.min - 1), str(10**30)]
    else:
        values += ["-1e400"] + ([str(param.type.max * 10)] if param.type.max is not None else [])
    return values


@pytest.mark.parametrize("command, param", numeric_options(), ids=lambda x: x if isinstance(x, str) else x.opts[-1])
def test_every_numeric_option_refuses_bad_values_with_a_usage_error(command, param):
    runner = CliRunner()
    for value in bad_values(param):
        result = runner.invoke(cli, [command, *REQUIRED_ARGS.get(command, []), param.opts[-1], value])
        assert result.exit_code == 2, (value, result.output)
        assert isinstance(result.exception, SystemExit), (value, result.exception)
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and param.opts[-1] in errors[0], (value, result.output)


def edgesrm_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesrm", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.parametrize("args, fragment", [
    (["ask", "--deadline", "inf", "x"], "'inf' is not a finite number"),
    (["ask", "--deadline", "nan", "x"], "'nan' is not a finite number"),
    (["ask", "--ctx", str(10**12), "x"], "not in the range 16<=x<=262144"),
    (["ask", "-n", str(10**9), "x"], "not in the range 1<=x<=255"),
    (["ask", "--max-tokens", str(10**18), "x"], "not in the range 1<=x<=262144"),
    (["ask", "--threads", "100000", "x"], "not in the range 1<=x<=512"),
    (["ask", "--temperature", "1e-9", "x"], "temperature must be 0 (greedy) or a number from 1e-06 to 100"),
    (["quantize", "a.gguf", "b.gguf", "--quant", "Q4_0", "--threads", "100000"], "not in the range 1<=x<=512"),
])
def test_the_command_line_says_one_error_line_and_exits_non_zero(args, fragment):
    proc = edgesrm_cli(*args)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
