"""Gemma3ForCausalLM: Gemma 3 text models (270M, 1B); Gemma3ForConditionalGeneration (4B and up):
its language model, without the vision tower.

What differs from the other families:
- Gemma's RMS norms multiply by ``1 + weight``; llama.cpp multiplies by the weight, so every
  norm weight is stored plus one;
- the tokenizer is SentencePiece (tokenizer.model, or a SentencePiece-style tokenizer.json),
  and the embedding has rows beyond the tokenizer's tokens that are dropped (llama.cpp sizes
  the vocabulary from the embedding);
- sliding-window attention in most layers: the window, the per-layer pattern and the local
  layers' own rope base become metadata. llama.cpp scales the embeddings by sqrt(hidden)
  itself, as Hugging Face does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from ...errors import EdgesrmError
from ..safetensors import TensorRef
from .base import Decoder, T, Transform, rope_parameters


LAYER_TYPES = {"sliding_attention", "full_attention"}


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
        scalar = self._float("query_pre_attn_scalar", self.head_dim)
        if not (math.isclose(scalar, self.head_dim) or math.isclose(scalar, self.n_embd / self.n_head)):
            raise self.bad(f"query_pre_attn_scalar {scalar:g} is neither head_dim nor hidden_size / heads, "
                           "which llama.cpp's gemma3 cannot represent")
        if config.get("attn_logit_softcapping"):
            raise self.bad("attn_logit_softcapping is set, which llama.cpp's gemma3 does not implement")
        if config.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu"):
            raise self.bad(f"hidden_activation {config['hidden_activation']!r} is not supported")
        softcap = config.get("final_logit_softcapping")
        self.softcap = None if softcap is None else self._float("final_logit_softcapping")
        self.window = self._int("sliding_window") if config.get("sliding_window") is not None else 0
        self.pattern = self.sliding_layers()
        local = rope_parameters(config, self.bad, "sliding_attention")
        self.local_rope_theta = self.number("rope_theta", local.get(
            "rope_theta", config.get("rope_local_base_freq", 10000.0)))

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if self.softcap:
            w.add_final_logit_softcapping(self.softcap)
        if self.window and any(self.pattern):
            w.add_sliding_window(self.window)
            w.add_sliding_window_pattern(self.pattern)
            w.add_rope_freq_base_swa(self.local_rope_theta)

    def sliding_layers(self) -> list[bool]:
        """Which layers use the sliding window: ``layer_types``, or every layer but each N-th."""
        types = self.config.get("layer_types")
        if types is not None:
            if not isinstance(types, list) or not all(isinstance(t, str) and t in LAYER_TYPES for t in types):
                raise self.bad(f"layer_types is {str(types)[:100]}, not a list of {' or '.join(sorted(LAYER_TYPES))}")
            if len(types) != self.n_layer:
                raise self.bad(f"layer_types lists {len(types)} layers, num_hidden_layers is {self.n_layer}")
            return [t == "sliding_attention" for t in types]
        every = self.config.get("sliding_window_pattern") or self.config.get("_sliding_window_pattern") or 6
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise self.bad(f"sliding_window_pattern is {every!r}, not a positive integer")
        return [(i + 1) % every != 0 for i in range(self.n_layer)]

    def transform(self, kind: T, hf_name: str) -> tuple[Transform | None, int]:
        if hf_name.endswith("norm.weight"):
            return plus_one, 1
        return None, 1


# Gemma3TextConfig's defaults: the text_config of Gemma3ForConditionalGeneration checkpoints
# states only what differs from them (Gemma 3 4B's lists hidden size, layers, sliding window
# and rope scaling, not heads or head size).
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}

# Where each part of a Gemma3ForConditionalGeneration sits, in the layout of the Hub's checkpoints
# (and of transformers 5's save_pretrained) and in transformers 4.5x's: (prefix, Gemma3ForCausalLM
# prefix) for the language model; the rest is left out.
TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                 ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))
LEFT_OUT = {"the vision tower": ("vision_tower.", "model.vision_tower."),
            "the multimodal projector": ("multi_modal_projector.", "model.multi_modal_projector.")}


class Gemma3ConditionalGeneration(Gemma3):
    """The language model of a Gemma3ForConditionalGeneration checkpoint, as a gemma3 GGUF.

    llama.cpp runs images through a separate mmproj file; the GGUF written here is the text
    model alone, which is exactly a Gemma3ForCausalLM with the same weights.
    """

    hf_architectures = ("Gemma3ForConditionalGeneration",)

    def __init__(self, config, directory) -> None:
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise EdgesrmError(f"config.json in {directory} is a Gemma3ForConditionalGeneration without a text_config")
        merged = {**TEXT_DEFAULTS, **text}
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
            merged["tie_word_embeddings"] = config["tie_word_embeddings"]
        super().__init__(merged, directory)

    def select_weights(self, weights: Mapping[str, TensorRef]) -> tuple[dict[str, TensorRef], str | None]:
        selected: dict[str, TensorRef] = {}
        left_out = {part: 0 for part in LEFT_OUT}
        for name, ref in weights.items():
            part = next((p for p, prefixes in LEFT_OUT.items() if name.startswith(prefixes)), None)
            if part is not None:
                left_out[part] += 1
                continue
            new = next((to + name[len(prefix):] for prefix, to in TEXT_PREFIXES if name.startswith(prefix)), name)
            selected[new] = ref  # a name matching no prefix stays, and plan() reports it as unexpected
        parts = [f"{part} ({n} tensors)" for part, n in left_out.items() if n]
        note = None
        if parts:
            note = (f"Gemma3ForConditionalGeneration: converted the language model only; left out "
                    f"{' and '.join(parts)} (llama.cpp reads images through a separate mmproj file)")
        return selected, note
