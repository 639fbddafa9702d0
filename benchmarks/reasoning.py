"""Reasoning strategies on the evaluation model over a fixed slice of GSM8K.

For each quantization (the model as shipped, Q4_K_M, and requantized to Q4_0) and each
question, in one process and in this order:

- cot            one chain of thought
- sc-batched     self-consistency, N=8 paths decoded in one batch, no early stopping
- sc-sequential  the same 8 paths (same seeds) run one after another (on --seq-limit questions)
- sc-early       self-consistency with early stopping
- budget         budget forcing with a deadline (--deadline seconds per question)

Each row is appended to a JSONL file as soon as it is measured, so a long run that is
interrupted resumes where it stopped. The summary prints accuracy, wall time and tokens per
configuration, and the ratios the targets are about:

- sc-batched wall time / sc-sequential wall time (same questions): <= 0.6 (Q4_K_M), <= 0.5 (Q4_0)
- sc-early accuracy within 1 point of sc-batched, with <= 60% of its tokens
- zero deadline misses for budget

    python benchmarks/reasoning.py --limit 50            # hours on 2 cores
    python benchmarks/reasoning.py --limit 5 --seq-limit 2   # a smoke run
    # the train-set run the early-stopping threshold was chosen on:
    python benchmarks/reasoning.py --dataset ../shared/data/gsm8k/train.jsonl --limit 40 --configs sc-batched --quants Q4_K_M
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgesrm.answers import answers_match, vote
from edgesrm.budget import Budget, Deadline
from edgesrm.engine import SamplingParams
from edgesrm.convert import quantize
from edgesrm.eval import find_dataset, load_items
from edgesrm.runtime import load
from edgesrm.strategies import Task, run_strategy
from edgesrm.strategies.self_consistency import STOP_CONFIDENCE, vote_decided

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("cot", "sc-batched", "sc-sequential", "sc-early", "budget")
REPLAY_CONFIDENCES = (0.95, 0.9, 0.8, 0.7, 0.65, 0.6)  # Beta thresholds the replay compares


def eval_model() -> Path:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_eval_model.py")], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


def requantize(src: Path, quant: str) -> Path:
    """``src`` requantized with llama.cpp's own quantizer (edgesrm quantize), cached beside it."""
    out = src.with_name(src.stem.rsplit("-", 1)[0] + f"-{quant.lower()}.gguf")
    return out if out.exists() else quantize(src, out, quant, allow_requantize=True)


def run_config(rt, config: str, question: str, seed: int, args) -> dict:
    """One question under one configuration: answer, wall time, tokens, deadline miss."""
    sampling = SamplingParams(temperature=args.temperature, seed=seed)
    common = dict(engine=rt.engine, chat=rt.chat, question=question, sampling=sampling, n=args.n,
                  max_tokens=args.max_tokens)
    started = time.perf_counter()
    if config == "sc-sequential":
        template = Task(**common)
        answers, tokens, paths = [], 0, []
        for i in range(args.n):
            path_task = replace(template, sampling=template.path_sampling(i), deadline=Deadline(None))
            result = run_strategy("cot", path_task)
            answers.append(result.paths[0].answer)
            tokens += result.completion_tokens
            paths.append([result.paths[0].answer, result.paths[0].tokens, result.paths[0].finish_reason])
        winner, _ = vote(answers)
        return {"answer": winner, "seconds": time.perf_counter() - started, "tokens": tokens, "missed": False,
                "paths": paths}
    budget = Budget(deadline_s=args.deadline) if config == "budget" else Budget()
    strategy = {"cot": "cot", "sc-batched": "sc", "sc-early": "sc", "budget": "budget"}[config]
    task = Task(**common, budget=budget, deadline=Deadline(budget.deadline_s), early_stop=config == "sc-early")
    result = run_strategy(strategy, task)
    return {"answer": result.extracted, "seconds": time.perf_counter() - started,
            "tokens": result.completion_tokens, "missed": result.deadline_missed,
            "paths": [path_record(p, logprobs=config == "sc-batched") for p in result.paths]}


def path_record(p, logprobs: bool) -> list:
    """[answer, sampled tokens, finish reason, whether it voted] and, with ``logprobs``, the
    log-probability of each of its tokens (3 decimals; null where forced), which
    ``benchmarks/deepconf.py`` replays DeepConf's weighting and pruning on."""
    record = [p.answer, p.tokens, p.finish_reason, p.vote > 0]
    if logprobs:
        record.append([None if lp is None or math.isnan(lp) else round(lp, 3) for lp in p.logprobs])
    return record


def voted(record: list) -> bool:
    """Whether a recorded path voted: its 4th field, or in older rows, which did not record it,
    whether it has an answer (as the replay below counted them when the threshold was chosen)."""
    return bool(record[3]) if len(record) > 3 else record[0] is not None


def replay_early_stopping(paths: list[list], confidence: float = STOP_CONFIDENCE) -> tuple[str | None, int]:
    """The early-stopping rule replayed on already sampled paths, taken one at a time in
    index order (as adaptive consistency is evaluated): the answer it stops on and the
    tokens of the paths it consumed. Free of the sampling noise between two real runs."""
    answers, tokens = [], 0
    for i, record in enumerate(paths):
        answers.append(record[0] if voted(record) else None)
        tokens += record[1]
        _, tally = vote(answers)
        if vote_decided(tally, tally, len(paths) - i - 1, confidence):
            break
    return vote(answers)[0], tokens


def write_sc_calibration(rows: list[dict], out: Path, source: str) -> None:
    """``edgesrm/data/sc_calibration.json`` from sc-batched rows: per question its paths as
    [answer class (in order of first appearance; null: did not vote), sampled tokens]."""
    questions = []
    for r in sorted((r for r in rows if r["config"] == "sc-batched"), key=lambda r: r["id"]):
        classes: dict[str, int] = {}
        paths = []
        for record in r["paths"]:
            paths.append([classes.setdefault(record[0], len(classes)) if voted(record) else None, record[1]])
        questions.append(paths)
    about = ("Self-consistency paths replayed by edgesrm.strategies.early_stopping to predict the wall time "
             "of a launch policy. Each question: its paths as [answer class (null: did not vote), tokens], in "
             f"launch order. Source: {source}.")
    out.write_text(json.dumps({"about": about, "questions": questions}, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({len(questions)} questions)")


def summarize(rows: list[dict], quant: str, seq_ids: set[int]) -> None:
    print(f"\n{quant}: {len({r['id'] for r in rows})} questions")
    print(f"{'config':>14} {'n':>4} {'accuracy':>9} {'wall s':>9} {'tokens':>9} {'misses':>7}")
    stats = {}
    for config in CONFIGS:
        sel = [r for r in rows if r["config"] == config]
        if not sel:
            continue
        stats[config] = sel
        acc = 100 * np.mean([r["correct"] for r in sel])
        print(f"{config:>14} {len(sel):4d} {acc:8.1f}% {sum(r['seconds'] for r in sel):9.1f} "
              f"{sum(r['tokens'] for r in sel):9d} {sum(r['missed'] for r in sel):7d}")
    if "sc-batched" in stats and "sc-sequential" in stats:
        both = {r["id"] for r in stats["sc-sequential"]} & {r["id"] for r in stats["sc-batched"]}
        bat = sum(r["seconds"] for r in stats["sc-batched"] if r["id"] in both)
        seq = sum(r["seconds"] for r in stats["sc-sequential"] if r["id"] in both)
        by_id = {r["id"]: r["seconds"] for r in stats["sc-sequential"]}
        median = np.median([r["seconds"] / by_id[r["id"]] for r in stats["sc-batched"] if r["id"] in both])
        print(f"batched / sequential wall time on the same {len(both)} questions: {bat / seq:.2f} "
              f"(median per question {median:.2f})")
    if "sc-batched" in stats and "sc-early" in stats:
        ids = {r["id"] for r in stats["sc-early"]} & {r["id"] for r in stats["sc-batched"]}
        full = [r for r in stats["sc-batched"] if r["id"] in ids]
        early = [r for r in stats["sc-early"] if r["id"] in ids]
        d_acc = 100 * (np.mean([r["correct"] for r in early]) - np.mean([r["correct"] for r in full]))
        tok = sum(r["tokens"] for r in early) / max(1, sum(r["tokens"] for r in full))
        print(f"early stopping: accuracy {d_acc:+.1f} points, tokens {tok:.2f} of full sc-8 "
              f"({len(ids)} questions, two independent runs)")
    with_paths = [r for r in stats.get("sc-batched", []) if "paths" in r]
    for confidence in sorted({STOP_CONFIDENCE, *REPLAY_CONFIDENCES}, reverse=True) if with_paths else ():
        replayed = [(r, replay_early_stopping(r["paths"], confidence)) for r in with_paths]
        d_acc = 100 * np.mean([answers_match(ans, r["gold"]) - r["correct"] for r, (ans, _) in replayed])
        tok = sum(t for _, (_, t) in replayed) / max(1, sum(r["tokens"] for r, _ in replayed))
        agree = np.mean([ans == r["answer"] for r, (ans, _) in replayed])
        default = " (the default)" if confidence == STOP_CONFIDENCE else ""
        print(f"early stopping (Beta rule at {confidence}{default}) replayed on sc-batched's own paths, one at a time: "
              f"accuracy {d_acc:+.1f} points, tokens {tok:.2f}, same answer on {100 * agree:.0f}% "
              f"({len(replayed)} questions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the evaluation model)")
    parser.add_argument("--quants", default="Q4_K_M,Q4_0", help="Q4_K_M: the --model file as it is (the evaluation model ships as Q4_K_M); "
                             "any other type: that file requantized to it")
    parser.add_argument("--dataset", default="gsm8k",
                        help="gsm8k (its test set) or a JSONL path, e.g. the train set to calibrate on")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seq-limit", type=int, default=10, help="questions on which sc-sequential also runs")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--deadline", type=float, default=15.0, help="seconds per question for budget")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reasoning")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-sc-calibration", action="store_true",
                        help="write edgesrm/data/sc_calibration.json (the launch policy's replay data) from "
                             "this run's sc-batched rows (one quant; meant for the train set)")
    args = parser.parse_args()

    shipped = args.model or eval_model()
    dataset = find_dataset(args.dataset)
    items = load_items(dataset, args.limit)
    seq_ids = {item.id for item in items[: args.seq_limit]}
    configs = [c for c in args.configs.split(",") if c]
    args.out.mkdir(parents=True, exist_ok=True)
    for quant in args.quants.split(","):
        path = shipped if quant == "Q4_K_M" else requantize(shipped, quant)
        suffix = "" if args.dataset == "gsm8k" else f"-{dataset.stem}"
        log = args.out / f"{path.stem}{suffix}.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        done = {(r["id"], r["config"]) for r in rows}
        rt = load(path, n_ctx=1024 + args.n * args.max_tokens, max_sequences=args.n, threads=args.threads)
        with rt, open(log, "a") as f:
            for item in items:
                for config in configs:
                    if (item.id, config) in done or (config == "sc-sequential" and item.id not in seq_ids):
                        continue
                    row = run_config(rt, config, item.question, 1000 + item.id, args)
                    row |= {"id": item.id, "config": config, "gold": item.gold,
                            "correct": answers_match(row["answer"], item.gold)}
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"{path.stem} q{item.id:3d} {config:>14} {row['seconds']:7.1f} s {row['tokens']:5d} tok "
                          f"{'ok' if row['correct'] else '--'}", flush=True)
        summarize(rows, path.stem, seq_ids)
        if args.write_sc_calibration:
            write_sc_calibration(rows, ROOT / "edgesrm" / "data" / "sc_calibration.json",
                                 f"edgesrm sc -n {args.n} --no-early-stop on {dataset.parent.name}/{dataset.name} questions 0-{len(items) - 1}, "
                                 f"{path.name}, temperature {args.temperature}, {args.max_tokens} tokens per path "
                                 f"(benchmarks/results/reasoning/{log.name})")


if __name__ == "__main__":
    main()
