"""native/build_llama_cpp.py (no pip: probes injected, decisions tested from facts, and the real
probes on this machine), and what the runtime and ``edgesrm doctor`` say about GPU offload."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgesrm.cli import cli
from edgesrm.doctor import doctor_report, gpu_advice
from edgesrm.engine import Engine, EngineConfig, backend_report
from edgesrm.engine.backend import HostGpu, host_gpu
from edgesrm.errors import EdgesrmWarning

SCRIPT = Path(__file__).parents[1] / "native" / "build_llama_cpp.py"


def _load():
    spec = importlib.util.spec_from_file_location("build_llama_cpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load()


RTX = (0, "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-6a8f2c1e-0000-0000-0000-000000000000)\n")
NO_DRIVER = (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.\n")
LLVMPIPE = """Devices:
========
GPU0:
\tapiVersion         = 1.3.255
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.7, 256 bits)
"""
RADEON = """Devices:
========
GPU0:
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = AMD Radeon RX 7600 (RADV NAVI33)
GPU1:
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.7, 256 bits)
"""


def detect(tools=(), paths=(), env=None, pkgs=(), platform="linux", machine="x86_64", answers=None, dirs=None):
    """Run detection on a described machine: exactly these tools, files, env vars and .pc files;
    `answers` maps a tool to its (exit code, output), `dirs` a directory to its entries."""
    answers = {"vulkaninfo": (0, RADEON), **(answers or {})}  # a GPU unless said otherwise
    return build.detect_accelerator(
        platform=platform,
        machine=machine,
        which=lambda name: f"/usr/bin/{name}" if name in tools else None,
        exists=lambda path: path in paths,
        environ=env or {},
        pkg_config=lambda name: name in pkgs,
        listdir=lambda path: (dirs or {}).get(path, []),
        ask=lambda argv: answers[Path(argv[0]).name],
    )


# --- detection -------------------------------------------------------------------


def test_bare_machine_is_cpu():
    assert detect() == "cpu"


def test_apple_silicon_is_metal():
    assert detect(platform="darwin", machine="arm64") == "metal"


def test_intel_mac_is_not_metal():
    assert detect(platform="darwin", machine="x86_64") == "cpu"


def test_linux_arm64_is_not_metal():
    assert detect(platform="linux", machine="aarch64") == "cpu"


def test_nvcc_and_a_driver_that_answers_is_cuda():
    assert detect(tools={"nvcc", "nvidia-smi"}, answers={"nvidia-smi": RTX}) == "cuda"


def test_cuda_install_dir_without_nvcc_on_path_is_cuda_with_a_device():
    assert detect(paths={"/usr/local/cuda"}, dirs={"/proc/driver/nvidia/gpus": ["0000:01:00.0"]}) == "cuda"


def test_nvcc_without_a_device_is_not_cuda():
    assert detect(tools={"nvcc"}) == "cpu"
    assert detect(tools={"nvcc", "nvidia-smi"}, answers={"nvidia-smi": NO_DRIVER}) == "cpu"
    assert detect(tools={"nvcc"}, pkgs={"openblas"}) == "openblas"


def test_vulkan_toolchain_with_only_a_software_rasterizer_is_not_vulkan():
    assert detect(tools={"glslc", "vulkaninfo"}, answers={"vulkaninfo": (0, LLVMPIPE)}) == "cpu"


def test_glslc_and_vulkaninfo_is_vulkan():
    assert detect(tools={"glslc", "vulkaninfo"}) == "vulkan"


def test_glslc_and_vulkan_sdk_env_is_vulkan():
    assert detect(tools={"glslc"}, env={"VULKAN_SDK": "/opt/vulkan/1.3"}) == "vulkan"


def test_glslc_and_vulkan_loader_library_is_vulkan():
    assert detect(tools={"glslc"}, paths={"/usr/lib/x86_64-linux-gnu/libvulkan.so"}) == "vulkan"


@pytest.mark.parametrize("tools", [{"glslc"}, {"vulkaninfo"}])
def test_half_a_vulkan_toolchain_is_not_vulkan(tools):
    assert detect(tools=tools) == "cpu"


def test_pkg_config_openblas_is_openblas():
    assert detect(pkgs={"openblas"}) == "openblas"


@pytest.mark.parametrize(
    "lib",
    ["/usr/lib/x86_64-linux-gnu/libopenblas.so", "/usr/lib64/libopenblas.so",
     "/opt/homebrew/opt/openblas/lib/libopenblas.dylib"],
)
def test_openblas_library_file_is_openblas(lib):
    assert detect(paths={lib}) == "openblas"


def test_multiarch_dir_follows_machine():
    arm_lib = "/usr/lib/aarch64-linux-gnu/libopenblas.so"
    assert detect(paths={arm_lib}, machine="aarch64") == "openblas"
    assert detect(paths={arm_lib}, machine="x86_64") == "cpu"


ALL_TOOLS = {"nvcc", "nvidia-smi", "glslc", "vulkaninfo"}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(platform="darwin", machine="arm64", tools=ALL_TOOLS, pkgs={"openblas"}), "metal"),
        (dict(tools=ALL_TOOLS, pkgs={"openblas"}, answers={"nvidia-smi": RTX}), "cuda"),
        (dict(tools=ALL_TOOLS, pkgs={"openblas"}, answers={"nvidia-smi": NO_DRIVER}), "vulkan"),
        (dict(tools={"glslc", "vulkaninfo"}, pkgs={"openblas"}), "vulkan"),
        (dict(tools={"glslc"}, pkgs={"openblas"}), "openblas"),
    ],
)
def test_precedence_gpu_before_blas(kwargs, expected):
    assert detect(**kwargs) == expected


# --- the decision, from observed facts ------------------------------------------------


def test_choose_nvcc_without_device_falls_back_to_cpu_with_one_line_saying_why():
    seen = build.Machine(cuda_toolkit=True, cuda_probe="nvidia-smi not on PATH, no /proc/driver/nvidia/gpus")
    accelerator, why = build.choose_accelerator(seen)
    assert accelerator == "cpu"
    assert why == "nvcc found but no CUDA device answers (nvidia-smi not on PATH, no /proc/driver/nvidia/gpus)"


@pytest.mark.parametrize(
    "seen, expected, says",
    [
        (build.Machine(apple_silicon=True, cuda_toolkit=True), "metal", "Apple silicon"),
        (build.Machine(cuda_toolkit=True, cuda_device="GPU 0: NVIDIA GeForce RTX 3060"), "cuda",
         "nvcc and a CUDA device that answers (GPU 0: NVIDIA GeForce RTX 3060)"),
        (build.Machine(cuda_device="GPU 0: NVIDIA T4"), "cpu",
         "a CUDA device answers (GPU 0: NVIDIA T4) but the CUDA toolkit (nvcc) is not installed"),
        (build.Machine(cuda_toolkit=True, cuda_probe="nvidia-smi: No devices were found", openblas=True),
         "openblas", "nvcc found but no CUDA device answers (nvidia-smi: No devices were found); OpenBLAS found"),
        (build.Machine(cuda_toolkit=True, cuda_probe="x", vulkan_toolchain=True, vulkan_device="AMD Radeon RX 7600",
                       vulkan_probe="vulkaninfo --summary"), "vulkan", "a GPU: AMD Radeon RX 7600"),
        (build.Machine(vulkan_toolchain=True, vulkan_device=build.UNCHECKED,
                       vulkan_probe="no vulkaninfo to list devices"), "vulkan", "no vulkaninfo to list devices"),
        (build.Machine(vulkan_toolchain=True, vulkan_probe="vulkaninfo lists no GPU (llvmpipe)"), "cpu",
         "glslc and the Vulkan loader found but no Vulkan GPU (vulkaninfo lists no GPU (llvmpipe))"),
        (build.Machine(), "cpu", "no GPU toolchain and device, no OpenBLAS"),
    ],
)
def test_choose_accelerator_from_facts(seen, expected, says):
    accelerator, why = build.choose_accelerator(seen)
    assert accelerator == expected
    assert says in why
    assert "\n" not in why


def test_nvidia_smi_answers_are_read():
    assert build.parse_nvidia_smi(*RTX) == ("GPU 0: NVIDIA GeForce RTX 3060", "nvidia-smi -L")
    device, why = build.parse_nvidia_smi(*NO_DRIVER)
    assert device is None and why.startswith("nvidia-smi: NVIDIA-SMI has failed because it couldn't communicate")
    assert build.parse_nvidia_smi(6, "No devices were found") == (None, "nvidia-smi: No devices were found")
    assert build.parse_nvidia_smi(None, "no answer in 10 s") == (None, "nvidia-smi: no answer in 10 s")


def test_vulkaninfo_software_rasterizer_is_not_a_gpu():
    assert build.parse_vulkaninfo(0, RADEON) == ("AMD Radeon RX 7600 (RADV NAVI33)", "vulkaninfo --summary")
    assert build.parse_vulkaninfo(0, LLVMPIPE) == (None, "vulkaninfo lists no GPU (llvmpipe (LLVM 15.0.7, 256 bits))")
    assert build.parse_vulkaninfo(1, "ERROR_INITIALIZATION_FAILED\nmore") == (
        None, "vulkaninfo: ERROR_INITIALIZATION_FAILED")


def test_a_tool_that_cannot_run_is_an_answer_not_a_crash():
    code, why = build._ask(["/nonexistent/nvidia-smi", "-L"])
    assert code is None and why


# --- the real probes on this machine ---------------------------------------------------

NO_CUDA_DEVICE_HERE = build.cuda_device()[0] is None
NVCC_WITHOUT_DEVICE = bool(shutil.which("nvcc")) and NO_CUDA_DEVICE_HERE


def test_real_probes_of_the_script_and_of_doctor_agree():
    device, how = build.cuda_device()
    assert how  # says where it looked
    assert (device is not None) == (host_gpu().kind == "CUDA")


@pytest.mark.skipif(not NVCC_WITHOUT_DEVICE, reason="needs nvcc installed and no CUDA device (the reported machine)")
def test_auto_on_this_machine_with_nvcc_and_no_gpu_does_not_build_cuda():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("accelerator: ") and "(detected): nvcc found but no CUDA device answers (" in first
    assert "GGML_CUDA" not in proc.stdout


@pytest.mark.skipif(not NVCC_WITHOUT_DEVICE, reason="needs nvcc installed and no CUDA device (the reported machine)")
def test_explicit_cuda_without_a_device_is_refused_in_one_line_unless_architectures_are_named():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--accelerator", "cuda"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no CUDA device answers (")
    assert "--cuda-arch" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--accelerator", "cuda", "--cuda-arch", "86;89"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=86;89" in proc.stdout


# --- CMake flags -----------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator, flags",
    [
        ("cpu", []),
        ("openblas", ["-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=OpenBLAS"]),
        ("metal", ["-DGGML_METAL=ON"]),
        ("cuda", ["-DGGML_CUDA=ON"]),
        ("vulkan", ["-DGGML_VULKAN=ON"]),
    ],
)
def test_cmake_args(accelerator, flags):
    assert build.cmake_args(accelerator) == flags


def test_cmake_args_cuda_architectures():
    assert build.cmake_args("cuda", "86;89") == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;89"]


def test_cmake_args_returns_a_copy():
    build.cmake_args("cuda").append("-DOOPS=ON")
    assert build.cmake_args("cuda") == ["-DGGML_CUDA=ON"]


def test_unknown_accelerator_raises_and_lists_valid_ones():
    with pytest.raises(ValueError) as excinfo:
        build.cmake_args("tpu")
    message = str(excinfo.value)
    assert "tpu" in message
    for name in ("cpu", "openblas", "metal", "cuda", "vulkan"):
        assert name in message


# --- pip command -----------------------------------------------------------------


def test_pip_command_rebuilds_from_source_without_cache():
    argv, env = build.pip_command("cuda", python="/opt/py/bin/python")
    assert argv[:4] == ["/opt/py/bin/python", "-m", "pip", "install"]
    assert "--force-reinstall" in argv
    assert "--no-cache-dir" in argv
    assert argv[argv.index("--no-binary") + 1] == "llama-cpp-python"
    assert argv[-1] == "llama-cpp-python==0.3.36"
    assert env == {"CMAKE_ARGS": "-DGGML_CUDA=ON", "FORCE_CMAKE": "1"}


def test_pip_command_openblas_joins_both_flags_and_pins_version():
    argv, env = build.pip_command("openblas", version="0.3.99")
    assert argv[0] == sys.executable
    assert "llama-cpp-python==0.3.99" in argv
    assert env["CMAKE_ARGS"].split() == ["-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=OpenBLAS"]
    assert env["FORCE_CMAKE"] == "1"


def test_pip_command_unknown_accelerator_raises():
    with pytest.raises(ValueError):
        build.pip_command("tpu")


# --- command line ----------------------------------------------------------------


@pytest.fixture
def no_pip(monkeypatch):
    """Fail the test if anything tries to run a subprocess."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"subprocess.run called: {args}")

    monkeypatch.setattr(build.subprocess, "run", refuse)


def test_dry_run_cuda_prints_flag_and_does_not_run_pip(capsys, monkeypatch, no_pip):
    monkeypatch.setattr(build, "cuda_device", lambda: ("GPU 0: NVIDIA GeForce RTX 3060", "nvidia-smi -L"))
    assert build.main(["--dry-run", "--accelerator", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "-DGGML_CUDA=ON" in out
    assert "accelerator: cuda" in out
    assert "llama-cpp-python==0.3.36" in out


def test_dry_run_auto_uses_detection(capsys, monkeypatch, no_pip):
    seen = build.Machine(vulkan_toolchain=True, vulkan_device="AMD Radeon RX 7600", vulkan_probe="vulkaninfo")
    monkeypatch.setattr(build, "probe_machine", lambda: seen)
    assert build.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "accelerator: vulkan (detected): glslc and the Vulkan loader (a GPU: AMD Radeon RX 7600)" in out
    assert "-DGGML_VULKAN=ON" in out


def test_dry_run_version_flag(capsys, no_pip):
    assert build.main(["--dry-run", "--accelerator", "cpu", "--version", "0.3.20"]) == 0
    assert "llama-cpp-python==0.3.20" in capsys.readouterr().out


def test_cuda_arch_needs_cuda(capsys, no_pip):
    with pytest.raises(SystemExit) as excinfo:
        build.main(["--dry-run", "--cuda-arch", "86"])
    assert excinfo.value.code == 2
    assert "--cuda-arch needs --accelerator cuda" in capsys.readouterr().err


def test_invalid_accelerator_exits_2(capsys, no_pip):
    with pytest.raises(SystemExit) as excinfo:
        build.main(["--accelerator", "tpu"])
    assert excinfo.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_teaches_duration_and_doctor(capsys):
    with pytest.raises(SystemExit) as excinfo:
        build.main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "10 minutes" in out
    assert "edgesrm doctor" in out


def test_real_run_passes_env_to_pip_and_returns_its_exit_code(capsys, monkeypatch):
    calls = []

    def fake_run(command, env):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(build.subprocess, "run", fake_run)
    monkeypatch.setenv("EDGESRM_TEST_MARKER", "kept")
    assert build.main(["--accelerator", "metal"]) == 3
    (command, env), = calls
    assert command[-1] == "llama-cpp-python==0.3.36"
    assert env["CMAKE_ARGS"] == "-DGGML_METAL=ON"
    assert env["FORCE_CMAKE"] == "1"
    assert env["EDGESRM_TEST_MARKER"] == "kept"  # the rest of the environment survives
    assert "--accelerator cpu" in capsys.readouterr().err


def test_script_imports_only_the_standard_library():
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported, "parsed no imports at all"
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


# --- --gpu-layers on a build that cannot offload, and edgesrm doctor ---------------------

CAN_OFFLOAD = backend_report().gpu_offload
cpu_only = pytest.mark.skipif(CAN_OFFLOAD, reason="this llama.cpp build offloads to a GPU here")


@cpu_only
def test_gpu_layers_on_a_build_that_cannot_offload_warns(model_path):
    with pytest.warns(EdgesrmWarning, match=r"^--gpu-layers 99 asked but this llama\.cpp build .*: "
                                            r"every layer runs on the CPU$"):
        Engine(model_path, EngineConfig(n_ctx=256, max_sequences=1, n_gpu_layers=99)).close()


@cpu_only
@pytest.mark.parametrize("layers", [None, 0])
def test_default_or_zero_gpu_layers_do_not_warn(model_path, layers):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgesrmWarning)
        Engine(model_path, EngineConfig(n_ctx=256, max_sequences=1, n_gpu_layers=layers)).close()


@cpu_only
def test_cli_ask_with_gpu_layers_prints_one_warning_line():
    result = CliRunner().invoke(cli, ["ask", "--gpu-layers", "99", "-s", "direct", "--max-tokens", "4",
                                      "--seed", "1", "What is 2 + 3?"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("warning: --gpu-layers 99 asked but this llama.cpp build ")
    assert lines[0].endswith(": every layer runs on the CPU")


def test_doctor_reports_gpu_build_and_device():
    report = doctor_report()
    backend = backend_report()
    assert report["gpu_compiled_in"] == bool(backend.gpu_backends)
    assert report["gpu_offload"] == backend.gpu_offload
    if not backend.gpu_devices:
        host = host_gpu()
        assert report["gpu_device"] == (f"{host.name} ({host.kind}, seen by {host.how})" if host.kind
                                        else f"none ({host.how})")
        assert ("gpu_advice" in report) == (bool(host.kind) or bool(backend.gpu_backends))


def test_doctor_text_shows_the_gpu_lines():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    names = [line[:24].strip() for line in result.stdout.splitlines()]
    assert {"gpu offload", "gpu compiled in", "gpu device"} <= set(names)


NVIDIA = HostGpu("CUDA", "GPU 0: NVIDIA GeForce RTX 3060", "nvidia-smi -L")
NO_GPU = HostGpu(None, "", "nvidia-smi not on PATH, no /proc/driver/nvidia/gpus; no /dev/kfd")


@pytest.mark.parametrize(
    "backends, devices, host, says",
    [
        ([], [], NVIDIA, "this build has no GPU support but a CUDA device is present (GPU 0: NVIDIA GeForce RTX 3060): "
                         "rebuild llama-cpp-python with `python native/build_llama_cpp.py --accelerator cuda`"),
        ([], [], HostGpu("Metal", "Apple silicon GPU", "macOS arm64"), "--accelerator metal"),
        ([], [], HostGpu("ROCm", "AMD GPU", "/dev/kfd"), "--accelerator vulkan"),
        (["CUDA"], [], NO_GPU, "this build has CUDA support but no GPU answers (nvidia-smi not on PATH"),
        (["CUDA"], [], NVIDIA, "this build has CUDA support but finds no device, while GPU 0: NVIDIA GeForce RTX 3060"),
    ],
)
def test_doctor_advice_when_build_and_machine_disagree(backends, devices, host, says):
    advice = gpu_advice(backends, devices, host)
    assert says in advice and "\n" not in advice


@pytest.mark.parametrize("backends, devices, host", [([], [], NO_GPU), (["CUDA"], ["RTX 3060 (CUDA)"], NO_GPU)])
def test_doctor_gives_no_advice_when_build_and_machine_agree(backends, devices, host):
    assert gpu_advice(backends, devices, host) is None


def test_host_gpu_from_facts():
    smi = {"nvidia-smi": "/usr/bin/nvidia-smi"}
    assert host_gpu("darwin", "arm64").kind == "Metal"
    seen = host_gpu("linux", "x86_64", which=smi.get, listdir=lambda path: [], ask=lambda argv: RTX)
    assert seen == HostGpu("CUDA", "GPU 0: NVIDIA GeForce RTX 3060", "nvidia-smi -L")
    seen = host_gpu("linux", "x86_64", which=smi.get, listdir=lambda path: [], ask=lambda argv: NO_DRIVER)
    assert seen.kind is None and "couldn't communicate with the NVIDIA driver" in seen.how
    seen = host_gpu("linux", "x86_64", which=lambda name: None, listdir={"/dev": ["kfd", "null"]}.get)
    assert seen == HostGpu("ROCm", "AMD GPU", "/dev/kfd")
