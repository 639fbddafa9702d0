"""What this machine and this build of llama.cpp can do: the report behind ``edgesrm doctor``."""

from __future__ import annotations

import os
import platform
import sys

import psutil

from . import __version__
from .engine import backend_report
from .engine.backend import default_threads, use_extra_buffer_types
from .errors import EdgesrmError
from .models import default_model_path


def doctor_report() -> dict:
    backend = backend_report()
    memory = psutil.virtual_memory()
    try:
        default_model = str(default_model_path())
    except EdgesrmError:
        default_model = None
    return {
        "edgesrm": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "llama_cpp_python": backend.llama_cpp_python,
        "backend": backend.name,
        "gpu_offload": backend.gpu_offload,
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
