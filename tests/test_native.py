"""Unit tests for native/build_llama_cpp.py: no hardware, no pip, every probe injected."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "native" / "build_llama_cpp.py"


def _load():
    spec = importlib.util.spec_from_file_location("build_llama_cpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load()


def detect(tools=(), paths=(), env=None, pkgs=(), platform="linux", machine="x86_64"):
    """Run detection on a simulated machine with exactly these tools, files, env vars and .pc files."""
    return build.detect_accelerator(
        platform=platform,
        machine=machine,
        which=lambda name: f"/usr/bin/{name}" if name in tools else None,
        exists=lambda path: path in paths,
        environ=env or {},
        pkg_config=lambda name: name in pkgs,
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


def test_nvcc_on_path_is_cuda():
    assert detect(tools={"nvcc"}) == "cuda"


def test_cuda_install_dir_without_nvcc_on_path_is_cuda():
    assert detect(paths={"/usr/local/cuda"}) == "cuda"


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


ALL_TOOLS = {"nvcc", "glslc", "vulkaninfo"}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(platform="darwin", machine="arm64", tools=ALL_TOOLS, pkgs={"openblas"}), "metal"),
        (dict(tools=ALL_TOOLS, pkgs={"openblas"}), "cuda"),
        (dict(tools={"glslc", "vulkaninfo"}, pkgs={"openblas"}), "vulkan"),
        (dict(tools={"glslc"}, pkgs={"openblas"}), "openblas"),
    ],
)
def test_precedence_gpu_before_blas(kwargs, expected):
    assert detect(**kwargs) == expected


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


def test_dry_run_cuda_prints_flag_and_does_not_run_pip(capsys, no_pip):
    assert build.main(["--dry-run", "--accelerator", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "-DGGML_CUDA=ON" in out
    assert "accelerator: cuda" in out
    assert "llama-cpp-python==0.3.36" in out


def test_dry_run_auto_uses_detection(capsys, monkeypatch, no_pip):
    monkeypatch.setattr(build, "detect_accelerator", lambda: "vulkan")
    assert build.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "vulkan (detected)" in out
    assert "-DGGML_VULKAN=ON" in out


def test_dry_run_version_flag(capsys, no_pip):
    assert build.main(["--dry-run", "--accelerator", "cpu", "--version", "0.3.20"]) == 0
    assert "llama-cpp-python==0.3.20" in capsys.readouterr().out


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
