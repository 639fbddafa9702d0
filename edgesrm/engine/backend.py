"""The thin layer over llama-cpp-python's low-level ``llama_cpp`` module.

Everything process-wide lives here: loading the shared library once, routing llama.cpp's
log lines (kept in memory, shown only when verbose, used to explain failures), and the
defaults that depend on the machine (threads, GPU layers, KV cache types).
"""

from __future__ import annotations

import collections
import ctypes
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import psutil

from ..errors import EdgesrmError
from .text import clean_text

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


def load_model(path, gpu_layers: int | None = None):
    """A ``llama_model`` pointer for the GGUF at ``path`` (free it with ``llama_model_free``):
    ``gpu_layers`` offloaded (None: all when the build can), weights in the CPU's extra buffer
    types when ``use_extra_buffer_types`` allows. Raises ``EdgesrmError`` with llama.cpp's reason."""
    llama = lib()
    params = llama.llama_model_default_params()
    clear_errors()
    params.n_gpu_layers = default_gpu_layers() if gpu_layers is None else gpu_layers
    params.use_extra_bufts = use_extra_buffer_types()
    model = llama.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise EdgesrmError(f"cannot load {path}: {recent_errors() or 'llama.cpp gave no reason'}")
    return model


def tokenize(vocab, text: str, *, add_special: bool = False, parse_special: bool = True, llama=None) -> list[int]:
    """Token ids of ``text`` in ``vocab`` (a ``llama_vocab`` pointer), through ``llama_tokenize``.

    ``add_special`` adds the BOS the model asks for; ``parse_special`` lets ``<|im_end|>``-style
    markers written in the text become their tokens. What is not UTF-8 becomes U+FFFD.
    ``llama``: the library to call (default ``lib()``; a closed engine passes its stand-in, which
    refuses every call). Raises ``EdgesrmError`` if llama.cpp cannot tokenize it.
    """
    llama = llama if llama is not None else lib()
    data = clean_text(text).encode("utf-8")
    capacity = len(data) + 8
    for _ in range(2):  # a second call with the size llama.cpp asked for
        buf = (ctypes.c_int32 * capacity)()
        n = llama.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n >= 0:
            return list(buf[:n])
        capacity = -n
    raise EdgesrmError("tokenization failed")


def token_piece(vocab, token: int, *, special: bool = False, llama=None) -> bytes:
    """The bytes of ``token`` as it appears in text, through ``llama_token_to_piece``; control
    tokens are empty unless ``special``. ``token`` must be in ``vocab`` (not checked here);
    ``llama`` as for ``tokenize``."""
    llama = llama if llama is not None else lib()
    size = 64
    for _ in range(2):  # a second call with the size llama.cpp asked for
        buf = ctypes.create_string_buffer(size)
        n = llama.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n
    raise EdgesrmError(f"llama.cpp cannot give the text of token {token}")


def default_threads() -> int:
    """Physical cores: llama.cpp decode is compute-bound and hyper-threads only add contention."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def default_gpu_layers() -> int:
    """Offload every layer when this build of llama.cpp can (Metal, CUDA, Vulkan), else none."""
    return 999 if lib().llama_supports_gpu_offload() else 0


# ggml backend registries that compute on the host CPU (or a remote machine), not a local GPU.
HOST_REGISTRIES = frozenset({"CPU", "BLAS", "RPC"})


def _ggml_registries() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each backend compiled into llama.cpp with the devices it found, from ggml's registry.

    A CUDA build registers CUDA even on a machine without a GPU (with no device), which
    ``llama_print_system_info`` does not tell apart. Empty if the registry cannot be read.
    """
    lib()  # loads libggml and registers the backends
    try:
        from llama_cpp import _ggml

        ggml = ctypes.CDLL(_ggml.libggml._name)  # own function objects: argtypes set here only
        signatures = {
            "ggml_backend_reg_count": ([], ctypes.c_size_t),
            "ggml_backend_reg_get": ([ctypes.c_size_t], ctypes.c_void_p),
            "ggml_backend_reg_name": ([ctypes.c_void_p], ctypes.c_char_p),
            "ggml_backend_reg_dev_count": ([ctypes.c_void_p], ctypes.c_size_t),
            "ggml_backend_reg_dev_get": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p),
            "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
        }
        for name, (argtypes, restype) in signatures.items():
            getattr(ggml, name).argtypes, getattr(ggml, name).restype = argtypes, restype
    except (ImportError, AttributeError, OSError):
        return ()
    registries = []
    for i in range(ggml.ggml_backend_reg_count()):
        reg = ggml.ggml_backend_reg_get(i)
        devices = tuple(
            (ggml.ggml_backend_dev_description(ggml.ggml_backend_reg_dev_get(reg, j)) or b"?")
            .decode("utf-8", "replace") for j in range(ggml.ggml_backend_reg_dev_count(reg))
        )
        registries.append(((ggml.ggml_backend_reg_name(reg) or b"?").decode("utf-8", "replace"), devices))
    return tuple(registries)


def _ask(argv: Sequence[str], timeout: float = 5.0) -> tuple[int | None, str]:
    """Run a driver tool: its exit code (None if it could not run or timed out) and output."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no answer in {timeout:g} s"
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


@dataclass(frozen=True)
class HostGpu:
    """A GPU the operating system shows, whatever llama.cpp was built with.

    ``kind`` is "CUDA", "Metal" or "ROCm" and ``name`` the device; with no GPU, ``kind`` is
    None and ``how`` says what was looked at.
    """

    kind: str | None
    name: str
    how: str


def host_gpu(
    platform: str | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    listdir: Callable[[str], list[str]] = _listdir,
    ask: Callable[[Sequence[str]], tuple[int | None, str]] = _ask,
) -> HostGpu:
    """Look for a usable GPU the way native/build_llama_cpp.py does: Apple silicon (Metal), an
    NVIDIA driver that answers (``nvidia-smi -L``, else /proc/driver/nvidia/gpus), an AMD
    ROCm driver (/dev/kfd). A CUDA toolkit (nvcc) alone is not a device."""
    platform = sys.platform if platform is None else platform
    machine = (_platform.machine() if machine is None else machine).lower()
    if platform.startswith("darwin") and machine in ("arm64", "aarch64"):
        return HostGpu("Metal", "Apple silicon GPU", f"macOS {machine}")
    smi = which("nvidia-smi")
    if smi:
        code, output = ask([smi, "-L"])
        gpus = [line.split(" (UUID")[0].strip() for line in output.splitlines() if line.startswith("GPU ")]
        if code == 0 and gpus:
            return HostGpu("CUDA", "; ".join(gpus), "nvidia-smi -L")
        nvidia = f"nvidia-smi: {output.splitlines()[0] if output else f'exit code {code}, no GPU listed'}"
    elif gpus := listdir("/proc/driver/nvidia/gpus"):
        return HostGpu("CUDA", f"NVIDIA GPU at {', '.join(gpus)}", "/proc/driver/nvidia/gpus")
    else:
        nvidia = "nvidia-smi not on PATH, no /proc/driver/nvidia/gpus"
    if "kfd" in listdir("/dev"):
        return HostGpu("ROCm", "AMD GPU", "/dev/kfd")
    return HostGpu(None, "", f"{nvidia}; no /dev/kfd" if platform.startswith("linux") else nvidia)


@dataclass(frozen=True)
class BackendReport:
    """What the compiled llama.cpp can do, for ``edgesrm doctor`` and result metadata."""

    llama_cpp_python: str
    system_info: str
    gpu_offload: bool
    mmap: bool
    mlock: bool
    max_parallel_sequences: int
    registries: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (backend, its devices), from ggml

    @property
    def gpu_backends(self) -> list[str]:
        """GPU backends compiled in (CUDA, Metal, Vulkan...), whether or not they found a device."""
        names = [name for name, _ in self.registries] or self.backends
        return [name for name in names if name not in HOST_REGISTRIES]

    @property
    def gpu_devices(self) -> list[str]:
        """The GPUs those backends found: what llama.cpp can offload to."""
        return [f"{device} ({name})" for name, devices in self.registries
                if name not in HOST_REGISTRIES for device in devices]

    @property
    def no_offload_reason(self) -> str:
        """Why layers cannot go to a GPU (when ``gpu_offload`` is False), for a warning."""
        if not self.gpu_backends:
            return "this llama.cpp build cannot offload to a GPU (a CPU-only build)"
        return f"this llama.cpp build ({', '.join(self.gpu_backends)}) finds no GPU to offload to"

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
        registries=_ggml_registries(),
    )
