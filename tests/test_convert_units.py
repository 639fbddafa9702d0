"""The converter's parts against the reference libraries they replace at conversion time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert_support import checkpoints, edgesrm_cli, gguf_fields

from edgesrm.convert import convert
from edgesrm.convert.safetensors import open_checkpoint, read_header
from edgesrm.errors import EdgesrmError


def test_safetensors_reader_matches_the_safetensors_library(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    rng = torch.Generator().manual_seed(0)
    tensors = {
        "bf16.matrix": torch.randn(37, 53, generator=rng).to(torch.bfloat16),
        "f16.matrix": torch.randn(64, 8, generator=rng).to(torch.float16),
        "f32.vector": torch.randn(300, generator=rng),
        "f32.matrix": torch.randn(5, 7, generator=rng),
    }
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    expected = load_file(tmp_path / "model.safetensors")
    refs = open_checkpoint(tmp_path)
    assert set(refs) == set(expected)
    for name, ref in refs.items():
        want = expected[name].float().numpy()
        assert ref.shape == tuple(want.shape)
        assert np.array_equal(ref.read_rows(0, ref.rows), want)
        assert np.array_equal(ref.read_rows(3, 5), want[3:5])  # slices read only their own rows


def test_sharded_checkpoint_converts_to_the_same_gguf(tmp_path):
    whole = checkpoints.tiny_checkpoint(tmp_path / "whole", "qwen3", num_hidden_layers=1)
    sharded = checkpoints.tiny_checkpoint(tmp_path / "sharded", "qwen3", num_hidden_layers=1, shard=True)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a = convert(whole, tmp_path / "a.gguf", outtype="f32", progress=False)
    b = convert(sharded, tmp_path / "b.gguf", outtype="f32", progress=False)
    from gguf import GGUFReader

    ta = {t.name: np.asarray(t.data) for t in GGUFReader(a).tensors}
    tb = {t.name: np.asarray(t.data) for t in GGUFReader(b).tensors}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_safetensors_header_lies_are_caught(tmp_path):
    path = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    with pytest.raises(EdgesrmError, match="spans 60 bytes"):
        read_header(path)
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(EdgesrmError, match="truncated or not a safetensors file"):
        read_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(EdgesrmError, match="only 3 bytes"):
        read_header(path)


def test_sentencepiece_reader_matches_the_sentencepiece_library(tmp_path):
    import sentencepiece as spm

    from edgesrm.convert.sentencepiece import read_model

    path = tmp_path / "tokenizer.model"
    path.write_bytes(checkpoints.sentencepiece_model())
    ours = read_model(path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert ours.pieces == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert np.allclose(ours.scores, [sp.get_score(i) for i in range(sp.vocab_size())])
    kinds = {i: 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else None
             for i in range(sp.vocab_size())}
    assert all(ours.types[i] == k for i, k in kinds.items() if k is not None)
    assert (ours.model_type, ours.byte_fallback, ours.add_dummy_prefix) == ("bpe", True, False)
    path.write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(EdgesrmError, match="not a valid SentencePiece model"):
        read_model(path)


def test_llama3_rope_divisors_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from edgesrm.convert.archs.llama import llama3_rope_divisors

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_scaling=scaling, rope_theta=500000.0,
                         max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    ours = llama3_rope_divisors(scaling, 500000.0, 128)
    assert ours.min() == 1.0 and ours.max() == 8.0  # all three regimes occur
    assert np.allclose(plain / ours, scaled.double().numpy(), rtol=1e-5)


def test_conversion_imports_neither_torch_nor_transformers(tmp_path):
    """Run a whole conversion with torch, transformers and safetensors made unimportable."""
    ckpt = checkpoints.tiny_checkpoint(tmp_path / "ckpt", "qwen2", num_hidden_layers=1)
    script = f"""
import sys
class Forbid:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "safetensors", "tokenizers", "sentencepiece"):
            raise ImportError("forbidden at conversion time: " + name)
sys.meta_path.insert(0, Forbid())
from edgesrm.convert import convert
convert({str(ckpt)!r}, {str(tmp_path / "out.gguf")!r}, quant="Q4_K_M", progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.gguf").is_file()


def make_hf_cache(home: Path, repo: str, checkpoint: Path) -> str:
    """Lay out ``checkpoint`` as huggingface-hub's cache holds a downloaded repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = home / "hub" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in checkpoint.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    return commit


def test_repo_id_from_the_hf_cache_when_offline(tmp_path):
    ckpt = checkpoints.tiny_checkpoint(tmp_path / "ckpt", "llama", num_hidden_layers=1)
    home = tmp_path / "hf-home"
    commit = make_hf_cache(home, "edgesrm-test/tiny-llama", ckpt)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out.gguf"
    proc = edgesrm_cli("convert", "edgesrm-test/tiny-llama", "-o", str(out), "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    assert gguf_fields(out, "general.name")["general.name"] == "edgesrm-test/tiny-llama"
    pinned = edgesrm_cli("convert", "edgesrm-test/tiny-llama", "--revision", commit, "-o", str(tmp_path / "p.gguf"),
                         "--no-progress", env=env)
    assert pinned.returncode == 0, pinned.stderr
    other = edgesrm_cli("convert", "edgesrm-test/tiny-llama", "--revision", "v2", "-o", str(tmp_path / "v2.gguf"),
                        env=env)
    assert other.returncode == 1 and "revision v2" in other.stderr and "HF_HUB_OFFLINE" in other.stderr
    missing = edgesrm_cli("convert", "edgesrm-test/not-cached", "-o", str(tmp_path / "x.gguf"), env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in missing.stderr


def test_what_a_killed_process_left_is_removed(tmp_path):
    """tune's candidates (GBs), compare_many's logits and a conversion's .partial carry the pid
    that made them: once no process has it and nothing changed for a while, the next run removes
    them. What a live process (or a just-changed one) owns is left alone."""
    import time

    from edgesrm.convert.writer import atomic_output, remove_stale

    gone = subprocess.Popen(["true"])
    gone.wait()
    old = time.time() - 3600

    def made(path: Path, *, age: float | None = old, directory: bool = True) -> Path:
        if directory:
            path.mkdir()
            (path / "candidate.gguf").write_bytes(b"x")
            if age is not None:
                os.utime(path / "candidate.gguf", (age, age))
        else:
            path.write_bytes(b"x")
        if age is not None:
            os.utime(path, (age, age))
        return path

    stale = made(tmp_path / f"edgesrm-tune-{gone.pid}-a1")
    live = made(tmp_path / f"edgesrm-tune-{os.getpid()}-b2")
    fresh = made(tmp_path / f"edgesrm-tune-{gone.pid}-c3", age=None)
    other = made(tmp_path / f"unrelated-{gone.pid}-d4")
    remove_stale(tmp_path, r"edgesrm-tune-(\d+)-.*")
    assert not stale.exists()
    assert live.exists() and fresh.exists() and other.exists()
    partial = made(tmp_path / f".out.gguf.{gone.pid}.partial", directory=False)
    os.utime(partial, (old, old))
    with atomic_output(tmp_path / "out.gguf", force=False, need_bytes=1) as tmp:
        tmp.write_bytes(b"ok")
    assert not partial.exists() and (tmp_path / "out.gguf").read_bytes() == b"ok"
