"""Quantization by llama.cpp's own quantizer (``llama_model_quantize``), through llama-cpp-python.

K-quants and i-quants choose per-tensor types with rules (which layers get more bits, which
tensors fall back when rows are not a multiple of 256) that only llama.cpp should own; we
call it rather than re-implement it. An importance matrix (``edgesrm.imatrix``) goes to it as
``llama_model_imatrix_data`` (each weight's mean squared activation per column), and
``--tensor-type PATTERN=TYPE`` overrides as ``llama_model_tensor_override`` (the first pattern
found by regex search in a tensor's name sets its type), as llama-quantize passes them.
"""

from __future__ import annotations

import ctypes
import re
from functools import lru_cache
from pathlib import Path

from ..engine.backend import clear_errors, default_threads, lib, recent_errors
from ..errors import EdgesrmError
from ..models import check_complete, read_header

# llama_ftype names (LLAMA_FTYPE_MOSTLY_*) that work without an importance matrix, in size order.
QUANT_TYPES: tuple[str, ...] = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ3_S", "IQ3_M", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16",
)
# These need an importance matrix (``edgesrm imatrix``): llama.cpp refuses them without one.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
UNQUANTIZED_FILE_TYPES = {0, 1, 32}  # ALL_F32, MOSTLY_F16, MOSTLY_BF16


def quant_type(name: str, *, imatrix: bool = False) -> int:
    """The ``llama_ftype`` for a type name (case-insensitive), or an error listing the choices;
    the types in ``NEEDS_IMATRIX`` only with ``imatrix``."""
    key = name.strip().upper() if isinstance(name, str) else ""
    if key in NEEDS_IMATRIX and not imatrix:
        raise EdgesrmError(f"{key} needs an importance matrix: make one with `edgesrm imatrix MODEL -o FILE` "
                           f"and pass it with --imatrix FILE (or choose one of {', '.join(QUANT_TYPES)})")
    if key not in QUANT_TYPES + NEEDS_IMATRIX:
        raise EdgesrmError(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES + NEEDS_IMATRIX)}")
    return int(getattr(lib(), f"LLAMA_FTYPE_MOSTLY_{key}"))


# ggml types that are not for stored weights (integers, f64, the quantizer's intermediates).
NOT_WEIGHT_TYPES = frozenset({"i8", "i16", "i32", "i64", "f64", "q8_1", "q8_k"})


@lru_cache(maxsize=1)
def ggml_types() -> dict[str, int]:
    """ggml tensor type names (lower case: ``q4_k``, ``q6_k``, ``f16``...) and their ids: gguf-py's
    list, kept where this llama.cpp's ggml gives the same name for the id (gguf-py may know newer
    types than the ggml llama-cpp-python vendors)."""
    import gguf

    from ..imatrix import _ggml

    fn = _ggml().ggml_type_name
    fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_int]
    names = {}
    for t in gguf.GGMLQuantizationType:
        name = t.name.lower()
        if name in NOT_WEIGHT_TYPES:
            continue
        if fn(int(t)) == name.upper().encode() or (fn(int(t)) or b"").lower() == name.encode():
            names[name] = int(t)
    return names


# Tensor types llama.cpp refuses to write without an importance matrix (tensor_requires_imatrix).
TENSOR_TYPES_NEEDING_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs")


def tensor_overrides(specs: list[str], tensor_names: list[str], *, imatrix: bool = False) -> list[tuple[str, int]]:
    """``PATTERN=TYPE`` strings as (pattern, ggml type id). Each pattern is a regular expression
    searched in tensor names (which are lower case) and must match at least one
    of ``tensor_names`` (the weights llama.cpp quantizes); the types in
    ``TENSOR_TYPES_NEEDING_IMATRIX`` only with ``imatrix``; TYPE is a ggml type name (``q4_k``, ``q6_k``, ``q8_0``, ``f16``...).
    Python's ``re`` checks the pattern here; llama.cpp then uses it as a C++ ``std::regex``
    (ECMAScript), which refuses Python-only syntax such as lookbehind with one error (no crash)."""
    types = ggml_types()
    out = []
    for spec in specs:
        # At the last "=": a type name has none, a pattern may ("(?=...)").
        pattern, sep, type_name = spec.rpartition("=") if isinstance(spec, str) else ("", "", "")
        # The pattern as written (lower-casing it would turn \D into \d); tensor names are lower case.
        pattern, type_name = pattern.strip(), type_name.strip().lower()
        if not sep or not pattern or not type_name:
            raise EdgesrmError(f"a tensor type override is PATTERN=TYPE (e.g. ffn_down=q4_k), got {spec!r}")
        if type_name not in types:
            raise EdgesrmError(f"unknown tensor type {type_name!r} in {spec!r}; choose one of {', '.join(types)}")
        if type_name in TENSOR_TYPES_NEEDING_IMATRIX and not imatrix:
            raise EdgesrmError(f"{type_name} in {spec!r} needs an importance matrix: pass --imatrix FILE "
                               "(make one with edgesrm imatrix)")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise EdgesrmError(f"{pattern!r} in {spec!r} is not a valid regular expression: {exc}") from None
        if not any(regex.search(name) for name in tensor_names):
            example = f" (e.g. {tensor_names[0]})" if tensor_names else ""
            raise EdgesrmError(f"the pattern {pattern!r} matches no weight that llama.cpp quantizes in this model{example}")
        out.append((pattern, types[type_name]))
    return out


def input_file_type(path: Path) -> int | None:
    """``general.file_type`` of a GGUF, after checking the file is whole."""
    header = read_header(path)
    check_complete(path, header)
    value = header.metadata.get("general.file_type")
    return int(value) if isinstance(value, int) else None


def quantize_file(src: Path, dst: Path, quant: str, *, threads: int | None = None,
                  allow_requantize: bool = False, imatrix: dict[str, "np.ndarray"] | None = None,
                  overrides: list[tuple[str, int]] = (), metadata: dict[str, str | int] | None = None) -> None:
    """Quantize the GGUF ``src`` into ``dst`` (which the caller makes atomic). ``imatrix``: each
    weight's mean squared activations per column (``Imatrix.means()``); ``overrides``: (pattern,
    ggml type) pairs from ``tensor_overrides``; ``metadata``: keys written into ``dst`` (text up to
    127 bytes, or an unsigned 32-bit integer, as llama.cpp's ``kv_overrides`` store them)."""
    import numpy as np

    ftype = quant_type(quant, imatrix=imatrix is not None)
    file_type = input_file_type(src)
    if not allow_requantize and file_type is not None and file_type not in UNQUANTIZED_FILE_TYPES:
        why = f"{src} is already quantized; quantize an f32, f16 or bf16 GGUF (or requantize it, which loses more quality"
        raise EdgesrmError(f"{why}: allow_requantize=True)", cli=f"{why}: --allow-requantize)")
    llama = lib()
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or default_threads()
    params.allow_requantize = allow_requantize
    keep = []  # what the C arrays point into, alive until llama_model_quantize returns
    if imatrix:
        entries = (llama.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), values]
            entries[i].name = keep[-2]
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        entries[len(imatrix)].name = None  # the terminator
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama.llama_model_imatrix_data))
        keep.append(entries)
    if overrides:
        table = (llama.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, ggml_type) in enumerate(overrides):
            keep.append(pattern.encode())
            table[i].pattern, table[i].type = keep[-1], ggml_type
        table[len(overrides)].pattern = None  # the terminator
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama.llama_model_tensor_override))
        keep.append(table)
    if metadata:
        kv = (llama.llama_model_kv_override * (len(metadata) + 1))()  # zeroed: the last is the terminator
        for i, (key, value) in enumerate(metadata.items()):
            kv[i].key = key.encode()[:127]
            if isinstance(value, int):
                kv[i].tag, kv[i].value.val_i64 = llama.LLAMA_KV_OVERRIDE_TYPE_INT, value
            else:
                kv[i].tag = llama.LLAMA_KV_OVERRIDE_TYPE_STR
                kv[i].value.val_str = value.encode("utf-8")[:127].decode("utf-8", "ignore").encode("utf-8")
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama.llama_model_kv_override))
        keep.append(kv)
    clear_errors()
    status = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise EdgesrmError(f"llama.cpp could not quantize {src.name} to {quant.upper()}: "
                           f"{recent_errors() or f'status {status}'}")
