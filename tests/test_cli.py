"""The ``edgesrm`` command as a user runs it: real processes, real model, real exit codes."""

import json
import os
import subprocess
import sys

import pytest


def edgesrm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgesrm", *args], input=stdin, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]


def test_ask_json_gives_one_machine_readable_result():
    proc = edgesrm("ask", "--json", "--seed", "7", "--max-tokens", "24", "What is 2 + 3?")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert result["question"] == "What is 2 + 3?"
    assert result["seed"] == 7
    assert 0 < result["completion_tokens"] <= 24
    assert result["prompt_tokens"] > 5
    assert result["finish_reason"] in ("answered", "eos", "length")
    assert result["strategy"] == "cot" and len(result["paths"]) == 1
    assert result["answer"] or result["reasoning"]
    again = json.loads(edgesrm("ask", "--json", "--seed", "7", "--max-tokens", "24", "What is 2 + 3?").stdout)
    assert again["text"] == result["text"]  # same seed, same answer


def test_ask_streams_text_and_reports_stats_on_stderr():
    proc = edgesrm("ask", "--seed", "1", "--max-tokens", "16", "Name a colour.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "tokens" in proc.stderr and "seed 1" in proc.stderr


def test_ask_reads_the_question_from_stdin():
    proc = edgesrm("ask", "--json", "--seed", "1", "--max-tokens", "4", "-", stdin="What is 1 + 1?")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["question"] == "What is 1 + 1?"


def test_info_describes_the_embedded_model():
    proc = edgesrm("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["architecture"] == "llama"
    assert info["quantization"] == "Q4_1"
    assert 130e6 < info["parameters"] < 140e6
    assert info["context_length"] == 8192
    assert info["chat_template"] is True and info["thinking"] is False
    text = edgesrm("info").stdout
    assert "Q4_1" in text and "thinking mode" in text


def test_doctor_reports_backend_and_machine():
    proc = edgesrm("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] in ("CPU", "CUDA", "Metal", "Vulkan", "BLAS")
    assert report["threads_default"] >= 1
    assert report["memory_total_mb"] > 0
    assert report["default_model"].endswith(".gguf")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("bad")
    data = model_path.read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (d / "header-only.gguf").write_bytes(data[:1000])
    (d / "text.gguf").write_text("this is not a model\n")
    (d / "empty.gguf").write_bytes(b"")
    return d


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("missing.gguf", "not found"),
        ("text.gguf", "not a GGUF file"),
        ("empty.gguf", "not a GGUF file"),
        ("truncated.gguf", "is truncated: its tensors need"),
        ("header-only.gguf", "is truncated"),
    ],
)
def test_bad_model_files_get_one_clear_error(bad_files, name, fragment):
    for command in (["ask", "--model"], ["info"]):
        proc = edgesrm(*command, str(bad_files / name), *(["hi"] if command[0] == "ask" else []))
        assert_one_line_error(proc, name, fragment)


def test_a_directory_is_not_a_model(tmp_path):
    assert_one_line_error(edgesrm("ask", "--model", str(tmp_path), "hi"), "is a directory")


def test_prompt_longer_than_the_context():
    proc = edgesrm("ask", "--ctx", "256", "word " * 400)
    assert_one_line_error(proc, "longer than the context")
    assert proc.returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "--kv-type", "q9", "hi"],
        ["ask", "--temperature", "-1", "hi"],
        ["ask", "--max-tokens", "0", "hi"],
        ["ask", "--top-p", "0", "hi"],
        ["ask", "--seed", "abc", "hi"],
        ["ask"],
        ["frobnicate"],
    ],
)
def test_bad_options_are_usage_errors(args):
    proc = edgesrm(*args)
    assert_one_line_error(proc)
    assert proc.returncode == 2


def test_sc_lists_paths_and_votes():
    proc = edgesrm("ask", "-s", "sc", "-n", "4", "--seed", "3", "--max-tokens", "64", "What is 2 + 3?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("path ") >= 1 and "votes:" in proc.stderr
    assert proc.stdout.strip()


def test_memory_budget_too_small_says_what_would_fit():
    proc = edgesrm("ask", "--memory", "20", "hi")
    assert_one_line_error(proc, "does not fit in 20 MB", "allow at least")


def test_empty_question():
    assert_one_line_error(edgesrm("ask", "   "), "empty")


def test_llama_cpp_load_errors_are_passed_on_in_one_line(tmp_path):
    import gguf

    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "alienformer")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    proc = edgesrm("ask", "--model", str(path), "hi")
    assert_one_line_error(proc, "cannot load", "alienformer")


def test_notes_start_their_own_line_after_the_streamed_reply(tmp_path):
    # On a terminal, stdout and stderr share lines: a note must not go on from the streamed text.
    proc = subprocess.run(
        [sys.executable, "-m", "edgesrm", "ask", "-s", "sc", "-n", "4", "--budget-tokens", "1", "--seed", "1",
         "What is 2 + 2?"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert any(line.startswith("note: sc: 1 paths instead of 4") for line in lines), proc.stdout
    assert all(line.startswith("note: ") for line in lines if "note: " in line), proc.stdout
