"""The thin layer over llama-cpp-python's low-level ``llama_cpp`` module.

Everything process-wide lives here: loading the shared library once, routing llama.cpp's
log lines (kept in memory, shown only when verbose, used to explain failures), and the
defaults that depend on the machine (threads, GPU layers, KV cache types).
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

import psutil

# ggml type ids accepted for the KV cache (ggml.h). Quantized V needs flash attention.
KV_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2}

# ggml_log_level (ggml.h): DEBUG=1 INFO=2 WARN=3 ERROR=4 CONT=5 (continues the last line).
_LEVEL_TAGS = {3: "W ", 4: "E "}
GGML_LOG_CONT = 5

_log_lines: collections.deque[str] = collections.deque(maxlen=200)
_verbose = False


def set_verbose(verbose: bool) -> None:
    """Echo llama.cpp's own log lines to stderr (they are always kept for error messages)."""
    global _verbose
    _verbose = verbose


def clear_errors() -> None:
    """Forget earlier log lines, so that ``recent_errors`` speaks of the next call only."""
    _log_lines.clear()


def recent_errors(n: int = 2) -> str:
    """The last few specific error lines llama.cpp logged, for an error message.

    llama.cpp prefixes them with the function that logged them and ends with generic
    "failed to load model" lines; users only need the specific messages.
    """
    messages = []
    for line in _log_lines:
        if not line.startswith("E ") or "failed to load model" in line:
            continue
        head, _, rest = line[2:].partition(": ")
        messages.append(rest if rest and head.isidentifier() else line[2:])
    return "; ".join(dict.fromkeys(m.strip() for m in messages[-n:]))


@lru_cache(maxsize=1)
def lib():
    """Import ``llama_cpp``, install our log handler and initialise the backend, once."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        chunk = text.decode("utf-8", "replace")
        if _verbose:
            sys.stderr.write(chunk)
        if level == GGML_LOG_CONT and _log_lines:
            _log_lines[-1] += chunk.rstrip("\n")
        elif chunk.strip():
            _log_lines.append(_LEVEL_TAGS.get(level, "I ") + chunk.rstrip("\n"))

    lib.on_log = on_log  # keep the ctypes callback alive as long as the library is
    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    return llama_cpp


def use_extra_buffer_types() -> bool:
    """Whether llama.cpp may put weights in the CPU's extra buffer types (repacked layouts).

    Not with a build that has Intel AMX compiled in (``AMX_INT8 = 1``, what a native build on a
    Sapphire Rapids or later Xeon gives): the AMX matrix multiplication of the llama.cpp that
    llama-cpp-python 0.3.36 vendors crashes the process (SIGSEGV in ``ggml_backend_amx_mul_mat``
    on the first multi-token decode of a Q4_1 model, measured here), and llama.cpp offers the AMX
    layout before the AVX-512 repack one, so both go. ``EDGESRM_ALLOW_AMX=1`` keeps them (for a
    fixed llama.cpp). A build without AMX (``-mno-amx-int8`` in the compiler flags) would keep the
    repack layouts; the accelerator build script does not make one yet.
    """
    if os.environ.get("EDGESRM_ALLOW_AMX") == "1":
        return True
    return "AMX_INT8 = 1" not in lib().llama_print_system_info().decode("utf-8", "replace")


def default_threads() -> int:
    """Physical cores: llama.cpp decode is compute-bound and hyper-threads only add contention."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def default_gpu_layers() -> int:
    """Offload every layer when this build of llama.cpp can (Metal, CUDA, Vulkan), else none."""
    return 999 if lib().llama_supports_gpu_offload() else 0


@dataclass(frozen=True)
class BackendReport:
    """What the compiled llama.cpp can do, for ``edgesrm doctor`` and result metadata."""

    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    mmap: bool
    mlock: bool
    max_parallel_sequences: int

    @property
    def backends(self) -> list[str]:
        """Backends compiled in, as llama.cpp lists them ("CUDA : ... | CPU : ...")."""
        return re.findall(r"(\w+) : ", self.system_info)

    @property
    def name(self) -> str:
        """The accelerator in use: the first backend that is not the CPU, else "CPU"."""
        return next((b for b in self.backends if b != "CPU"), "CPU")

    @property
    def cpu_features(self) -> list[str]:
        """CPU features the CPU backend was built to use (AVX2, AVX512, NEON...)."""
        cpu = self.system_info.partition("CPU : ")[2]
        return re.findall(r"(\w+) = 1", cpu)


def backend_report() -> BackendReport:
    llama = lib()
    return BackendReport(
        llama_cpp_python=getattr(llama, "__version__", "unknown"),
        system_info=llama.llama_print_system_info().decode("utf-8", "replace").strip(),
        gpu_offload=bool(llama.llama_supports_gpu_offload()),
        mmap=bool(llama.llama_supports_mmap()),
        mlock=bool(llama.llama_supports_mlock()),
        max_parallel_sequences=int(llama.llama_max_parallel_sequences()),
    )
