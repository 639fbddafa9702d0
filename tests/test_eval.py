"""`edgesrm eval`: datasets, per-question rows, summary and plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesrm.errors import EdgesrmError
from edgesrm.eval import evaluate, find_dataset, load_items, plot
from edgesrm.runtime import Runtime

SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "What is 10 - 3?", "answer": "7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_gold_answers_are_the_number_after_the_hashes():
    if not SHARED_GSM8K.is_file():
        pytest.fail(f"GSM8K is expected at {SHARED_GSM8K} (the shared data folder beside the checkout)")
    items = load_items(SHARED_GSM8K, limit=3)
    assert [i.gold for i in items] == ["18", "3", "70000"]
    assert items[0].question.startswith("Janet")


def test_find_dataset_by_name_and_errors(tmp_path, monkeypatch, small_dataset):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGESRM_DATA", str(SHARED_GSM8K.parents[1]))
    assert find_dataset("gsm8k") == SHARED_GSM8K
    assert find_dataset(str(small_dataset)) == small_dataset
    monkeypatch.delenv("EDGESRM_DATA")
    with pytest.raises(EdgesrmError, match="cannot find the gsm8k data"):
        find_dataset("gsm8k")
    with pytest.raises(EdgesrmError, match="dataset not found"):
        find_dataset(str(tmp_path / "nope.jsonl"))


def test_malformed_rows_name_their_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "no answer"}\n')
    with pytest.raises(EdgesrmError, match=r"bad.jsonl:2: expected a JSON object"):
        load_items(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EdgesrmError, match="holds no questions"):
        load_items(tmp_path / "empty.jsonl")


def test_evaluate_writes_rows_and_summary(engine, small_dataset, tmp_path):
    items = load_items(small_dataset)
    summary = evaluate(Runtime(engine), items, "direct", tmp_path / "direct.jsonl", max_tokens=32, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "direct.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == ["4", "7"]
    assert summary.questions == 2
    assert summary.accuracy == sum(r["correct"] for r in rows) / 2
    assert summary.mean_tokens == pytest.approx(sum(r["tokens"] for r in rows) / 2)
    assert summary.p95_latency_s >= summary.mean_latency_s * 0.5
    image = plot([summary], tmp_path / "plot.png")
    assert image is not None and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command(small_dataset, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "edgesrm", "eval", "--dataset", str(small_dataset), "-s", "direct", "-s", "cot",
         "--max-tokens", "48", "-o", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "deadline misses" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["strategy"] for s in summary] == ["direct", "cot"]
    assert (out / "accuracy-latency.png").is_file()
    assert len((out / "cot.jsonl").read_text().splitlines()) == 2


def _jsonl(tmp_path, *lines, name="qa.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


GOOD = '{"question": "What is 2 + 2?", "answer": "4"}'


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": null, "answer": "4"}', "'question' must be a non-empty string, not null"),
        ('{"question": "  ", "answer": "4"}', "'question' must be a non-empty string, not an empty string"),
        ('{"question": 7, "answer": "4"}', "'question' must be a non-empty string, not a number"),
        ('{"question": "q", "answer": null}', "'answer' must be a string or a number, not null"),
        ('{"question": "q", "answer": [4]}', "'answer' must be a string or a number, not a list"),
        ('{"question": "q", "answer": true}', "'answer' must be a string or a number, not a boolean"),
        ('{"question": "q", "answer": NaN}', "'answer' must be a finite number"),
        ('{"question": "q", "answer": "  "}', "'answer' holds no answer"),
        ('{"question": "q", "answer": "the steps\\n####"}', "'answer' holds no answer"),
        ('{"question": "q"}', "expected a JSON object with 'question' and 'answer' \\(no 'answer'\\)"),
        ('["q", "4"]', "expected a JSON object with 'question' and 'answer', not a list"),
        ('{"question": "q", "answer": "4"', "not JSON"),
        ("question: q", "not JSON"),
    ],
)
def test_bad_lines_are_one_clear_error_before_any_model_work(tmp_path, line, message):
    path = _jsonl(tmp_path, GOOD, line, GOOD)
    with pytest.raises(EdgesrmError, match=rf"^{path}:2: {message}"):
        load_items(path)


def test_every_line_is_checked_even_with_a_limit(tmp_path):
    path = _jsonl(tmp_path, GOOD, GOOD, '{"question": null, "answer": 1}')
    with pytest.raises(EdgesrmError, match=r"qa.jsonl:3: 'question'"):
        load_items(path, limit=1)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = _jsonl(tmp_path, GOOD, '{"question": "caf\xe9?", "answer": "1"}'.encode("latin-1"))
    with pytest.raises(EdgesrmError, match=r"qa.jsonl:2: not UTF-8 text"):
        load_items(path)
    with pytest.raises(EdgesrmError, match="not UTF-8 text"):
        load_items(_jsonl(tmp_path, b"\xff\xfe" + GOOD.encode("utf-16-le"), name="utf16.jsonl"))


def test_gold_answers_of_every_form(tmp_path):
    rows = [("\ufeff" + GOOD), '{"question": "q", "answer": 18}', '{"question": "q", "answer": 0.5}',
            '{"question": "q", "answer": "Half of 8 is 4.\\n#### 1,000"}', '{"question": "q", "answer": "\\\\frac{14}{3}"}',
            '{"question": "q", "answer": "x^5 - x^4 + 1"}', '{"question": "q", "answer": "so \\\\boxed{(2,4)}"}',
            '{"question": "q", "answer": "\\u22125"}', '{"question": "q", "answer": "\\\\text{(C)}"}']
    items = load_items(_jsonl(tmp_path, *rows))
    assert [i.gold for i in items] == ["4", "18", "0.5", "1000", "4.666667", "x^5-x^4+1", "(2,4)", "-5", "C"]
    assert [i.id for i in items] == list(range(len(rows)))
