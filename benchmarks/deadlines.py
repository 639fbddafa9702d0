"""Accuracy under deadlines: does a deadline cost accuracy only where it binds?

On the evaluation model and a slice of GSM8K test, in one process:

1. ``direct``, ``cot`` and ``sc -n 8`` without a deadline (the unconstrained runs);
2. ``cot`` and ``sc`` again with deadlines of 50%, 75% and 100% of that strategy's
   *median* unconstrained latency (measured in step 1 of this same run).

Every question keeps its seed across runs, so a deadline that does not bind gives the same
text as the unconstrained run (issue 15's rule). Reported per strategy and deadline: accuracy,
deadline misses, how many answers the deadline cut (a path ended by ``deadline`` or answered
under a forced answer), and, among the runs the deadline did not cut, how many gave the
unconstrained run's text (should be all of them).

Rows are appended to ``benchmarks/results/deadlines/<model>.jsonl`` as they are measured, so an
interrupted run resumes. Check that the machine is idle first (``uptime``): other processes make
llama.cpp's decode many times slower and every deadline bind.

    python benchmarks/deadlines.py --limit 20 --sc-limit 4      # 42 minutes on the 2-core AMX Xeon
    python benchmarks/deadlines.py --limit 20 --sc-limit 4 --summary   # the table again, no model
    python benchmarks/deadlines.py --limit 3 --sc-limit 2 --max-tokens 64   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgesrm.answers import answers_match
from edgesrm.budget import Budget
from edgesrm.eval import find_dataset, load_items
from edgesrm.runtime import load

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.5, 0.75, 1.0)
EVAL_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # the name scripts/get_eval_model.py gives it


def eval_model() -> Path:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_eval_model.py")], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


def measure(rt, strategy: str, item, deadline: float | None, args) -> dict:
    result = rt.ask(item.question, strategy=strategy, n=args.n, max_tokens=args.max_tokens, seed=args.seed + item.id,
                    temperature=args.temperature, budget=Budget(deadline_s=deadline))
    # cut by the deadline: stopped by it, or its reasoning ended by it (answer forced in time)
    cut = sum(p.finish_reason == "deadline" or p.reasoning_ended == "deadline" for p in result.paths)
    return {
        "id": item.id, "strategy": strategy, "deadline": deadline, "answer": result.extracted,
        "correct": answers_match(result.extracted, item.gold), "seconds": round(result.total_s, 3),
        "tokens": result.completion_tokens, "missed": result.deadline_missed, "cut_paths": cut,
        "paths": len(result.paths), "text": result.text,
    }


def summarize(rows: list[dict]) -> None:
    """Per strategy and deadline: accuracy, misses, runs the deadline cut, and among runs it did
    not cut, how many gave the unconstrained run's text (issue 15's rule: all of them).

    "Did not cut" is judged in the run itself: this machine's decode speed varies by up to a third
    between runs, so the unconstrained run's time does not say whether a later run met the deadline.
    """
    base = {(r["strategy"], r["id"]): r for r in rows if r["deadline"] is None}
    print(f"{'strategy':<8} {'deadline':>9} {'n':>3} {'accuracy':>8} {'misses':>6} {'cut':>4} "
          f"{'uncut, same text':>16} {'mean s':>7}")
    keys = sorted({(r["strategy"], r["deadline"] or 0.0) for r in rows})
    for strategy, deadline in keys:
        group = [r for r in rows if r["strategy"] == strategy and (r["deadline"] or 0.0) == deadline]
        same = [r["text"] == base[(strategy, r["id"])]["text"] for r in group if deadline
                and (strategy, r["id"]) in base and r["cut_paths"] == 0]
        label = f"{deadline:.2f} s" if deadline else "none"
        print(f"{strategy:<8} {label:>9} {len(group):>3} {100 * np.mean([r['correct'] for r in group]):7.1f}% "
              f"{sum(r['missed'] for r in group):>6} {sum(r['cut_paths'] > 0 for r in group):>4} "
              f"{(f'{sum(same)}/{len(same)}' if deadline else '-'):>16} {np.mean([r['seconds'] for r in group]):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the evaluation model)")
    parser.add_argument("--limit", type=int, default=50, help="questions for direct and cot")
    parser.add_argument("--sc-limit", type=int, default=20, help="questions for sc (the first of them)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary", action="store_true", help="only print the table of what --out holds")
    args = parser.parse_args()

    model = args.model or (Path(EVAL_MODEL) if args.summary else eval_model())
    out = args.out or ROOT / "benchmarks" / "results" / "deadlines" / f"{model.stem}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["strategy"], r["id"], r["deadline"]) for r in rows}
    items = load_items(find_dataset("gsm8k"), args.limit)
    if args.summary:
        asked = {"direct": {i.id for i in items}, "cot": {i.id for i in items}, "sc": {i.id for i in items[: args.sc_limit]}}
        summarize([r for r in rows if r["id"] in asked[r["strategy"]]])
        return
    print(f"model {model.name}, load average {os.getloadavg()[0]:.2f} before the run", file=sys.stderr)

    rt = load(model, n_ctx=1024 + args.n * args.max_tokens, threads=args.threads, max_sequences=args.n)

    def run(strategy: str, chosen, deadline: float | None) -> None:
        for item in chosen:
            if (strategy, item.id, deadline) in done:
                continue
            row = measure(rt, strategy, item, deadline, args)
            rows.append(row)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{strategy:>6} deadline={deadline} q{item.id}: {row['answer']} ({'ok' if row['correct'] else 'x'}) "
                  f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)

    plan = {"direct": items, "cot": items, "sc": items[: args.sc_limit]}
    asked = {strategy: {item.id for item in chosen} for strategy, chosen in plan.items()}

    def rows_of(strategy: str) -> list[dict]:  # this run's questions only (the file may hold more)
        return [r for r in rows if r["strategy"] == strategy and r["id"] in asked[strategy]]

    with rt:
        for strategy, chosen in plan.items():
            run(strategy, chosen, None)
        for strategy in ("cot", "sc"):
            median = float(np.median([r["seconds"] for r in rows_of(strategy) if r["deadline"] is None]))
            for fraction in FRACTIONS:
                run(strategy, plan[strategy], round(fraction * median, 2))
    print(f"load average {os.getloadavg()[0]:.2f} after the run", file=sys.stderr)
    summarize([r for strategy in plan for r in rows_of(strategy)])


if __name__ == "__main__":
    main()
