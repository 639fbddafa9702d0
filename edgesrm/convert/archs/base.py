"""What the supported families share: a decoder-only transformer in Hugging Face's layout.

A family class reads config.json into hyper-parameters (with a clear error for anything
missing or inconsistent), writes them as GGUF metadata, and plans the tensors: each Hugging
Face tensor is named by gguf-py's ``TensorNameMap``, checked against the shape the config
implies, given an output type and, where llama.cpp stores it differently, a transform.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import gguf
import numpy as np

from ...errors import EdgesrmError
from ..safetensors import TensorRef
from ..writer import BF16, F16, F32, Q8_0, ArraySource, OutTensor, Transform

T = gguf.MODEL_TENSOR
OUTTYPES: dict[str, gguf.GGMLQuantizationType] = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0}
FILE_TYPES = {F32: gguf.LlamaFileType.ALL_F32, F16: gguf.LlamaFileType.MOSTLY_F16,
              BF16: gguf.LlamaFileType.MOSTLY_BF16, Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}

# Checkpoint tensors that carry nothing llama.cpp needs.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attention.masked_bias", "attention.bias")

# The layers every family has, as Hugging Face names them (under model.layers.N.).
LAYER_TENSORS = (
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


class Decoder:
    """A decoder-only transformer family; subclasses set the class variables and adjust."""

    hf_architectures: ClassVar[tuple[str, ...]]
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    tied_default: ClassVar[bool] = False  # tie_word_embeddings when config.json does not say
    rope_theta_default: ClassVar[float] = 10000.0
    prefer_sentencepiece: ClassVar[bool] = False
    trim_vocab: ClassVar[bool] = False  # drop embedding rows the tokenizer has no token for
    extra_layer_tensors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        self.n_layer = self._int("num_hidden_layers")
        self.n_embd = self._int("hidden_size")
        self.n_ff = self._int("intermediate_size")
        self.n_head = self._int("num_attention_heads")
        self.n_head_kv = self._int("num_key_value_heads", self.n_head)
        self.vocab_size = self._int("vocab_size")
        if not self.n_head or not self.n_head_kv:
            raise self.bad("it has no attention heads (num_attention_heads or num_key_value_heads is 0)")
        explicit_head_dim = config.get("head_dim")
        if explicit_head_dim is None and self.n_embd % self.n_head:
            raise self.bad(f"hidden_size {self.n_embd} is not a multiple of num_attention_heads {self.n_head}")
        self.head_dim = self._int("head_dim", self.n_embd // self.n_head)
        self.explicit_head_dim = explicit_head_dim is not None
        if self.n_head % self.n_head_kv:
            raise self.bad(f"num_attention_heads {self.n_head} is not a multiple of num_key_value_heads {self.n_head_kv}")
        self.n_ctx = self._int("max_position_embeddings", 0) or None
        self.rms_eps = self._float("rms_norm_eps", 1e-6)
        self.tied = config.get("tie_word_embeddings", self.tied_default)
        if not isinstance(self.tied, bool):
            raise self.bad(f"tie_word_embeddings is {self.tied!r}, not true or false")
        self.rope = rope_parameters(config, self.bad)
        self.rope_theta = self.number("rope_theta", self.rope.get("rope_theta", config.get("rope_theta",
                                                                                            self.rope_theta_default)))

    # -- config helpers ----------------------------------------------------------------

    def bad(self, why: str) -> EdgesrmError:
        return EdgesrmError(f"config.json in {self.directory} is not a valid {self.hf_architectures[0]} config: {why}")

    def _int(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise self.bad(f"it has no {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.bad(f"{key} is {value!r}, not a non-negative integer")
        return value

    def _float(self, key: str, default: float | None = None) -> float:
        return self.number(key, self.config.get(key, default))

    def number(self, key: str, value: Any) -> float:
        """``value`` (config.json's ``key``) as a float, or the error saying it is not a number."""
        if value is None:
            raise self.bad(f"it has no {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.bad(f"{key} is {value!r}, not a number")
        return float(value)

    # -- metadata ------------------------------------------------------------------------

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        w.add_block_count(self.n_layer)
        if self.n_ctx:
            w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_rope_freq_base(self.rope_theta)
        if self.explicit_head_dim:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        self.write_rope_scaling(w)

    def write_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        kind = self.rope.get("rope_type", self.rope.get("type", "default"))
        if kind in (None, "default"):
            return
        factor = self.rope.get("factor")
        if kind == "linear" and factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif kind == "yarn" and factor:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            original = self.rope.get("original_max_position_embeddings") or self.n_ctx
            w.add_rope_scaling_orig_ctx_len(int(original))
        else:
            raise self.bad(f"rope scaling {kind!r} is not supported for {self.name}")

    # -- tensors ---------------------------------------------------------------------------

    def required_tensors(self) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if not self.tied:
            names.append("lm_head.weight")
        for i in range(self.n_layer):
            names += [f"model.layers.{i}.{n}" for n in (*LAYER_TENSORS, *self.extra_layer_tensors)]
        return names

    def expected_shape(self, kind: T, bias: bool) -> tuple[int, ...] | None:
        """The shape config.json implies for a tensor (numpy order), ``None`` if unknown."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        if bias:
            return {T.ATTN_Q: (q,), T.ATTN_K: (kv,), T.ATTN_V: (kv,), T.ATTN_OUT: (self.n_embd,),
                    T.FFN_GATE: (self.n_ff,), T.FFN_UP: (self.n_ff,), T.FFN_DOWN: (self.n_embd,)}.get(kind)
        return {
            T.TOKEN_EMBD: (self.vocab_size, self.n_embd), T.OUTPUT: (self.vocab_size, self.n_embd),
            T.OUTPUT_NORM: (self.n_embd,), T.ATTN_NORM: (self.n_embd,), T.FFN_NORM: (self.n_embd,),
            T.ATTN_POST_NORM: (self.n_embd,), T.FFN_PRE_NORM: (self.n_embd,), T.FFN_POST_NORM: (self.n_embd,),
            T.ATTN_Q: (q, self.n_embd), T.ATTN_K: (kv, self.n_embd), T.ATTN_V: (kv, self.n_embd),
            T.ATTN_OUT: (self.n_embd, q), T.ATTN_Q_NORM: (self.head_dim,), T.ATTN_K_NORM: (self.head_dim,),
            T.FFN_GATE: (self.n_ff, self.n_embd), T.FFN_UP: (self.n_ff, self.n_embd),
            T.FFN_DOWN: (self.n_embd, self.n_ff),
        }.get(kind)

    def transform(self, kind: T, hf_name: str) -> tuple[Transform | None, int]:
        """How llama.cpp's layout differs from Hugging Face's for this tensor: (fn, row block)."""
        return None, 1

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors llama.cpp wants that the checkpoint does not have (computed from config)."""
        return []

    def select_weights(self, weights: Mapping[str, TensorRef]) -> tuple[dict[str, TensorRef], str | None]:
        """The checkpoint tensors this family converts, under the names ``plan`` expects, and a
        note on what was left out (``None``: nothing). Multimodal checkpoints override this."""
        return dict(weights), None

    def ignored(self, hf_name: str) -> bool:
        return hf_name.endswith(IGNORED_SUFFIXES) or (self.tied and hf_name == "lm_head.weight")

    def plan(self, weights: Mapping[str, TensorRef], outtype: str, n_vocab: int) -> list[OutTensor]:
        """The GGUF tensors, in the order they are stored in the checkpoint (sequential reads)."""
        missing = [n for n in self.required_tensors() if n not in weights]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise EdgesrmError(f"the checkpoint in {self.directory} has no tensor {missing[0]}{more}, "
                               f"which a {self.hf_architectures[0]} with this config.json needs")
        names = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)
        planned: list[tuple[tuple[str, int], OutTensor]] = []
        sources: dict[str, str] = {}
        for hf_name, ref in weights.items():
            if self.ignored(hf_name):
                continue
            found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
            block = re.search(r"\.layers\.(\d+)\.", hf_name)
            if found is None or (block and int(block.group(1)) >= self.n_layer):
                raise EdgesrmError(f"the checkpoint has a tensor {hf_name} that a {self.hf_architectures[0]} "
                                   f"with {self.n_layer} layers does not have")
            kind, gguf_name = found
            if gguf_name in sources:
                raise EdgesrmError(f"the checkpoint has both {sources[gguf_name]} and {hf_name}, "
                                   f"which are the same tensor ({gguf_name})")
            sources[gguf_name] = hf_name
            bias = gguf_name.endswith(".bias")
            expected = self.expected_shape(kind, bias)
            if expected is not None and ref.shape != expected:
                raise EdgesrmError(f"tensor {hf_name} has shape {list(ref.shape)} but config.json implies "
                                   f"{list(expected)}")
            ref.check_convertible()
            shape = ref.shape
            if kind in (T.TOKEN_EMBD, T.OUTPUT) and n_vocab != shape[0]:
                if n_vocab > shape[0]:
                    raise EdgesrmError(f"the tokenizer has {n_vocab:,} tokens but {hf_name} has only "
                                       f"{shape[0]:,} rows")
                shape = (n_vocab, *shape[1:])  # trimmed to the tokenizer (trim_vocab families)
            transform, row_block = self.transform(kind, hf_name)
            out = OutTensor(gguf_name, ref, shape, self.tensor_type(shape, outtype), transform, row_block)
            planned.append(((str(ref.path), ref.offset), out))
        planned.sort(key=lambda item: item[0])
        extra = [OutTensor(name, ArraySource(name, a.astype(np.float32)), a.shape, F32)
                 for name, a in self.extra_tensors()]
        return extra + [t for _, t in planned]

    @staticmethod
    def tensor_type(shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
        """1-D tensors (norms, biases) stay f32, as llama.cpp expects; matrices take ``outtype``."""
        qtype = OUTTYPES[outtype]
        if len(shape) < 2:
            return F32
        if qtype == Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q8_0][0]:
            return F16  # rows must be whole Q8_0 blocks
        return qtype


ROPE_NUMBERS = ("rope_theta", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_parameters(config: Mapping[str, Any], bad: Callable[[str], EdgesrmError],
                    layer_type: str = "full_attention") -> dict[str, Any]:
    """RoPE settings: ``rope_parameters`` (transformers 5) or ``rope_scaling`` (older configs).
    Given per layer type (Gemma 3), those of ``layer_type``; otherwise they are the global
    (full attention) layers'. Numbers are checked to be numbers."""
    key = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    params = config.get(key) or {}
    if isinstance(params, dict) and "full_attention" in params:
        key, params = f"{key}.{layer_type}", params.get(layer_type) or {}
    elif layer_type != "full_attention":
        return {}
    if not isinstance(params, dict):
        raise bad(f"{key} is {params!r}, not an object")
    for name in ROPE_NUMBERS:
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise bad(f"{key}.{name} is {value!r}, not a number")
    return dict(params)


def permute_for_rope(head_dim: int) -> Transform:
    """Hugging Face rotates the two halves of each head; llama.cpp's Llama rotates pairs.

    Reordering each head's rows from [half 1 | half 2] to interleaved pairs makes the two
    computations identical. Works on slices of whole heads (weights and biases alike).
    """
    half = head_dim // 2

    def permute(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, 2, half, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    return permute
