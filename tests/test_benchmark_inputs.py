"""The benchmark scripts a contributor reruns from RESULTS.md take a wrong file or number with one
clear line and a non-zero exit, never a traceback (nothing is measured here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sc_vs_llama_server.py"


def summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content", [b"garbage{\n", b'"arm"\n', b'{"arm": "sc"}\n', b"\xff\xfe\n", b""])
def test_summary_of_a_file_that_is_not_this_benchmarks_rows(tmp_path, content):
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(content)
    for out in (rows, tmp_path / "missing.jsonl", tmp_path):
        proc = summary("--summary", "--out", str(out))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(out) in proc.stderr


@pytest.mark.parametrize("option", [("--limit", "0"), ("--limit", "-1"), ("--first", "-2"), ("--first", "x")])
def test_a_question_count_below_its_least_is_a_usage_error(option):
    proc = summary("--summary", *option)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "whole number" in proc.stderr
