"""Qwen2ForCausalLM: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen.

Same layout as llama.cpp's qwen2 (rotate-half RoPE, so no permutation), plus biases on the
q, k and v projections, which every Qwen2 checkpoint has.
"""

from __future__ import annotations

import gguf

from .base import Decoder


class Qwen2(Decoder):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    extra_layer_tensors = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")

    def __init__(self, config, directory) -> None:
        super().__init__(config, directory)
        if config.get("use_sliding_window"):
            raise self.bad("use_sliding_window is true, which llama.cpp's qwen2 does not implement")
