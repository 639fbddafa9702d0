"""LlamaForCausalLM: SmolLM/SmolLM2, Llama 2/3, DeepSeek-R1-Distill-Llama.

Two differences from the Hugging Face layout:
- llama.cpp's Llama rotates interleaved pairs where Hugging Face rotates half-heads, so the
  rows of q_proj and k_proj (and their biases) are permuted within each head;
- Llama 3's rope scaling ("rope_type": "llama3") becomes a ``rope_freqs`` tensor of per-
  frequency divisors, which llama.cpp applies in every layer.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from .base import Decoder, T, Transform, permute_for_rope


class Llama(Decoder):
    hf_architectures = ("LlamaForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_vocab_size(self.vocab_size)
        w.add_rope_dimension_count(self.head_dim)

    def write_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        if self.rope.get("rope_type", self.rope.get("type")) == "llama3":
            return  # carried by the rope_freqs tensor
        super().write_rope_scaling(w)

    def transform(self, kind: T, hf_name: str) -> tuple[Transform | None, int]:
        if kind in (T.ATTN_Q, T.ATTN_K):
            return permute_for_rope(self.head_dim), self.head_dim
        return None, 1

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        if self.rope.get("rope_type", self.rope.get("type")) != "llama3":
            return []
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [(name, llama3_rope_divisors(self.rope, self.rope_theta, self.head_dim))]


def llama3_rope_divisors(params: dict, theta: float, head_dim: int) -> np.ndarray:
    """How much Llama 3 slows each rotary frequency down (1 = unchanged).

    Short wavelengths are kept, wavelengths beyond the original context are divided by
    ``factor``, and those in between are blended smoothly (Meta's Llama 3.1 recipe).
    """
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    original = float(params.get("original_max_position_embeddings", 8192))
    freqs = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * math.pi / freqs
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    divisors = 1.0 / ((1.0 - smooth) / factor + smooth)
    divisors[wavelength < original / high] = 1.0
    divisors[wavelength > original / low] = factor
    return divisors.astype(np.float32)
