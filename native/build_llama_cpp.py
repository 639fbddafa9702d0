#!/usr/bin/env python3
"""Rebuild llama-cpp-python for this machine's accelerator.

The llama-cpp-python wheel that pip builds by default is CPU-only. To use a GPU
(CUDA, Metal, Vulkan) or a faster CPU BLAS (OpenBLAS), llama.cpp must be compiled
with the matching CMake option, passed through the CMAKE_ARGS environment variable.
This script finds which accelerator's toolchain is installed, picks the flag, and
runs pip so that it recompiles from source instead of reusing a cached CPU wheel.

Standard library only: it must run before llama-cpp-python or edgesrm is installed.

    python native/build_llama_cpp.py --dry-run        # show what would happen
    python native/build_llama_cpp.py                  # detect and rebuild
    python native/build_llama_cpp.py --accelerator cpu

Detection looks for toolchains (nvcc, glslc, OpenBLAS), not for working devices:
a machine with the CUDA toolkit but no GPU is detected as "cuda". Use
--accelerator to override. Check the result afterwards with `edgesrm doctor`.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

# CMake options from llama.cpp's docs/build.md (the GGML_* names; the older
# LLAMA_CUBLAS / LLAMA_BLAS spellings are no longer recognised).
CMAKE_FLAGS: dict[str, list[str]] = {
    "cpu": [],
    "openblas": ["-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=OpenBLAS"],
    "metal": ["-DGGML_METAL=ON"],
    "cuda": ["-DGGML_CUDA=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
}
ACCELERATORS: tuple[str, ...] = tuple(CMAKE_FLAGS)


def _lib_dirs(machine: str) -> list[str]:
    """Directories where distributions and Homebrew put linkable libraries."""
    return [
        "/usr/lib", "/usr/lib64", "/usr/local/lib", f"/usr/lib/{machine}-linux-gnu",
        "/opt/homebrew/lib", "/opt/homebrew/opt/openblas/lib", "/usr/local/opt/openblas/lib",
    ]


def _has_lib(stem: str, machine: str, exists: Callable[[str], bool]) -> bool:
    # The unversioned name (libfoo.so / .dylib) is what the -dev package installs;
    # a bare runtime libfoo.so.0 without headers would not let CMake build against it.
    names = (f"{stem}.so", f"{stem}.dylib")
    return any(exists(os.path.join(d, n)) for d in _lib_dirs(machine) for n in names)


def _pkg_config_knows(name: str, which: Callable[[str], str | None] = shutil.which) -> bool:
    """True when pkg-config is installed and has a .pc file for `name`."""
    tool = which("pkg-config")
    if not tool:
        return False
    try:
        return subprocess.run([tool, "--exists", name], capture_output=True).returncode == 0
    except OSError:
        return False


def detect_accelerator(
    platform: str | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
    *,
    environ: Mapping[str, str] | None = None,
    pkg_config: Callable[[str], bool] | None = None,
) -> str:
    """Return the best accelerator whose toolchain is present.

    Order: metal (Apple Silicon) > cuda > vulkan > openblas > cpu, i.e. GPUs before
    CPU BLAS. Every probe is a parameter so tests can simulate any machine.
    """
    platform = sys.platform if platform is None else platform
    machine = (_platform.machine() if machine is None else machine).lower()
    environ = os.environ if environ is None else environ
    if pkg_config is None:
        pkg_config = lambda name: _pkg_config_knows(name, which)  # noqa: E731

    if platform.startswith("darwin") and machine in ("arm64", "aarch64"):
        return "metal"
    if which("nvcc") or exists("/usr/local/cuda"):
        return "cuda"
    # llama.cpp compiles its shaders with glslc and links against the Vulkan loader.
    vulkan_loader = (
        bool(which("vulkaninfo")) or bool(environ.get("VULKAN_SDK"))
        or _has_lib("libvulkan", machine, exists)
    )
    if which("glslc") and vulkan_loader:
        return "vulkan"
    if pkg_config("openblas") or _has_lib("libopenblas", machine, exists):
        return "openblas"
    return "cpu"


def cmake_args(accelerator: str) -> list[str]:
    """The llama.cpp CMake flags that enable `accelerator`."""
    try:
        return list(CMAKE_FLAGS[accelerator])
    except KeyError:
        raise ValueError(
            f"unknown accelerator {accelerator!r}; valid: {', '.join(ACCELERATORS)}"
        ) from None


def pip_command(
    accelerator: str, version: str = LLAMA_CPP_PYTHON_VERSION, python: str = sys.executable
) -> tuple[list[str], dict[str, str]]:
    """The pip argv and the environment additions that rebuild llama-cpp-python.

    --force-reinstall replaces an installed CPU build; --no-binary forbids a
    prebuilt wheel; --no-cache-dir stops pip reusing its cached CPU wheel, which
    would otherwise silently ignore CMAKE_ARGS.
    """
    argv = [
        python, "-m", "pip", "install", "--force-reinstall", "--no-cache-dir",
        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}",
    ]
    env = {"CMAKE_ARGS": " ".join(cmake_args(accelerator)), "FORCE_CMAKE": "1"}
    return argv, env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_llama_cpp.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Recompile llama-cpp-python with the CMake flags for this machine's\n"
        "accelerator (CUDA, Metal, Vulkan, OpenBLAS or plain CPU).\n\n"
        "auto looks for installed toolchains, not working devices: with nvcc but no\n"
        "GPU it still picks cuda. Pass --accelerator to choose yourself.",
        epilog="The compile takes about 10 minutes on 2 CPU cores (longer for CUDA).\n"
        "Try --dry-run first to see the detected accelerator and the pip command.\n"
        "Afterwards, check which backend llama.cpp was built with: edgesrm doctor",
    )
    parser.add_argument(
        "--accelerator", choices=("auto", *ACCELERATORS), default="auto",
        help="backend to build for (default: auto = detect installed toolchains)",
    )
    parser.add_argument(
        "--version", default=LLAMA_CPP_PYTHON_VERSION, metavar="X.Y.Z",
        help="llama-cpp-python version to build (default: %(default)s, the one edgesrm is tested with)",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the accelerator, CMAKE_ARGS and pip command, then exit without building",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then print (--dry-run) or run the pip rebuild; return its exit code."""
    args = _parser().parse_args(argv)
    detected = args.accelerator == "auto"
    accelerator = detect_accelerator() if detected else args.accelerator
    command, env = pip_command(accelerator, args.version)

    print(f"accelerator: {accelerator}" + (" (detected)" if detected else ""))
    print(f"CMAKE_ARGS={env['CMAKE_ARGS']!r} FORCE_CMAKE={env['FORCE_CMAKE']}")
    print(("would run: " if args.dry_run else "running: ") + shlex.join(command))
    if args.dry_run:
        return 0

    returncode = subprocess.run(command, env={**os.environ, **env}).returncode
    if returncode != 0:
        print(
            f"pip failed with exit code {returncode}. If the {accelerator} toolchain is "
            "incomplete, retry with --accelerator cpu.", file=sys.stderr,
        )
    else:
        print("done; check the result with: edgesrm doctor")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
