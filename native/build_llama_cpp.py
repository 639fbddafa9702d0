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

Auto mode picks a GPU backend only when both its toolchain and a device are there:
CUDA needs nvcc and an NVIDIA driver that answers (`nvidia-smi -L` lists a GPU, or
/proc/driver/nvidia/gpus has one); Vulkan needs glslc, the loader and, when
vulkaninfo is installed, a GPU in its summary; Metal needs macOS on Apple silicon.
Otherwise it falls back (Vulkan, OpenBLAS, CPU) and says why in one line.

An explicit `--accelerator cuda` with no device that answers is refused: llama.cpp
compiles CUDA for the GPUs present ("native") and CMake fails without one. To build
for another machine's GPU (a container image, a build host), name its architectures
with --cuda-arch (passed as CMAKE_CUDA_ARCHITECTURES, e.g. 86 for RTX 30xx, 89 for
RTX 40xx). Check the result with `edgesrm doctor`.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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


def _ask(argv: Sequence[str], timeout: float = 10.0) -> tuple[int | None, str]:
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


def parse_nvidia_smi(returncode: int | None, output: str) -> tuple[str | None, str]:
    """The GPUs `nvidia-smi -L` listed ("GPU 0: NVIDIA ... (UUID: ...)"), else None and why."""
    gpus = [line.split(" (UUID")[0].strip() for line in output.splitlines() if line.startswith("GPU ")]
    if returncode == 0 and gpus:
        return "; ".join(gpus), "nvidia-smi -L"
    first = output.strip().splitlines()[0] if output.strip() else f"exit code {returncode}, no GPU listed"
    return None, f"nvidia-smi: {first}"


def cuda_device(
    which: Callable[[str], str | None] = shutil.which,
    listdir: Callable[[str], list[str]] = _listdir,
    ask: Callable[[Sequence[str]], tuple[int | None, str]] = _ask,
) -> tuple[str | None, str]:
    """An NVIDIA GPU whose driver answers: (its name, how it was seen), or (None, why not).

    nvidia-smi is asked when installed (a short timeout: a wedged driver can hang it);
    without it, the kernel driver's /proc/driver/nvidia/gpus entries count.
    """
    smi = which("nvidia-smi")
    if smi:
        return parse_nvidia_smi(*ask([smi, "-L"]))
    gpus = listdir("/proc/driver/nvidia/gpus")
    if gpus:
        return f"{len(gpus)} GPU(s) at {', '.join(gpus)}", "/proc/driver/nvidia/gpus"
    return None, "nvidia-smi not on PATH, no /proc/driver/nvidia/gpus"


def parse_vulkaninfo(returncode: int | None, output: str) -> tuple[str | None, str]:
    """The GPUs `vulkaninfo --summary` lists (software rasterizers are type CPU, not GPUs)."""
    types = re.findall(r"deviceType\s*=\s*PHYSICAL_DEVICE_TYPE_(\w+)", output)
    names = re.findall(r"deviceName\s*=\s*(.+)", output)
    gpus = [name.strip() for kind, name in zip(types, names) if kind.endswith("GPU")]
    if returncode == 0 and gpus:
        return "; ".join(gpus), "vulkaninfo --summary"
    if returncode == 0:
        others = ", ".join(name.strip() for name in names) or "no device"
        return None, f"vulkaninfo lists no GPU ({others})"
    first = output.strip().splitlines()[0] if output.strip() else f"exit code {returncode}"
    return None, f"vulkaninfo: {first}"


UNCHECKED = "not checked"  # a device no installed tool can list


@dataclass(frozen=True)
class Machine:
    """What the probes saw: toolchains, devices (a name, or None with the reason in *_probe)."""

    apple_silicon: bool = False
    cuda_toolkit: bool = False
    cuda_device: str | None = None
    cuda_probe: str = ""
    vulkan_toolchain: bool = False
    vulkan_device: str | None = None
    vulkan_probe: str = ""
    openblas: bool = False


def probe_machine(
    platform: str | None = None,
    machine: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
    *,
    environ: Mapping[str, str] | None = None,
    pkg_config: Callable[[str], bool] | None = None,
    listdir: Callable[[str], list[str]] = _listdir,
    ask: Callable[[Sequence[str]], tuple[int | None, str]] = _ask,
) -> Machine:
    """Observe this machine (every probe is a parameter, so tests can describe any machine)."""
    platform = sys.platform if platform is None else platform
    machine = (_platform.machine() if machine is None else machine).lower()
    environ = os.environ if environ is None else environ
    if pkg_config is None:
        pkg_config = lambda name: _pkg_config_knows(name, which)  # noqa: E731

    apple_silicon = platform.startswith("darwin") and machine in ("arm64", "aarch64")
    if apple_silicon:  # Metal needs no probe; NVIDIA and Vulkan do not apply
        return Machine(apple_silicon=True)
    cuda_name, cuda_probe = cuda_device(which, listdir, ask)
    # llama.cpp compiles its shaders with glslc and links against the Vulkan loader.
    vulkan_loader = (
        bool(which("vulkaninfo")) or bool(environ.get("VULKAN_SDK"))
        or _has_lib("libvulkan", machine, exists)
    )
    vulkan_toolchain = bool(which("glslc")) and vulkan_loader
    vulkan_name, vulkan_probe = None, ""
    if vulkan_toolchain:
        tool = which("vulkaninfo")
        if tool:
            vulkan_name, vulkan_probe = parse_vulkaninfo(*ask([tool, "--summary"]))
        else:
            vulkan_name, vulkan_probe = UNCHECKED, "no vulkaninfo to list devices"
    return Machine(
        cuda_toolkit=bool(which("nvcc")) or exists("/usr/local/cuda"),
        cuda_device=cuda_name, cuda_probe=cuda_probe,
        vulkan_toolchain=vulkan_toolchain, vulkan_device=vulkan_name, vulkan_probe=vulkan_probe,
        openblas=pkg_config("openblas") or _has_lib("libopenblas", machine, exists),
    )


def choose_accelerator(seen: Machine) -> tuple[str, str]:
    """What auto mode builds for, from observed facts, and one line saying why.

    Order: metal (Apple silicon) > cuda > vulkan > openblas > cpu, i.e. GPUs before CPU
    BLAS; a GPU backend needs its toolchain and a device, and a toolchain without a
    device (or a device without its toolchain) is named in the reason.
    """
    if seen.apple_silicon:
        return "metal", "Apple silicon"
    passed: list[str] = []
    if seen.cuda_toolkit and seen.cuda_device:
        return "cuda", f"nvcc and a CUDA device that answers ({seen.cuda_device})"
    if seen.cuda_toolkit:
        passed.append(f"nvcc found but no CUDA device answers ({seen.cuda_probe})")
    elif seen.cuda_device:
        passed.append(f"a CUDA device answers ({seen.cuda_device}) but the CUDA toolkit (nvcc) is not installed")
    if seen.vulkan_toolchain and seen.vulkan_device:
        gpu = seen.vulkan_probe if seen.vulkan_device == UNCHECKED else f"a GPU: {seen.vulkan_device}"
        why = f"glslc and the Vulkan loader ({gpu})"
        return "vulkan", "; ".join([*passed, why])
    if seen.vulkan_toolchain:
        passed.append(f"glslc and the Vulkan loader found but no Vulkan GPU ({seen.vulkan_probe})")
    if seen.openblas:
        return "openblas", "; ".join([*passed, "OpenBLAS found"])
    return "cpu", "; ".join(passed) or "no GPU toolchain and device, no OpenBLAS"


def detect_accelerator(**probes) -> str:
    """The accelerator auto mode builds for on this machine, or on one described by ``probes``
    (``probe_machine``'s parameters)."""
    return choose_accelerator(probe_machine(**probes))[0]


def cmake_args(accelerator: str, cuda_arch: str | None = None) -> list[str]:
    """The llama.cpp CMake flags that enable `accelerator` (and, for CUDA, its GPU architectures)."""
    try:
        flags = list(CMAKE_FLAGS[accelerator])
    except KeyError:
        raise ValueError(
            f"unknown accelerator {accelerator!r}; valid: {', '.join(ACCELERATORS)}"
        ) from None
    if cuda_arch:
        flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}")
    return flags


def pip_command(
    accelerator: str, version: str = LLAMA_CPP_PYTHON_VERSION, python: str = sys.executable,
    cuda_arch: str | None = None,
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
    env = {"CMAKE_ARGS": " ".join(cmake_args(accelerator, cuda_arch)), "FORCE_CMAKE": "1"}
    return argv, env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_llama_cpp.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Recompile llama-cpp-python with the CMake flags for this machine's\n"
        "accelerator (CUDA, Metal, Vulkan, OpenBLAS or plain CPU).\n\n"
        "auto picks a GPU backend only when its toolchain is installed and a device\n"
        "answers (nvidia-smi, vulkaninfo, Apple silicon); otherwise it falls back and\n"
        "says why. Pass --accelerator to choose yourself.",
        epilog="The compile takes about 10 minutes on 2 CPU cores (longer for CUDA).\n"
        "Try --dry-run first to see the detected accelerator and the pip command.\n"
        "Afterwards, check which backend llama.cpp was built with: edgesrm doctor",
    )
    parser.add_argument(
        "--accelerator", choices=("auto", *ACCELERATORS), default="auto",
        help="backend to build for (default: auto = a toolchain and a device that answers)",
    )
    parser.add_argument(
        "--cuda-arch", metavar="LIST",
        help="CUDA architectures to compile for (CMAKE_CUDA_ARCHITECTURES, e.g. 86 or '86;89'); "
        "needed with --accelerator cuda when this machine has no GPU (default: the GPUs present)",
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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cuda_arch and args.accelerator != "cuda":
        parser.error("--cuda-arch needs --accelerator cuda")
    detected = args.accelerator == "auto"
    if detected:
        accelerator, why = choose_accelerator(probe_machine())
        print(f"accelerator: {accelerator} (detected): {why}")
    else:
        accelerator = args.accelerator
        print(f"accelerator: {accelerator}")
    if accelerator == "cuda" and not detected and not args.cuda_arch:  # auto picks cuda only with a device
        device, probe = cuda_device()
        if not device:
            print(
                f"error: no CUDA device answers ({probe}), and llama.cpp compiles CUDA for the GPUs "
                "present; pass --cuda-arch (e.g. 86 for RTX 30xx) to build for another machine's GPU, "
                "or --accelerator cpu", file=sys.stderr,
            )
            return 2
    command, env = pip_command(accelerator, args.version, cuda_arch=args.cuda_arch)

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
