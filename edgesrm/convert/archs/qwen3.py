"""Qwen3ForCausalLM: Qwen3 dense models (0.6B to 32B).

Qwen2 without the q/k/v biases, with an RMS norm on each head's queries and keys
(``q_norm``, ``k_norm``) and a head size that config.json states explicitly.
"""

from __future__ import annotations

import gguf

from .base import Decoder


class Qwen3(Decoder):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    extra_layer_tensors = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
