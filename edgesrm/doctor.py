"""What this machine and this build of llama.cpp can do: the report behind ``edgesrm doctor``."""

from __future__ import annotations

import os
import platform
import sys

import psutil

from . import __version__
from .engine import backend_report
from .engine.backend import HostGpu, default_threads, host_gpu, use_extra_buffer_types
from .models import find_default_model


# What native/build_llama_cpp.py --accelerator builds for each kind of GPU host_gpu() finds
# (it has no ROCm/HIP build; llama.cpp's Vulkan backend runs on AMD GPUs).
REBUILD_FOR = {"CUDA": "cuda", "Metal": "metal", "ROCm": "vulkan"}


def gpu_advice(gpu_backends: list[str], llama_devices: list[str], host: HostGpu) -> str | None:
    """One line when the build and the machine disagree about GPUs, else None.

    ``gpu_backends``: GPU backends compiled in; ``llama_devices``: the GPUs they found;
    ``host``: what the operating system shows.
    """
    if llama_devices:
        return None  # llama.cpp offloads to them
    rebuild = (f"rebuild llama-cpp-python with `python native/build_llama_cpp.py --accelerator "
               f"{REBUILD_FOR.get(host.kind or '', 'auto')}` from an edgesrm checkout")
    if not gpu_backends:
        if host.kind:
            return f"this build has no GPU support but a {host.kind} device is present ({host.name}): {rebuild}"
        return None  # a CPU build on a machine without a GPU
    built = ", ".join(gpu_backends)
    if host.kind:
        return (f"this build has {built} support but finds no device, while {host.name} ({host.kind}) is present: "
                f"check the driver, or {rebuild}")
    return (f"this build has {built} support but no GPU answers ({host.how}): every layer runs on the CPU; "
            "`python native/build_llama_cpp.py` builds for what this machine has")


def gpu_device_line(llama_devices: list[str], host: HostGpu) -> str:
    """The GPU for the report: llama.cpp's own devices, else what the operating system shows."""
    if llama_devices:
        return "; ".join(llama_devices)
    if host.kind:
        return f"{host.name} ({host.kind}, seen by {host.how})"
    return f"none ({host.how})"


def doctor_report() -> dict:
    backend = backend_report()
    host = host_gpu() if not backend.gpu_devices else HostGpu(None, "", "")  # llama.cpp's list is enough
    memory = psutil.virtual_memory()
    found = find_default_model()  # never downloads: the doctor only looks
    default_model = str(found) if found else None
    report = {
        "edgesrm": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "llama_cpp_python": backend.llama_cpp_python,
        "backend": backend.name,
        "gpu_offload": backend.gpu_offload,
        "gpu_compiled_in": bool(backend.gpu_backends),
        "gpu_device": gpu_device_line(backend.gpu_devices, host),
        "cpu_features": backend.cpu_features,
        # False on builds with AMX compiled in, which crash in llama.cpp's AMX kernels (backend.py).
        "repacked_weights": use_extra_buffer_types(),
        "threads_default": default_threads(),
        "cpu_logical": os.cpu_count(),
        "memory_total_mb": memory.total // 2**20,
        "memory_available_mb": memory.available // 2**20,
        "max_parallel_sequences": backend.max_parallel_sequences,
        "default_model": default_model,
    }
    advice = gpu_advice(backend.gpu_backends, backend.gpu_devices, host)
    if advice:  # only when the build and the machine disagree
        report["gpu_advice"] = advice
    return report
