"""The README, checked line by line: every command and snippet in its code blocks runs as written.

Each fenced ``bash`` and ``python`` block of README.md runs here, in a scratch directory that
looks like a checkout to it: ``model.gguf`` is the embedded model, ``./Qwen3-0.6B`` a tiny
random-weight Qwen3 checkpoint, and ``native/``, ``scripts/`` and ``benchmarks/`` are the
repository's. A line that cannot run here (a download from the Hugging Face Hub, the hour-long
evaluation, a rebuild of llama.cpp, the test command itself) must be listed in ``NOT_RUN`` with
the reason, so a new README line is either run or explained. Installs (``python3 -m venv``,
``pip install``) are the job of .ci/run and of a fresh-venv check; the commands after them run
here with this environment's ``edgesrm`` and ``python``.

Slow (a couple of minutes): skip with ``pytest -m "not readme"``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import sys
from pathlib import Path

import pytest

from convert_support import checkpoints
from edgesrm.models import default_model_path

pytestmark = pytest.mark.readme

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

# README lines (by how they start) not run here, and why.
NOT_RUN = {
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest':
        "the test command itself (.ci/run runs it on a clean clone)",
    "MODEL=$(python scripts/get_eval_model.py)": "assembles the 1.1 GB evaluation model from 22 wheels",
    'edgesrm eval --model "$MODEL"': "hours on 2 cores (benchmarks/RESULTS.md has its results)",
    "edgesrm convert HuggingFaceTB/": "downloads from the Hugging Face Hub (no Hub access in tests)",
    'convert("deepseek-ai/': "downloads from the Hugging Face Hub (no Hub access in tests)",
    "python native/build_llama_cpp.py  ": "rebuilds llama-cpp-python (minutes of compiling)",
    "edgesrm pull qwen3-0.6b": "downloads from the Hugging Face Hub (tests/test_pull.py pulls from a Hub stand-in)",
    "edgesrm pull bartowski/": "downloads from the Hugging Face Hub (tests/test_pull.py pulls from a Hub stand-in)",
    "edgesrm pull HuggingFaceTB/": "downloads from the Hugging Face Hub (tests/test_pull.py pulls from a Hub stand-in)",
    "edgesrm ask -m qwen3-0.6b": "needs the model pulled from the Hub on the line above",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def reason_not_run(line: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if line.strip().startswith(start.strip())
                 and (not start.endswith("  ") or line.startswith(start))), None)


def runnable(line: str) -> str | None:
    """What of a README shell line runs here: the commands after any venv creation and install,
    with ``.venv/bin/`` dropped (this environment's tools are first on PATH)."""
    if not line.strip() or line.lstrip().startswith("#") or reason_not_run(line):
        return None
    parts = [p for p in line.split(" && ") if not p.startswith("python3 -m venv") and "pip install" not in p]
    return " && ".join(p.replace(".venv/bin/", "") for p in parts) or None


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch directory the README's commands can run in as written."""
    here = tmp_path_factory.mktemp("readme")
    (here / "model.gguf").symlink_to(default_model_path())
    for name in ("native", "scripts", "benchmarks"):
        (here / name).symlink_to(ROOT / name)
    checkpoints.tiny_checkpoint(here / "Qwen3-0.6B", "qwen3", num_hidden_layers=1)
    return here


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "EDGESRM_HOME": str(cwd / "edgesrm-home")}  # the model store of `edgesrm pull` lines
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_line_is_run_or_said_why():
    lines = [line for block in blocks("bash") + blocks("python") for line in block.splitlines()]
    for start in NOT_RUN:  # each exception still matches a README line (no stale entries)
        assert any(reason_not_run(line) for line in lines if line.strip().startswith(start.strip())), start
    assert blocks("bash") and blocks("python")


def background(command: str, cwd: Path) -> subprocess.Popen:
    """A README line ending in ``&`` (a server): started, and stopped when its block ends."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen(["bash", "-c", f"exec {command.rstrip().removesuffix('&')}"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, f"a README server ended with {proc.returncode}:\n{err[-2000:]}"
    return err


def wait_for(url: str) -> None:
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url}")


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_shell_block(checkout, index):
    servers = []
    try:
        for line in blocks("bash")[index].splitlines():
            command = runnable(line)
            if command is None:
                continue
            if command.rstrip().endswith("&"):
                servers.append(background(command, checkout))
                continue
            proc = run(["bash", "-c", command], checkout)
            assert proc.returncode == 0, f"README line failed: {line}\n{proc.stderr[-2000:]}"
            assert "Traceback" not in proc.stderr, proc.stderr
    finally:
        errors = [stop(server) for server in servers]
    assert not any("Traceback" in err for err in errors), errors


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block(checkout, index):
    code = "\n".join(line for line in blocks("python")[index].splitlines() if not reason_not_run(line))
    server = None
    if "http://127.0.0.1:8080" in code:  # a client of the Serve section's server
        server = background("edgesrm serve -m model.gguf --port 8080 &", checkout)
    try:
        if server is not None:
            wait_for("http://127.0.0.1:8080/health")
        proc = run([sys.executable, "-c", code], checkout)
    finally:
        if server is not None:
            stop(server)
    assert proc.returncode == 0, f"README snippet failed:\n{code}\n{proc.stderr[-3000:]}"


def test_the_main_job_answers(checkout):
    """The first command's `edgesrm ask` gives an answer line and a stats line."""
    first = next(runnable(line) for block in blocks("bash") for line in block.splitlines() if runnable(line))
    assert "edgesrm ask" in first
    proc = run(["bash", "-c", first], checkout)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "tok/s" in proc.stderr


def test_the_first_question_is_one_the_default_model_gets_right(checkout):
    """A newcomer's first answer should be right: with ask's default settings (cot, temperature
    0.6), on a few seeds."""
    first = next(runnable(line) for block in blocks("bash") for line in block.splitlines() if runnable(line))
    for seed in (1, 2, 3, 4):
        proc = run(["bash", "-c", f"{first} --json --seed {seed}"], checkout)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["extracted"] == "4", (seed, proc.stdout[-500:])
