"""Helpers for the converter tests: llama.cpp's per-position log-probs, transformers' reference.

The checkpoints come from scripts/make_test_checkpoints.py (imported from its path, so the
same code makes the test fixtures and the benchmark's checkpoint).
"""

from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgesrm.engine.backend import lib, recent_errors, use_extra_buffer_types

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


checkpoints = load_script("make_test_checkpoints")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


class LlamaCpp:
    """A converted GGUF loaded in llama.cpp, with one context that returns every position's logits.

    Flash attention is off and the KV cache is f32: on the CPU, flash attention rounds queries
    to f16, which would add ~0.01 of noise to every comparison and hide conversion errors of
    that size. (The engine's own settings are exercised by the greedy-continuation test.)
    """

    def __init__(self, gguf: Path, n_ctx: int = 256) -> None:
        llama = self.llama = lib()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = use_extra_buffer_types()  # AMX builds crash (edgesrm.engine.backend)
        self.model = llama.llama_model_load_from_file(str(gguf).encode(), params)
        assert self.model, f"llama.cpp cannot load {gguf}: {recent_errors()}"
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = n_ctx
        ctx_params.n_threads = ctx_params.n_threads_batch = 1  # robust on a busy machine
        ctx_params.type_k = ctx_params.type_v = 0  # f32
        ctx_params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama.llama_init_from_model(self.model, ctx_params)
        assert self.ctx, recent_errors()
        self.batch = llama.llama_batch_init(n_ctx, 0, 1)

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc) -> None:
        self.llama.llama_batch_free(self.batch)
        self.llama.llama_free(self.ctx)
        self.llama.llama_model_free(self.model)

    def _decode(self, tokens: list[int], start: int, all_logits: bool) -> None:
        b = self.batch
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = t, start + i, 1, 0
            b.logits[i] = all_logits or i == len(tokens) - 1
        b.n_tokens = len(tokens)
        assert self.llama.llama_decode(self.ctx, b) == 0, recent_errors()

    def _row(self, i: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.llama.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """Next-token log-probabilities after each of ``tokens`` (one decode, all positions)."""
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)
        self._decode(tokens, 0, all_logits=True)
        return log_softmax(np.stack([self._row(i) for i in range(len(tokens))]))

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        """``n`` greedy tokens after ``tokens`` (end-of-text included, not stopped at)."""
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)
        self._decode(tokens, 0, all_logits=False)
        out = [int(np.argmax(self._row(len(tokens) - 1)))]
        while len(out) < n:
            self._decode([out[-1]], len(tokens) + len(out) - 1, all_logits=True)
            out.append(int(np.argmax(self._row(0))))
        return out

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode()
        buf = (ctypes.c_int32 * (len(data) + 8))()
        n = self.llama.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, True)
        assert n >= 0
        return list(buf[:n])

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.llama.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None


def hf_model(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_logprobs(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double().numpy()
    return log_softmax(logits)


def hf_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def compare(ours: np.ndarray, reference: np.ndarray, bound: float) -> tuple[float, int, int]:
    """(max |difference|, positions where top-1 must agree, of those, how many do).

    Top-1 must agree where the reference's top-2 margin exceeds the bound: random weights
    give near-ties, which any rounding may swap.
    """
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    diff = float(np.abs(ours - reference).max())
    top2 = np.sort(reference, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > bound
    agree = ours.argmax(-1) == reference.argmax(-1)
    return diff, int(decided.sum()), int((agree & decided).sum())


def edgesrm_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``edgesrm convert|quantize ...`` as a user would (the commands registered on edgesrm's CLI)."""
    return subprocess.run([sys.executable, "-m", "edgesrm", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_on_a_terminal(command: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a pseudo-terminal 100 columns wide (where
    progress bars show): its exit status and everything it wrote there."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    shown = b""
    while True:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            shown += data
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=timeout), shown.decode("utf-8", "replace")


def hf_greedy(model, tokens: list[int], n: int, eos: int | None = None) -> tuple[list[int], list[float]]:
    """Transformers' greedy continuation, and the top-2 log-prob margin at each step."""
    import torch

    out: list[int] = []
    margins: list[float] = []
    past = None
    step_input = torch.tensor([tokens])
    with torch.no_grad():
        for _ in range(n):
            result = model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = result.past_key_values
            logp = torch.log_softmax(result.logits[0, -1].double(), -1)
            top2 = torch.topk(logp, 2).values
            margins.append(float(top2[0] - top2[1]))
            out.append(int(logp.argmax()))
            if out[-1] == eos:
                break
            step_input = torch.tensor([[out[-1]]])
    return out, margins


def kl_divergence(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Mean over positions of KL(p || q), in nats."""
    return float((np.exp(p_log) * (p_log - q_log)).sum(-1).mean())


def gguf_fields(path: Path, *keys: str) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: (reader.get_field(k).contents() if reader.get_field(k) is not None else None) for k in keys}
