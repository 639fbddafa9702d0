"""Bad input and safe output: every problem is one ``error:`` line, and OUT is never left half-written.

The commands run as a user runs them (a subprocess, exit codes, stderr). Each bad checkpoint
is a copy of a tiny good one, damaged in one way.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convert_support import checkpoints, edgesrm_cli, gguf_fields, run_on_a_terminal

from edgesrm.convert import convert, quantize
from edgesrm.errors import EdgesrmError


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    return checkpoints.tiny_checkpoint(root / "tiny-llama", "llama", num_hidden_layers=1)


@pytest.fixture
def ckpt(good, tmp_path) -> Path:
    """A fresh copy of the good checkpoint, to damage."""
    return Path(shutil.copytree(good, tmp_path / "ckpt"))


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temporary left


def run_convert(ckpt: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return edgesrm_cli("convert", str(ckpt), "-o", str(out), "--no-progress", *args)


def tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def save(path: Path, data: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(data, path)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, ensure_ascii=False))


UP = "model.layers.0.mlp.up_proj.weight"


def damage(ckpt: Path, kind: str) -> tuple[str, ...]:
    """Break ``ckpt`` one way; return fragments the error must contain."""
    weights = ckpt / "model.safetensors"
    if kind == "missing config":
        (ckpt / "config.json").unlink()
        return ("no config.json",)
    if kind == "missing weights":
        weights.unlink()
        return ("no weights in", "model.safetensors")
    if kind == "missing shard":
        data = tensors(weights)
        weights.unlink()
        names = sorted(data)
        save(ckpt / "model-00001-of-00002.safetensors", {n: data[n] for n in names[:3]})
        index = {n: ("model-00001-of-00002.safetensors" if i < 3 else "model-00002-of-00002.safetensors")
                 for i, n in enumerate(names)}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
        return ("missing weight shard", "model-00002-of-00002.safetensors")
    if kind == "missing tokenizer":
        (ckpt / "tokenizer.json").unlink()
        return ("no tokenizer",)
    if kind == "truncated weights":
        size = weights.stat().st_size
        with open(weights, "r+b") as f:
            f.truncate(size // 2)
        return ("truncated", "model.safetensors")
    if kind == "corrupt header":
        with open(weights, "r+b") as f:
            f.seek(8)
            f.write(b"\xff\xfe{not json")
        return ("corrupt", "model.safetensors")
    if kind == "shape disagrees with config":
        edit_json(ckpt / "config.json", intermediate_size=500)
        return ("has shape", "512", "config.json implies", "500")
    if kind == "unsupported dtype":
        data = tensors(weights)
        data[UP] = data[UP].astype(np.float64)
        save(weights, data)
        return (UP, "F64", "cannot convert")
    if kind == "missing tensor":
        data = tensors(weights)
        del data[UP]
        save(weights, data)
        return ("no tensor", UP)
    if kind == "unexpected tensor":
        data = tensors(weights)
        data["model.layers.0.mlp.extra_proj.weight"] = np.zeros((4, 4), np.float32)
        save(weights, data)
        return ("model.layers.0.mlp.extra_proj.weight",)
    if kind == "unknown architecture":
        edit_json(ckpt / "config.json", architectures=["MambaForCausalLM"])
        return ("MambaForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM")
    if kind == "config without layers":
        edit_json(ckpt / "config.json", num_hidden_layers=None)
        return ("num_hidden_layers",)
    if kind == "unknown pre-tokenizer":
        edit_json(ckpt / "tokenizer.json", pre_tokenizer={"type": "Whitespace"})
        return ("pre-tokenizer", "Whitespace")
    if kind == "tokenizer larger than the embedding":
        edit_json(ckpt / "config.json", vocab_size=100)
        return ("vocab_size is 100",)
    if kind == "tokenizer normalizer is a string":
        edit_json(ckpt / "tokenizer.json", normalizer="NFC")
        return ("tokenizer.json", '"normalizer" is "NFC", not an object')
    if kind == "tokenizer added token without id":
        added = json.loads((ckpt / "tokenizer.json").read_text())["added_tokens"]
        edit_json(ckpt / "tokenizer.json", added_tokens=[*added, {"content": "<x>", "special": True}])
        return ("tokenizer.json", "needs an integer id")
    if kind == "config number is a string":
        edit_json(ckpt / "config.json", rms_norm_eps="abc")
        return ("config.json", "rms_norm_eps is 'abc', not a number")
    if kind == "config rope_parameters is a string":
        edit_json(ckpt / "config.json", rope_parameters="linear")
        return ("config.json", "rope_parameters is 'linear', not an object")
    if kind == "config is not json":
        (ckpt / "config.json").write_text("{oops")
        return ("config.json", "not valid JSON")
    raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "missing config", "missing weights", "missing shard", "missing tokenizer", "truncated weights", "corrupt header",
    "shape disagrees with config", "unsupported dtype", "missing tensor", "unexpected tensor", "unknown architecture",
    "config without layers", "unknown pre-tokenizer", "tokenizer larger than the embedding", "config is not json",
    "tokenizer normalizer is a string", "tokenizer added token without id", "config number is a string",
    "config rope_parameters is a string",
])
def test_bad_checkpoint_is_one_clear_error_and_no_output(kind, ckpt, tmp_path):
    fragments = damage(ckpt, kind)
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    assert_one_error(run_convert(ckpt, out), *fragments)
    assert_nothing_written(out)


@pytest.mark.parametrize("reader, what", [("family_for", "config.json in"), ("load_vocab", "the tokenizer files in")])
def test_an_unexpected_value_while_reading_is_one_error_naming_the_file(reader, what, good, tmp_path, monkeypatch):
    """The last line of defence: a type error no check foresaw, while config.json or the
    tokenizer is read, is one error naming the file."""
    import edgesrm.convert as conversion

    def fail(*args, **kwargs):
        return None + 1

    monkeypatch.setattr(conversion, reader, fail)
    with pytest.raises(EdgesrmError, match=f"cannot read {what} .*: a value of an unexpected type or form "
                                           "\\(TypeError"):
        convert(good, tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_nan_and_inf_give_a_warning_naming_the_tensor(ckpt, tmp_path):
    data = tensors(ckpt / "model.safetensors")
    data[UP][3, 5] = np.nan
    data["model.layers.0.mlp.down_proj.weight"][0, 0] = np.inf
    save(ckpt / "model.safetensors", data)
    out = tmp_path / "model.gguf"
    proc = run_convert(ckpt, out)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert any(UP in w and "NaN or Inf" in w for w in warnings)
    assert any("model.layers.0.mlp.down_proj.weight" in w for w in warnings)
    assert out.exists()


def test_float16_overflow_is_a_warning_suggesting_bf16(ckpt, tmp_path):
    data = tensors(ckpt / "model.safetensors")
    data[UP][0, 0] = 1e6
    save(ckpt / "model.safetensors", data)
    proc = run_convert(ckpt, tmp_path / "model.gguf", "--outtype", "f16")
    assert proc.returncode == 0
    assert UP in proc.stderr and "bf16" in proc.stderr
    assert "warning" not in run_convert(ckpt, tmp_path / "model-bf16.gguf", "--outtype", "bf16").stderr


def test_existing_output_is_kept_unless_forced(good, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"precious")
    assert_one_error(run_convert(good, out), "already exists", "--force")
    assert "force=True" not in run_convert(good, out).stderr
    with pytest.raises(EdgesrmError, match="force=True"):
        convert(good, out, progress=False)
    assert out.read_bytes() == b"precious"
    proc = run_convert(good, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_a_failure_mid_conversion_leaves_nothing_and_keeps_the_old_file(good, tmp_path, monkeypatch):
    from edgesrm.convert import writer

    real = writer._write_tensor
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_tensor", fail_on_third)
    out = tmp_path / "new.gguf"
    with pytest.raises(KeyboardInterrupt):
        convert(good, out, progress=False)
    assert_nothing_written(out)
    old = tmp_path / "old.gguf"
    old.write_bytes(b"previous model")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        convert(good, old, force=True, progress=False)
    assert old.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.gguf"]


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """``kill`` during a conversion: exit 130, nothing at OUT, no temporary file."""
    smollm2 = checkpoints.smollm2_checkpoint(checkpoints.fixture_cache())
    out = tmp_path / "model.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "edgesrm", "convert", str(smollm2), "-o", str(out),
                             "--outtype", "f32", "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".model.gguf.*.partial")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_not_enough_disk_space_is_caught_before_writing(good, tmp_path, monkeypatch):
    from edgesrm.convert import writer

    monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    with pytest.raises(EdgesrmError, match="not enough disk space"):
        convert(good, tmp_path / "model.gguf", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_output_directory_must_exist(good, tmp_path):
    assert_one_error(run_convert(good, tmp_path / "nowhere" / "model.gguf"), "does not exist")


def test_bad_options_are_one_error(good, tmp_path):
    out = tmp_path / "m.gguf"
    assert_one_error(run_convert(good, out, "--quant", "Q9_X"), "Q9_X", "Q4_K_M", "Q8_0")
    assert_one_error(run_convert(good, out, "--quant", "IQ2_XXS"), "importance matrix")
    assert_one_error(run_convert(good, out, "--revision", "main"), "--revision")
    assert_one_error(edgesrm_cli("convert", str(tmp_path / "nothing-here"), "-o", str(out)), "neither a directory")
    assert_nothing_written(out)


def test_progress_bar_counts_tensors_and_bytes(good, tmp_path):
    """On a terminal the bar shows ``tensor i/N`` and bytes written; elsewhere it stays quiet."""
    out = tmp_path / "model.gguf"
    status, text = run_on_a_terminal([sys.executable, "-m", "edgesrm", "convert", str(good), "-o", str(out)])
    assert status == 0
    from gguf import GGUFReader

    n = len(GGUFReader(out).tensors)
    assert f"tensor {n}/{n}" in text and "100%" in text and "B/s" in text
    assert "tensor" not in run_convert(good, tmp_path / "again.gguf").stderr  # not a terminal: no bar


# -- quantize ---------------------------------------------------------------------------------

def test_quantize_errors(good, tmp_path):
    from edgesrm.models import default_model_path

    f16 = convert(good, tmp_path / "f16.gguf", progress=False)
    out = tmp_path / "q.gguf"
    assert_one_error(edgesrm_cli("quantize", str(f16), str(out), "--quant", "Q7_K"), "Q7_K", "Q4_K_M")
    assert_one_error(edgesrm_cli("quantize", str(f16), str(out), "--quant", "IQ1_S"), "importance matrix")
    assert_one_error(edgesrm_cli("quantize", str(good / "config.json"), str(out), "--quant", "Q8_0"), "not a GGUF")
    assert_one_error(edgesrm_cli("quantize", str(f16), str(f16), "--quant", "Q8_0", "--force"), "overwrite the input")
    # Errors speak the interface's language: the CLI's options, the API's parameters.
    assert_one_error(edgesrm_cli("quantize", str(default_model_path()), str(out), "--quant", "Q4_0"),
                     "already quantized", "--allow-requantize")
    assert "allow_requantize" not in edgesrm_cli("quantize", str(default_model_path()), str(out), "--quant",
                                                 "Q4_0").stderr
    with pytest.raises(EdgesrmError, match="allow_requantize=True"):
        quantize(default_model_path(), out, "Q4_0")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(f16.read_bytes()[: f16.stat().st_size // 2])
    assert_one_error(edgesrm_cli("quantize", str(truncated), str(out), "--quant", "Q8_0"), "truncated")
    assert_nothing_written(out)


def test_quantize_requantizes_only_when_allowed(tmp_path):
    from edgesrm.models import default_model_path

    out = tmp_path / "q4_0.gguf"
    proc = edgesrm_cli("quantize", str(default_model_path()), str(out), "--quant", "q4_0", "--allow-requantize")
    assert proc.returncode == 0, proc.stderr
    assert gguf_fields(out, "general.file_type")["general.file_type"] == 2  # MOSTLY_Q4_0


def test_every_offered_quant_type_gives_a_loadable_model(good, tmp_path):
    from convert_support import LlamaCpp

    from edgesrm.convert import QUANT_TYPES

    f32 = convert(good, tmp_path / "f32.gguf", outtype="f32", progress=False)
    for name in QUANT_TYPES:
        out = quantize(f32, tmp_path / f"{name}.gguf", name)
        with LlamaCpp(out) as lc:
            assert np.isfinite(lc.logprobs([1, 2, 3])).all(), name
        out.unlink()
