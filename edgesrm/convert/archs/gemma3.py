"""Gemma3ForCausalLM: Gemma 3 text models (270M, 1B).

What differs from the other families:
- Gemma's RMS norms multiply by ``1 + weight``; llama.cpp multiplies by the weight, so every
  norm weight is stored plus one;
- the tokenizer is SentencePiece (tokenizer.model), and the embedding has rows beyond the
  tokenizer's tokens that are dropped (llama.cpp sizes the vocabulary from the embedding);
- sliding-window attention in most layers: the window, the per-layer pattern and the local
  layers' own rope base become metadata. llama.cpp scales the embeddings by sqrt(hidden)
  itself, as Hugging Face does.
"""

from __future__ import annotations

import math
from typing import Any

import gguf
import numpy as np

from .base import Decoder, T, Transform


def plus_one(x: np.ndarray) -> np.ndarray:
    return x + np.float32(1.0)


class Gemma3(Decoder):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    tied_default = True
    rope_theta_default = 1_000_000.0
    prefer_sentencepiece = True
    trim_vocab = True
    extra_layer_tensors = ("pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
                           "self_attn.q_norm.weight", "self_attn.k_norm.weight")

    def __init__(self, config, directory) -> None:
        super().__init__(config, directory)
        self.explicit_head_dim = True  # Gemma's head size is not hidden_size / heads
        # llama.cpp scales attention by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for 27B-sized models).
        scalar = config.get("query_pre_attn_scalar", self.head_dim)
        if not (math.isclose(scalar, self.head_dim) or math.isclose(scalar, self.n_embd / self.n_head)):
            raise self.bad(f"query_pre_attn_scalar {scalar} is neither head_dim nor hidden_size / heads, "
                           "which llama.cpp's gemma3 cannot represent")
        if config.get("attn_logit_softcapping"):
            raise self.bad("attn_logit_softcapping is set, which llama.cpp's gemma3 does not implement")
        if config.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu"):
            raise self.bad(f"hidden_activation {config['hidden_activation']!r} is not supported")

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if softcap := self.config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(softcap))
        window = self.config.get("sliding_window")
        pattern = self.sliding_layers()
        if window and any(pattern):
            w.add_sliding_window(int(window))
            w.add_sliding_window_pattern(pattern)
            w.add_rope_freq_base_swa(float(self.local_rope_theta()))

    def sliding_layers(self) -> list[bool]:
        """Which layers use the sliding window: ``layer_types``, or every layer but each N-th."""
        types = self.config.get("layer_types")
        if types is not None:
            if len(types) != self.n_layer:
                raise self.bad(f"layer_types lists {len(types)} layers, num_hidden_layers is {self.n_layer}")
            return [t == "sliding_attention" for t in types]
        every = int(self.config.get("sliding_window_pattern") or self.config.get("_sliding_window_pattern") or 6)
        return [(i + 1) % every != 0 for i in range(self.n_layer)]

    def local_rope_theta(self) -> float:
        params: dict[str, Any] = (self.config.get("rope_parameters") or {}).get("sliding_attention") or {}
        return params.get("rope_theta", self.config.get("rope_local_base_freq", 10000.0))

    def transform(self, kind: T, hf_name: str) -> tuple[Transform | None, int]:
        if hf_name.endswith("norm.weight"):
            return plus_one, 1
        return None, 1
