"""``edgesrm eval``: accuracy and cost of reasoning strategies on a question/answer dataset.

A dataset is JSONL with ``question`` and ``answer`` per line; GSM8K's answers end with
``#### <number>``, which is what is compared. One JSONL row per question and strategy is
written, then a summary (accuracy, mean and p95 latency, mean tokens, deadline misses) and,
with matplotlib installed, a plot of accuracy against mean latency.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .answers import answers_match, extract_answer, normalize
from .errors import EdgesrmError
from .runtime import Runtime

DATASETS = {"gsm8k": Path("gsm8k") / "test.jsonl"}


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
    """A dataset name (``gsm8k``) looked up in the shared data folders, or a JSONL path."""
    if name not in DATASETS:
        path = Path(name).expanduser()
        if not path.is_file():
            raise EdgesrmError(f"dataset not found: {name} (give a JSONL file or one of: {', '.join(DATASETS)})")
        return path
    roots = [Path(os.environ["EDGESRM_DATA"])] if os.environ.get("EDGESRM_DATA") else []
    here = Path.cwd().resolve()
    roots += [base / "shared" / "data" for base in (here, *here.parents[:3])]
    for root in roots:
        if (root / DATASETS[name]).is_file():
            return root / DATASETS[name]
    raise EdgesrmError(
        f"cannot find the {name} data ({DATASETS[name]}) under EDGESRM_DATA or a shared/data folder "
        f"here or above; set EDGESRM_DATA or pass --dataset path/to/file.jsonl"
    )


def load_items(path: Path, limit: int | None = None) -> list[Item]:
    items: list[Item] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], str(row["answer"])
            except (ValueError, KeyError, TypeError):
                raise EdgesrmError(f"{path}:{number}: expected a JSON object with 'question' and 'answer'") from None
            gold = answer.split("####")[-1] if "####" in answer else (extract_answer(answer) or answer)
            items.append(Item(len(items), question, normalize(gold) or ""))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise EdgesrmError(f"{path} holds no questions")
    return items


def evaluate(
    rt: Runtime, items: Iterable[Item], strategy: str, out: Path, *, on_item: Callable[[], None] | None = None,
    **ask_options,
) -> Summary:
    """Answer every item with ``strategy``; write one JSONL row each to ``out``."""
    latencies, tokens, correct, misses = [], [], 0, 0
    base_seed = ask_options.pop("seed", 0) or 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in items:
            result = rt.ask(item.question, strategy=strategy, seed=base_seed + item.id, **ask_options)
            ok = answers_match(result.extracted, item.gold)
            correct += ok
            misses += result.deadline_missed
            latencies.append(result.total_s)
            tokens.append(result.completion_tokens)
            f.write(json.dumps({
                "id": item.id, "strategy": result.strategy, "gold": item.gold, "predicted": result.extracted,
                "correct": ok, "latency_s": round(result.total_s, 3), "tokens": result.completion_tokens,
                "deadline_missed": result.deadline_missed, "early_stopped": result.early_stopped,
                "votes": result.votes, "paths": [
                    {"answer": p.answer, "tokens": p.tokens, "confidence": p.confidence, "seconds": round(p.seconds, 3),
                     "finish": p.finish_reason, "vote": p.vote} for p in result.paths
                ],
            }) + "\n")
            f.flush()
            if on_item is not None:
                on_item()
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
