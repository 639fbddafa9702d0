"""``edgesrm eval``: accuracy and cost of reasoning strategies on a question/answer dataset.

A dataset is JSONL with ``question`` (or MATH's ``problem``) and ``answer`` per line; GSM8K's
answers end with ``#### <number>``, which is what is compared, MATH's are LaTeX (graded with
``answers.grade``: edgesrm's normal forms, else Math-Verify). GSM8K test (1,319 questions) and
MATH-500 (500) ship inside the package (``edgesrm/data``, MIT, see ``SOURCES.md``), so ``eval``
works offline and outside a checkout. One JSONL row per question and strategy is written, then a
summary (accuracy, mean and p95 latency, mean tokens, deadline misses) and, with matplotlib
installed, a plot of accuracy against mean latency.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .answers import extract_answer, grade, normalize
from .checks import MAX_SEED, check_int
from .errors import EdgesrmError
from .runtime import Runtime

# The datasets shipped in edgesrm/data (package data; licenses and sources in SOURCES.md).
DATA = Path(__file__).resolve().parent / "data"
DATASETS = {"gsm8k": Path("gsm8k") / "test.jsonl", "math500": Path("math500") / "test.jsonl"}


@dataclass(frozen=True)
class Item:
    id: int
    question: str
    gold: str  # normalised


@dataclass(frozen=True)
class Summary:
    strategy: str
    questions: int
    accuracy: float
    mean_latency_s: float
    p95_latency_s: float
    mean_tokens: float
    deadline_misses: int

    def to_dict(self) -> dict:
        return asdict(self)


def find_dataset(name: str) -> Path:
    """The JSONL file of a dataset: ``gsm8k`` or ``math500`` (shipped), else ``name`` as a path.

    A shipped dataset is read from ``$EDGESRM_DATA/<name>/test.jsonl`` when ``EDGESRM_DATA`` is
    set and that file exists, else from the copy inside the package, whatever the working
    directory. An error's ``cli`` text says it in ``eval``'s options (``-d``, ``--dataset``).
    """
    if name in DATASETS:
        if os.environ.get("EDGESRM_DATA"):
            folder = Path(os.environ["EDGESRM_DATA"]).expanduser()
            if not folder.is_dir():  # a typo must not fall back to the shipped copy in silence
                raise EdgesrmError(f"EDGESRM_DATA={os.environ['EDGESRM_DATA']} is not a folder: unset it to use the "
                                   f"{name} data shipped with edgesrm, or point it at a folder holding {DATASETS[name]}")
            override = folder / DATASETS[name]
            if override.is_file():
                return override
        shipped = DATA / DATASETS[name]
        if shipped.is_file():
            return shipped
        why = f"the {name} data shipped with edgesrm is missing ({shipped}): reinstall edgesrm, set EDGESRM_DATA " \
              f"to a folder holding {DATASETS[name]}, or give"
        raise EdgesrmError(f"{why} the path of a JSONL file", cli=f"{why} --dataset FILE.jsonl")
    path = Path(name).expanduser()
    if path.is_file():
        return path
    what = f"{name} is a folder, not a file" if path.is_dir() else f"no dataset or file {name}"
    rows = "one JSON object with 'question' and 'answer' per line"
    raise EdgesrmError(
        f"dataset not found: {what}; give {' or '.join(map(repr, DATASETS))} (shipped with edgesrm) or the path of "
        f"a JSONL file ({rows})",
        cli=f"dataset not found: {what}; give {' or '.join(f'-d {known}' for known in DATASETS)} (shipped with "
            f"edgesrm) or --dataset FILE.jsonl ({rows})",
    )


def load_items(path: Path, limit: int | None = None) -> list[Item]:
    """The questions of a question/answer JSONL file, every line checked before any model work.

    Each non-blank line must be a JSON object whose ``question`` (or, without one, ``problem``, as
    in MATH) is a non-empty string and whose ``answer`` is a string or a finite number; the gold
    answer is what follows GSM8K's ``####``, else a ``\\boxed{}`` or ``Final answer:`` in the
    answer, else the whole answer (MATH's LaTeX answers), normalised.
    All lines are checked even with ``limit`` (only the first ``limit`` questions are returned).
    Raises ``EdgesrmError`` ``FILE:LINE: what is wrong`` for the first bad line, including
    ``FILE:LINE: not UTF-8 text`` (bytes are never replaced), and when there are no questions.
    """
    items: list[Item] = []
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EdgesrmError(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            question, gold = _check_row(line, f"{path}:{number}")
            if limit is None or len(items) < limit:
                items.append(Item(len(items), question, gold))
    if not items:
        raise EdgesrmError(f"{path} holds no questions")
    return items


def _check_row(line: str, where: str) -> tuple[str, str]:
    """(question, normalised gold answer) of one JSONL line, or EdgesrmError naming ``where``."""
    try:
        row = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise EdgesrmError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})") from None
    if isinstance(row, dict) and "question" not in row and "problem" in row:  # MATH's rows
        key = "problem"
    else:
        key = "question"
    if not isinstance(row, dict) or key not in row or "answer" not in row:
        missing = ("" if not isinstance(row, dict) else
                   f" (no {' and no '.join(repr(k) for k in (key, 'answer') if k not in row)})")
        got = "" if isinstance(row, dict) else f", not {_json_kind(row)}"
        raise EdgesrmError(f"{where}: expected a JSON object with '{key}' and 'answer'{missing}{got}")
    question, answer = row[key], row["answer"]
    if not isinstance(question, str) or not question.strip():
        raise EdgesrmError(f"{where}: '{key}' must be a non-empty string, not {_json_kind(question)}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise EdgesrmError(f"{where}: 'answer' must be a string or a number, not {_json_kind(answer)}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise EdgesrmError(f"{where}: 'answer' must be a finite number, not {answer}")
    text = str(answer)
    gold = normalize(text.split("####")[-1] if "####" in text else (extract_answer(text, last_number=False) or text))
    if gold is None:
        raise EdgesrmError(f"{where}: 'answer' holds no answer ({text[:40]!r})")
    return question, gold


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def evaluate(
    rt: Runtime, items: Iterable[Item], strategy: str, out: Path, *,
    on_item: Callable[[dict], None] | None = None, **ask_options,
) -> Summary:
    """Answer every item with ``strategy``; write one JSONL row each to ``out``.

    Question ``i`` is asked with seed ``(seed + i) % (MAX_SEED + 1)`` (``seed`` from 0 to
    ``MAX_SEED``, as ``ask`` takes it; default 0), so a run is reproducible. ``on_item(row)``
    is called with each row once it is written (``id``, ``predicted``, ``gold``, ``correct``,
    ``latency_s``...). An error while answering names the strategy and question (``cot q7: ...``).
    """
    latencies, tokens, correct, misses = [], [], 0, 0
    base_seed = ask_options.pop("seed", 0)
    base_seed = check_int("seed", 0 if base_seed is None else base_seed, 0, MAX_SEED)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in items:
            try:
                result = rt.ask(item.question, strategy=strategy, seed=(base_seed + item.id) % (MAX_SEED + 1),
                                **ask_options)
            except EdgesrmError as exc:
                where = f"{strategy} q{item.id}: "
                raise EdgesrmError(where + str(exc), cli=exc.cli and where + exc.cli) from None
            ok = grade(result.extracted, item.gold)
            correct += ok
            misses += result.deadline_missed
            latencies.append(result.total_s)
            tokens.append(result.completion_tokens)
            row = {
                "id": item.id, "strategy": result.strategy, "gold": item.gold, "predicted": result.extracted,
                "correct": ok, "latency_s": round(result.total_s, 3), "tokens": result.completion_tokens,
                "seed": result.seed, "deadline_missed": result.deadline_missed, "early_stopped": result.early_stopped,
                "votes": result.votes, "paths": [
                    {"answer": p.answer, "tokens": p.tokens, "confidence": p.confidence, "seconds": round(p.seconds, 3),
                     "finish": p.finish_reason, "vote": p.vote} for p in result.paths
                ],
            }
            f.write(json.dumps(row) + "\n")
            f.flush()
            if on_item is not None:
                on_item(row)
    n = len(latencies)
    return Summary(strategy, n, correct / n, float(np.mean(latencies)), float(np.percentile(latencies, 95)),
                   float(np.mean(tokens)), misses)


def plot(summaries: list[Summary], path: Path) -> Path | None:
    """Accuracy against mean latency, one point per strategy; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        ax.scatter(s.mean_latency_s, 100 * s.accuracy)
        ax.annotate(s.strategy, (s.mean_latency_s, 100 * s.accuracy), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("mean latency per question (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{summaries[0].questions} questions")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
