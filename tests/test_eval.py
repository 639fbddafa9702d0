"""`edgesrm eval`: datasets (shipped and given), per-question rows, grading, progress, summary and plot."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import edgesrm.runtime
from edgesrm.answers import extract_answer, grade, normalize
from edgesrm.checks import MAX_SEED
from edgesrm.cli import cli
from edgesrm.errors import EdgesrmError
from edgesrm.eval import DATA, DATASETS, evaluate, find_dataset, load_items, plot
from edgesrm.runtime import Runtime


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "What is 10 - 3?", "answer": "7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def outside_a_checkout(tmp_path, monkeypatch) -> Path:
    """The working directory is an empty folder and EDGESRM_DATA is unset: as on a Pi after pip install."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGESRM_DATA", raising=False)
    return tmp_path


def test_the_data_sets_ship_inside_the_package_with_their_licenses():
    assert DATA.parent == Path(edgesrm.runtime.__file__).resolve().parent  # inside the package
    lines = {name: (DATA / path).read_text(encoding="utf-8").splitlines() for name, path in DATASETS.items()}
    assert {name: len(rows) for name, rows in lines.items()} == {"gsm8k": 1319, "math500": 500}
    for name in DATASETS:
        license_text = (DATA / name / "LICENSE").read_text()
        assert "MIT License" in license_text and "Copyright (c)" in license_text
    assert "Copyright (c) 2021 OpenAI" in (DATA / "gsm8k" / "LICENSE").read_text()
    assert "Hendrycks" in (DATA / "math500" / "LICENSE").read_text()
    sources = (DATA / "SOURCES.md").read_text()
    assert all(s in sources for s in ("openai/grade-school-math", "openai/prm800k", "1,319", "| 500 |"))
    assert not (DATA / "gsm8k" / "train.jsonl").exists()  # the training split stays out of the package


def test_shipped_data_is_found_outside_a_checkout(outside_a_checkout):
    assert find_dataset("gsm8k") == DATA / "gsm8k" / "test.jsonl"
    assert find_dataset("math500") == DATA / "math500" / "test.jsonl"
    assert len(load_items(find_dataset("gsm8k"))) == 1319
    assert len(load_items(find_dataset("math500"))) == 500


def test_gsm8k_gold_answers_are_the_number_after_the_hashes(outside_a_checkout):
    items = load_items(find_dataset("gsm8k"), limit=3)
    assert [i.gold for i in items] == ["18", "3", "70000"]
    assert items[0].question.startswith("Janet")


def test_math500_rows_are_problem_and_latex_answer(outside_a_checkout):
    items = load_items(find_dataset("math500"), limit=3)
    assert items[0].question.startswith("Convert the point $(0,3)$ in rectangular coordinates to polar")
    assert items[0].gold == normalize(r"\left( 3, \frac{\pi}{2} \right)") == r"(3,\frac{\pi}{2})"
    assert items[1].gold == "p-q"
    assert items[2].gold == normalize(r"\frac{14}{3}")


def test_edgesrm_data_overrides_the_shipped_copy(tmp_path, monkeypatch, outside_a_checkout):
    own = tmp_path / "mine" / "gsm8k" / "test.jsonl"
    own.parent.mkdir(parents=True)
    own.write_text('{"question": "q", "answer": "#### 1"}\n')
    monkeypatch.setenv("EDGESRM_DATA", str(tmp_path / "mine"))
    assert find_dataset("gsm8k") == own
    assert find_dataset("math500") == DATA / "math500" / "test.jsonl"  # not there: the shipped one
    monkeypatch.setenv("EDGESRM_DATA", str(tmp_path / "typo"))  # was ignored in silence
    with pytest.raises(EdgesrmError, match="is not a folder"):
        find_dataset("gsm8k")


def test_find_dataset_takes_a_path_and_names_the_options_when_lost(tmp_path, small_dataset, outside_a_checkout):
    assert find_dataset(str(small_dataset)) == small_dataset
    for wrong, what in [("gsm9k", "no dataset or file gsm9k"), (str(tmp_path / "nope.jsonl"), "no dataset or file"),
                        (str(tmp_path), "is a folder, not a file")]:
        with pytest.raises(EdgesrmError, match="dataset not found") as caught:
            find_dataset(wrong)
        assert what in str(caught.value) and "'gsm8k' or 'math500'" in str(caught.value)
        assert what in caught.value.cli and "-d gsm8k or -d math500" in caught.value.cli
        assert "--dataset FILE.jsonl" in caught.value.cli


def test_eval_errors_speak_in_command_line_options(outside_a_checkout):
    result = CliRunner().invoke(cli, ["eval", "-d", "gsm9k"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: dataset not found: no dataset or file gsm9k; give -d gsm8k or -d math500 (shipped with edgesrm) "
        "or --dataset FILE.jsonl (one JSON object with 'question' and 'answer' per line)")


# Real MATH-500 gold answers (row index, the row's answer as written) against what a model writes.
MATH500_PAIRS = [
    (0, r"\left( 3, \frac{\pi}{2} \right)", [
        (r"So the polar coordinates are $\boxed{(3, \frac{\pi}{2})}$.", True),
        (r"Final answer: $\boxed{\left(3,\dfrac{\pi}{2}\right)}$", True),
        (r"\boxed{(3, \pi)}", False),
        (r"\boxed{(3, \frac{\pi}{4})}", False),
    ]),
    (1, "p - q", [(r"\boxed{p-q}", True), (r"\boxed{q - p}", False)]),
    (2, r"\frac{14}{3}", [
        (r"The answer is $\boxed{\dfrac{14}{3}}$.", True), (r"\boxed{14/3}", True), (r"\boxed{4\frac{2}{3}}", True),
        (r"\boxed{\frac{3}{14}}", False), (r"\boxed{4.6}", False),
    ]),
    (7, r"90^\circ", [(r"\boxed{90}", True), (r"\boxed{90^{\circ}}", True), (r"\boxed{45^\circ}", False)]),
    (8, r"3\sqrt{13}", [(r"\boxed{\sqrt{117}}", True), (r"\boxed{3 \sqrt{13}}", True), (r"\boxed{2\sqrt{13}}", False)]),
    (15, "6 - 5i", [(r"\boxed{6-5i}", True), (r"\boxed{6+5i}", False)]),
    (30, "52_8", [(r"\boxed{52_8}", True), (r"\boxed{52_{9}}", False)]),
    (51, "x^5 - x^4 + x^3 - x^2 + x - 1", [
        (r"\boxed{x^5-x^4+x^3-x^2+x-1}", True), (r"\boxed{x^5-x^4+x^3-x^2+x+1}", False),
    ]),
    (96, r"1 \pm \sqrt{19}", [(r"\boxed{1\pm\sqrt{19}}", True), (r"\boxed{1 + \sqrt{19}}", False)]),
    (103, "(3,4]", [(r"\boxed{(3, 4]}", True), (r"\boxed{(3,4)}", False)]),
    (184, r"(2,\infty)", [(r"\boxed{(2, \infty)}", True), (r"\boxed{[2, \infty)}", False)]),
    (206, r"\left( \frac{3}{2}, -13 \right)", [
        (r"\boxed{\left(\frac32, -13\right)}", True), (r"\boxed{(1.5, 13)}", False),
    ]),
    (227, r"\text{(C)}", [("The answer is (C).", True), (r"\boxed{\text{(D)}}", False)]),
    (242, r"\$32,\!348", [(r"\boxed{\$32,348}", True), (r"\boxed{32,349}", False)]),
    (380, r"(0,9) \cup (9,36)", [(r"\boxed{(0,9)\cup(9,36)}", True), (r"\boxed{(0,36)}", False)]),
    (4, r"\text{Evelyn}", [(r"\boxed{\text{Evelyn}}", True), (r"\boxed{\text{Navin}}", False)]),
]


@pytest.fixture(scope="module")
def math500_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "math500" / "test.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("row, written, replies", MATH500_PAIRS, ids=[str(p[0]) for p in MATH500_PAIRS])
def test_math500_latex_answers_are_graded_as_eval_grades_them(math500_rows, row, written, replies):
    assert math500_rows[row]["answer"] == written
    gold = load_items(DATA / "math500" / "test.jsonl")[row].gold
    for reply, correct in replies:
        predicted = normalize(extract_answer(reply))  # what a strategy puts in Result.extracted
        assert grade(predicted, gold) is correct, (reply, predicted, gold)


def test_every_math500_gold_grades_right_as_a_model_would_write_it(math500_rows):
    items = load_items(DATA / "math500" / "test.jsonl")
    for item, row in zip(items, math500_rows, strict=True):
        for reply in (f"So the answer is $\\boxed{{{row['answer']}}}$.", f"Final answer: ${row['answer']}$"):
            assert grade(normalize(extract_answer(reply)), item.gold), (item.id, reply, item.gold)


def test_math500_matrix_answers_written_without_spaces(math500_rows):
    """A matrix row break followed by a space was read as LaTeX spacing (MATH-500 has 7 matrices)."""
    assert math500_rows[99]["answer"] == r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}"
    gold = load_items(DATA / "math500" / "test.jsonl")[99].gold
    assert grade(normalize(extract_answer(r"\boxed{\begin{pmatrix}-1/3\\2/3\\5/3\end{pmatrix}}")), gold)


def test_math_rows_may_call_the_question_problem(tmp_path):
    path = _jsonl(tmp_path, '{"problem": "What is $1+1$?", "solution": "\\\\boxed{2}", "answer": "2"}',
                  '{"question": "q", "problem": "ignored", "answer": "3"}')
    assert [(i.question, i.gold) for i in load_items(path)] == [("What is $1+1$?", "2"), ("q", "3")]
    with pytest.raises(EdgesrmError, match=r"qa.jsonl:1: 'problem' must be a non-empty string, not null"):
        load_items(_jsonl(tmp_path, '{"problem": null, "answer": "2"}'))
    with pytest.raises(EdgesrmError, match=r"qa.jsonl:1: expected a JSON object with 'problem' and 'answer' "
                                           r"\(no 'answer'\)"):
        load_items(_jsonl(tmp_path, '{"problem": "p"}'))


class FakeRuntime:
    """Runtime.ask's contract without a model: replies from a table, the seeds it was given."""

    def __init__(self, replies: dict[str, str] | None = None, error: EdgesrmError | None = None) -> None:
        self.replies, self.error, self.seeds = replies or {}, error, []

    def ask(self, question, *, strategy, seed, **options):
        self.seeds.append(seed)
        if self.error is not None:
            raise self.error
        extracted = normalize(extract_answer(self.replies.get(question, "")))
        return SimpleNamespace(extracted=extracted, strategy=strategy, total_s=0.5, completion_tokens=5,
                               deadline_missed=False, early_stopped=False, votes={}, paths=[], seed=seed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_question_i_uses_seed_plus_i_wrapping_around_at_the_largest_seed(small_dataset, tmp_path):
    items = load_items(small_dataset)
    for base, expected in [(0, [0, 1]), (MAX_SEED - 1, [MAX_SEED - 1, MAX_SEED]), (MAX_SEED, [MAX_SEED, 0])]:
        rt = FakeRuntime()
        evaluate(rt, items, "cot", tmp_path / "rows.jsonl", seed=base)
        assert rt.seeds == expected
        assert [json.loads(line)["seed"] for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == expected
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(EdgesrmError, match="seed must be an integer from 0 to 4,294,967,294"):
            evaluate(FakeRuntime(), items, "cot", tmp_path / "rows.jsonl", seed=bad)


def test_an_error_while_answering_names_the_question(small_dataset, tmp_path):
    failing = FakeRuntime(error=EdgesrmError("ctx=64 is too small", cli="--ctx 64 is too small"))
    with pytest.raises(EdgesrmError, match=r"^cot q0: ctx=64 is too small$") as caught:
        evaluate(failing, load_items(small_dataset), "cot", tmp_path / "rows.jsonl")
    assert caught.value.cli == "cot q0: --ctx 64 is too small"


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1)])
def test_eval_refuses_the_seeds_ask_refuses_with_the_same_error(seed, outside_a_checkout):
    runner = CliRunner()
    by_ask = runner.invoke(cli, ["ask", "--seed", seed, "What is 2 + 2?"])
    by_eval = runner.invoke(cli, ["eval", "--seed", seed])
    assert by_ask.exit_code == by_eval.exit_code == 2
    error = [line for line in by_eval.stderr.splitlines() if line.startswith("Error:")]
    assert error == [line for line in by_ask.stderr.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: Invalid value for '--seed': {seed} is not in the range 0<=x<=4294967294."]


def test_eval_shows_a_line_per_question_when_stderr_is_not_a_terminal(monkeypatch, outside_a_checkout):
    items = load_items(DATA / "math500" / "test.jsonl", limit=2)
    fake = FakeRuntime({items[0].question: r"So $\boxed{(3, \frac{\pi}{2})}$."})
    monkeypatch.setattr(edgesrm.runtime, "load", lambda *args, **kwargs: fake)
    result = CliRunner().invoke(cli, ["eval", "-d", "math500", "--limit", "2", "-s", "direct", "-s", "cot",
                                      "--seed", str(MAX_SEED), "--ctx", "2048", "-o", "out"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert lines == [
        r"[1/2] direct q0: (3,\frac{\pi}{2}) (ok) 0.5 s",
        r"[2/2] direct q1: no answer (wrong, gold p-q) 0.5 s",
        r"[1/2] cot q0: (3,\frac{\pi}{2}) (ok) 0.5 s",
        r"[2/2] cot q1: no answer (wrong, gold p-q) 0.5 s",
    ]
    assert fake.seeds == [MAX_SEED, 0, MAX_SEED, 0]
    assert "accuracy  50.0%" in result.stdout
    assert json.loads((outside_a_checkout / "out" / "summary.json").read_text())[0]["accuracy"] == 0.5


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
         "--max-tokens", "48", "--seed", "0", "-o", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "deadline misses" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["strategy"] for s in summary] == ["direct", "cot"]
    assert (out / "accuracy-latency.png").is_file()
    rows = [json.loads(line) for line in (out / "cot.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]


def test_eval_math500_end_to_end_outside_a_checkout(model_path, tmp_path):
    """As on a Pi after pip install: no checkout, no EDGESRM_DATA, stderr a pipe, the largest seed."""
    env = {k: v for k, v in os.environ.items() if k != "EDGESRM_DATA"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgesrm", "eval", "-d", "math500", "--limit", "2", "-s", "direct", "--max-tokens",
         "24", "--seed", str(MAX_SEED), "-m", str(model_path), "-o", "out"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in progress] == ["[1/2] direct q0", "[2/2] direct q1"], proc.stderr
    assert all(line.endswith(" s") and ("(ok)" in line or "(wrong, gold" in line) for line in progress)
    rows = [json.loads(line) for line in (tmp_path / "out" / "direct.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == [r"(3,\frac{\pi}{2})", "p-q"]
    assert [r["seed"] for r in rows] == [MAX_SEED, 0]
    assert "accuracy" in proc.stdout


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
