"""Quantization by llama.cpp's own quantizer (``llama_model_quantize``), through llama-cpp-python.

K-quants and i-quants choose per-tensor types with rules (which layers get more bits, which
tensors fall back when rows are not a multiple of 256) that only llama.cpp should own; we
call it rather than re-implement it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from ..engine.backend import clear_errors, default_threads, lib, recent_errors
from ..errors import EdgesrmError
from ..models import check_complete, read_header

# llama_ftype names (LLAMA_FTYPE_MOSTLY_*) that work without an importance matrix, in size order.
QUANT_TYPES: tuple[str, ...] = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ3_S", "IQ3_M", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16",
)
# These need an importance matrix (computed from sample text), which edgesrm does not make yet.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
UNQUANTIZED_FILE_TYPES = {0, 1, 32}  # ALL_F32, MOSTLY_F16, MOSTLY_BF16


def quant_type(name: str) -> int:
    """The ``llama_ftype`` for a type name (case-insensitive), or an error listing the choices."""
    key = name.strip().upper()
    if key in NEEDS_IMATRIX:
        raise EdgesrmError(f"{key} needs an importance matrix, which edgesrm cannot compute yet; "
                           f"choose one of {', '.join(QUANT_TYPES)}")
    if key not in QUANT_TYPES:
        raise EdgesrmError(f"unknown quantization type {name!r}; choose one of {', '.join(QUANT_TYPES)}")
    return int(getattr(lib(), f"LLAMA_FTYPE_MOSTLY_{key}"))


def input_file_type(path: Path) -> int | None:
    """``general.file_type`` of a GGUF, after checking the file is whole."""
    header = read_header(path)
    check_complete(path, header)
    value = header.metadata.get("general.file_type")
    return int(value) if isinstance(value, int) else None


def quantize_file(src: Path, dst: Path, quant: str, *, threads: int | None = None,
                  allow_requantize: bool = False) -> None:
    """Quantize the GGUF ``src`` into ``dst`` (which the caller makes atomic)."""
    ftype = quant_type(quant)
    file_type = input_file_type(src)
    if not allow_requantize and file_type is not None and file_type not in UNQUANTIZED_FILE_TYPES:
        why = f"{src} is already quantized; quantize an f32, f16 or bf16 GGUF (or requantize it, which loses more quality"
        raise EdgesrmError(f"{why}: allow_requantize=True)", cli=f"{why}: --allow-requantize)")
    llama = lib()
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or default_threads()
    params.allow_requantize = allow_requantize
    clear_errors()
    status = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise EdgesrmError(f"llama.cpp could not quantize {src.name} to {quant.upper()}: "
                           f"{recent_errors() or f'status {status}'}")
