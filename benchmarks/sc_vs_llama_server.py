"""Self-consistency: edgesrm's ``sc`` against llama.cpp's own ``llama-server`` with ``n=8`` and a vote.

Three arms answer the same GSM8K test questions with the same model file, threads (2), sampling
(temperature 0.7, top-p 0.95, top-k 40, min-p 0.05, seed ``--seed`` + question id) and token cap
per path (``--max-tokens``, 384):

- ``llama-server``: one non-streamed ``/v1/chat/completions`` request with ``n: 8`` (llama-server
  gives the children seeds seed+1...) and edgesrm's step-by-step system prompt
  (``edgesrm.chat.STEP_BY_STEP_SYSTEM``) sent by the client, then a client-side majority vote
  (``collections.Counter``) over ``normalize(extract_answer(content))`` of the 8 choices.
  llama-server is built from the llama.cpp source llama-cpp-python vendors (scripts/build_peer.sh)
  and runs as in benchmarks/serve.py: ``-np 8 -kvu -c 8192 -t 2 -tb 2 -b 512 -ub 512`` (and
  ``--no-repack`` where edgesrm itself does without the repacked layouts, on a CPU with AMX).
- ``sc``: edgesrm in this process, ``Runtime.ask(question, strategy="sc", n=8, early_stop=True)``
  (edgesrm's default: the vote stops once decided; edgesrm adds the same system prompt itself).
- ``sc-no-early``: the same with ``early_stop=False`` (every path runs to its end).

Per quantization (the evaluation model Qwen2.5-Coder-1.5B-Instruct as shipped, Q4_K_M, and
requantized to Q4_0 with llama.cpp's quantizer, cached beside it as benchmarks/reasoning.py
does) one llama-server is started and the model is loaded into edgesrm (``load(n_ctx=8192,
threads=2)``: the same KV cells as llama-server's ``-c``; edgesrm's default of 4096 cells is too
few for 8 paths of 384 tokens), both stay loaded for the whole quantization and only one arm
computes at a time. The arms' order rotates from question to question (q0: A B C, q1: B C A,
q2: C A B) so that neither side always runs first. Prompt caching across requests is off on both
sides (``cache_prompt: false`` per request to llama-server, ``load(cache_prompt=False)``), so
that the second edgesrm arm on a question does not reuse the first's prefill; ``--cache-prompt``
turns it on for both.

Tokens are the completion tokens of all paths. edgesrm reports them per path
(``PathResult.tokens``, sampled; tokens the strategy forced in, such as "Final answer:", are
recorded apart as ``forced_tokens``). llama-server's non-streamed reply to ``n > 1`` carries the
``usage`` of its first choice only, so each choice's tokens are counted after the timed request
with llama-server's ``/tokenize`` (its content, plus 1 for the end-of-generation token when it
ended with ``stop``); the first choice takes ``usage.completion_tokens`` as given, and each row
keeps both numbers for that choice (``choice0_tokens``: [usage, recount]) to check the recount.

Each measured row is appended to ``--out`` (JSONL) at once, keyed by (quant, arm, question id); a
rerun skips the rows already there, so an interrupted run resumes. Rows: quant, arm, id, gold,
answer, correct (``answers_match``), seconds (wall time of the request or the ``ask`` call),
tokens, paths (launched), per path [answer, tokens, finish_reason] (edgesrm rows add whether
the path voted), the load average before the question; edgesrm rows also ``early_stopped``,
``forced_tokens``, the result's ``notes`` (which say when the paths had to run in turns),
``batch_widths`` (decode steps per number of paths in the batch) and the ``launch`` policy sc ran.
With ``--texts FILE``, each row's path texts (in ``per_path``'s order) go to FILE, keyed the same
way, for reading what the paths wrote. Lines with ``run`` record each run's settings and the
machine's load average at its start and end; ``profile`` lines the speed profile edgesrm
measured and the policy it gives.

The summary also splits sc by launch policy where a quantization's rows ran several (the policy
changed between runs), and replays every policy sc considers on the ``sc-no-early`` arm's own
recorded paths: what each would have cost on these questions, beside what the train calibration
predicts.

The summary (printed at the end of a run, or alone with ``--summary``) is a markdown table per
quantization and arm over the questions that every arm has for that quantization: accuracy, wall
time, tokens, aggregate tok/s (tokens / wall), then the targets:

- sc wall / llama-server wall <= 0.85, with sc accuracy >= llama-server's
- sc wall / sc-no-early wall <= 1.0 (early stopping never slower)
- sc tokens / sc-no-early tokens <= 0.8
- sc accuracy no more than 1 point below sc-no-early's

with the median of the per-question ratios beside the ratios of the sums.

    python benchmarks/sc_vs_llama_server.py                  # 50 questions x 3 arms x 2 quants: hours on 2 cores
    python benchmarks/sc_vs_llama_server.py --quants Q4_0    # one quantization (resumes where it stopped)
    python benchmarks/sc_vs_llama_server.py --summary        # the table again, nothing run
    python benchmarks/sc_vs_llama_server.py --model "$(python -c 'from edgesrm.models import find_default_model; print(find_default_model())')" \\
        --limit 2 --max-tokens 48 --out /tmp/sc_smoke.jsonl   # a smoke run with the small model
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import ContextManager

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/serve.py's server helpers

from serve import (EVAL_MODEL, HOST, LLAMA, PEER, SAMPLING, Server, chat, machine, peer_version,  # noqa: E402
                   server_command, serving)

from edgesrm.answers import answers_match, extract_answer, normalize  # noqa: E402
from edgesrm.chat import STEP_BY_STEP_SYSTEM  # noqa: E402
from edgesrm.convert import quantize  # noqa: E402
from edgesrm.eval import Item, find_dataset, load_items  # noqa: E402
from edgesrm.models import model_store  # noqa: E402
from edgesrm.runtime import Runtime, load  # noqa: E402
from edgesrm import speed  # noqa: E402
from edgesrm.speed import SpeedProfile  # noqa: E402
from edgesrm.strategies.early_stopping import STOP_CONFIDENCE, Launch, choose_launch, launches, predict, replay  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SC, NO_EARLY = "sc", "sc-no-early"
ARMS = (LLAMA, SC, NO_EARLY)
EDGESRM_ARMS = (SC, NO_EARLY)
PATHS = 8
TEMPERATURE = 0.7
QUANTS = ("Q4_K_M", "Q4_0")
SHIPPED = "Q4_K_M"  # the evaluation model's own quantization
OUT = ROOT / "benchmarks" / "results" / "sc_vs_llama_server.jsonl"
TARGET_VS_LLAMA, TARGET_EARLY_WALL, TARGET_EARLY_TOKENS, TARGET_EARLY_ACC_PTS = 0.85, 1.0, 0.8, 1.0


# ---------------------------------------------------------------------------------------------
# Models


def eval_model() -> Path:
    """The evaluation model: in edgesrm's model store, else assembled by scripts/get_eval_model.py."""
    stored = model_store() / EVAL_MODEL
    if stored.is_file():
        return stored
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_eval_model.py")], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


def requantize(src: Path, quant: str) -> Path:
    """``src`` requantized with llama.cpp's quantizer, cached beside it (the file name
    benchmarks/reasoning.py gives it, so both benchmarks share it)."""
    out = src.with_name(src.stem.rsplit("-", 1)[0] + f"-{quant.lower()}.gguf")
    return out if out.exists() else quantize(src, out, quant, allow_requantize=True)


def model_files(args: argparse.Namespace) -> dict[str, Path]:
    """Quantization label -> GGUF: ``--model`` alone (labelled by its file name), else the
    evaluation model as shipped and/or requantized."""
    if args.model is not None:
        model = args.model.expanduser()
        if not model.is_file():
            sys.exit(f"no model {model}")
        return {model.name: model}
    shipped = eval_model()
    return {quant: shipped if quant == SHIPPED else requantize(shipped, quant) for quant in args.quants}


# ---------------------------------------------------------------------------------------------
# Rows (JSONL, resumable)


def read_lines(path: Path) -> list[dict]:
    """Every JSON line of ``path``; a line cut short by an interrupted write is skipped."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sys.exit(f"{path}: cannot be read ({exc.strerror if isinstance(exc, OSError) else exc})")
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            lines.append(record)
    return lines


def measured(lines: Iterable[dict]) -> list[dict]:
    return [line for line in lines if "arm" in line]


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rotated(arms: list[str], k: int) -> list[str]:
    """The arms' order for the ``k``-th question: q0 A B C, q1 B C A, q2 C A B..."""
    k %= len(arms)
    return arms[k:] + arms[:k]


# ---------------------------------------------------------------------------------------------
# Arms


def post_json(server: Server, path: str, body: dict, timeout: float = 120.0) -> dict:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{server.name}: POST {path} answered {resp.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


def recount_tokens(server: Server, message: dict, finish_reason: str | None) -> int:
    """A choice's completion tokens, counted again: its text tokenized by the server, plus the
    end-of-generation token it sampled when it ended with ``stop``."""
    text = (message.get("reasoning_content") or "") + (message.get("content") or "")
    tokens = post_json(server, "/tokenize", {"content": text, "add_special": False})["tokens"] if text else []
    return len(tokens) + (finish_reason == "stop")


def llama_server_arm(server: Server, item: Item, args: argparse.Namespace) -> dict:
    """One request with ``n`` = 8, then the client's vote."""
    body = {"messages": [{"role": "system", "content": STEP_BY_STEP_SYSTEM},
                         {"role": "user", "content": item.question}],
            "n": PATHS, "max_tokens": args.max_tokens, "temperature": TEMPERATURE, "seed": args.seed + item.id,
            "cache_prompt": args.cache_prompt, **SAMPLING}
    reply = chat(server, body)
    if not reply.ok or not isinstance(reply.body, dict):
        raise RuntimeError(f"{server.name}: question {item.id} failed: {reply.status} {reply.error} {reply.body}")
    choices = sorted(reply.body["choices"], key=lambda c: c.get("index", 0))
    paths = []
    for choice in choices:  # after the timed request
        answer = normalize(extract_answer(choice["message"].get("content") or ""))
        paths.append([answer, recount_tokens(server, choice["message"], choice.get("finish_reason")),
                      choice.get("finish_reason")])
    recounted = paths[0][1] if paths else None
    if paths and reply.completion_tokens is not None:
        paths[0][1] = reply.completion_tokens  # the first choice's usage is exact
    votes = Counter(p[0] for p in paths if p[0] is not None)
    return {"answer": votes.most_common(1)[0][0] if votes else None, "seconds": reply.seconds,
            "texts": [choice["message"].get("content") or "" for choice in choices],
            "tokens": sum(p[1] for p in paths), "paths": len(paths), "per_path": paths, "votes": dict(votes),
            "prompt_tokens": reply.prompt_tokens, "choice0_tokens": [reply.completion_tokens, recounted]}


def launch_record(policy: Launch) -> dict:
    return {"width": policy.width, "refill": policy.refill, "all_on_dissent": policy.all_on_dissent}


def launch_label(launch: dict) -> str:
    return (f"{launch['width']} at once" + (", refilled" if launch.get("refill") else "")
            + (", the rest on the first dissent" if launch.get("all_on_dissent") else ""))


def edgesrm_arm(runtime: Runtime, item: Item, early_stop: bool, args: argparse.Namespace) -> dict:
    # The policy sc chooses, kept in the row: sc's own call (launch_policy) with all 8 paths in the
    # engine's 16 slots and no token budget, from the cached profile.
    launch = launch_record(choose_launch(speed.profile(runtime.engine, PATHS), PATHS, STOP_CONFIDENCE)
                           if early_stop else Launch(PATHS))
    started = time.perf_counter()
    result = runtime.ask(item.question, strategy="sc", n=PATHS, max_tokens=args.max_tokens, temperature=TEMPERATURE,
                         seed=args.seed + item.id, early_stop=early_stop, **SAMPLING)
    seconds = time.perf_counter() - started
    return {"answer": result.extracted, "seconds": seconds, "tokens": result.completion_tokens,
            "texts": [p.text for p in result.paths],
            "paths": len(result.paths),
            "per_path": [[p.answer, p.tokens, p.finish_reason, p.vote > 0] for p in result.paths],
            "votes": dict(result.votes), "early_stopped": result.early_stopped, "forced_tokens": result.forced_tokens,
            "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
            "prefill_s": round(result.prefill_s, 3), "decode_s": round(result.decode_s, 3), "notes": result.notes,
            "batch_widths": result.batch_widths, "launch": launch}


def run_arm(arm: str, item: Item, server: Server | None, runtime: Runtime | None, args: argparse.Namespace) -> dict:
    if arm == LLAMA:
        assert server is not None
        return llama_server_arm(server, item, args)
    assert runtime is not None
    return edgesrm_arm(runtime, item, arm == SC, args)


# ---------------------------------------------------------------------------------------------
# A run


def server_args(model: Path, args: argparse.Namespace) -> argparse.Namespace:
    """What benchmarks/serve.py's ``serving`` and ``server_command`` read."""
    return argparse.Namespace(peer=args.peer, model=model, parallel=PATHS, ctx=args.ctx, threads=args.threads)


def pending(quant: str, items: list[Item], arms: list[str], done: set[tuple],
            first: int = 0) -> list[tuple[int, Item, list[str]]]:
    """(position, question, its arms not yet measured, in the rotated order) for each question
    from position ``first`` on."""
    out = []
    for k, item in enumerate(items):
        if k < first:
            continue
        todo = [arm for arm in rotated(arms, k) if (quant, arm, item.id) not in done]
        if todo:
            out.append((k, item, todo))
    return out


def run_quant(quant: str, model: Path, items: list[Item], arms: list[str], done: set[tuple],
              args: argparse.Namespace) -> None:
    work = pending(quant, items, arms, done, args.first)
    if not work:
        print(f"{quant}: all {len(items)} questions done for {', '.join(arms)}", file=sys.stderr)
        return
    needed = {arm for _, _, todo in work for arm in todo}
    # edgesrm first: its speed profile is measured before llama-server starts (whose threads,
    # right after its warm-up, would take cycles from the measurement).
    with edgesrm_runtime(bool(needed & set(EDGESRM_ARMS)), model, args) as runtime, \
            peer_server(LLAMA in needed, model, args) as server:
        for k, item, todo in work:
            for arm in todo:
                load_before = os.getloadavg()[0]
                row = run_arm(arm, item, server, runtime, args)
                texts = row.pop("texts")
                row = {"quant": quant, "arm": arm, "id": item.id, "gold": item.gold, "answer": row["answer"],
                       "correct": answers_match(row["answer"], item.gold), "seconds": round(row["seconds"], 3),
                       **{key: value for key, value in row.items() if key not in ("answer", "seconds")},
                       "load_before": round(load_before, 2), "position": k}
                append(args.out, row)
                if args.texts is not None:
                    append(args.texts, {"quant": quant, "arm": arm, "id": item.id, "texts": texts})
                done.add((quant, arm, item.id))
                print(f"{quant} q{item.id:<3d} {arm:>12}: {row['answer']!s:>10} {'ok' if row['correct'] else '--'} "
                      f"{row['seconds']:7.1f} s {row['tokens']:6d} tok {row['paths']} paths "
                      f"(load {load_before:.2f})", file=sys.stderr, flush=True)


def peer_server(wanted: bool, model: Path, args: argparse.Namespace) -> ContextManager[Server | None]:
    """llama-server on ``model`` for the whole quantization (benchmarks/serve.py's ``serving``)."""
    return serving(LLAMA, server_args(model, args)) if wanted else contextlib.nullcontext()


def edgesrm_runtime(wanted: bool, model: Path, args: argparse.Namespace) -> ContextManager[Runtime | None]:
    """edgesrm with the same KV cells as llama-server's ``-c``; ``load`` picks the rest (its 16
    sequences already take the 8 paths at once)."""
    if not wanted:
        return contextlib.nullcontext()
    started = time.perf_counter()
    runtime = load(model, n_ctx=args.ctx, threads=args.threads, cache_prompt=args.cache_prompt)
    print(f"edgesrm loaded {model.name} in {time.perf_counter() - started:.1f} s "
          f"(n_ctx {runtime.engine.config.n_ctx}, {runtime.engine.config.max_sequences} sequences)",
          file=sys.stderr, flush=True)
    # The batch-speed profile sc's launch policy reads, measured now (once per model and machine,
    # cached) so that no question's wall time includes it.
    profile = speed.profile(runtime.engine, PATHS)
    policy = choose_launch(profile, PATHS, STOP_CONFIDENCE)
    append(args.out, {"run": "profile", "model": model.name, "tokens_per_s": profile.tokens_per_s,
                      "launch": launch_record(policy), "load": os.getloadavg()})
    print(f"speed profile {profile.tokens_per_s} tok/s; sc launches {policy}", file=sys.stderr, flush=True)
    return runtime


def settings(files: dict[str, Path], arms: list[str], args: argparse.Namespace) -> dict:
    return {"models": {q: str(p) for q, p in files.items()}, "arms": arms, "limit": args.limit, "first": args.first,
            "seed": args.seed,
            "max_tokens": args.max_tokens, "paths": PATHS, "temperature": TEMPERATURE, **SAMPLING,
            "threads": args.threads, "ctx": args.ctx, "cache_prompt": args.cache_prompt,
            "peer": str(args.peer), "peer_version": peer_version(args.peer) if LLAMA in arms else None,
            "llama_server": server_command(LLAMA, 0, server_args(Path("MODEL"), args))[0] if LLAMA in arms else None,
            "edgesrm": f"load(MODEL, n_ctx={args.ctx}, threads={args.threads}, cache_prompt={args.cache_prompt})",
            "machine": machine()}


def run(args: argparse.Namespace) -> None:
    if LLAMA in args.arms and not args.peer.is_file():
        sys.exit(f"no llama-server at {args.peer}: build it with scripts/build_peer.sh "
                 "(or give --peer, or leave llama-server out of --arms)")
    items = load_items(find_dataset("gsm8k"), args.limit)
    files = model_files(args)
    done = {(r["quant"], r["arm"], r["id"]) for r in measured(read_lines(args.out))}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    before = os.getloadavg()
    append(args.out, {"run": "start", "at": started, "load": before, "settings": settings(files, args.arms, args)})
    print(f"load average {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; writing {args.out}", file=sys.stderr)
    finished = False
    # `kill` (SIGTERM) ends the run like Ctrl-C: the servers stop and the "end" line is written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for quant, model in files.items():
            run_quant(quant, model, items, args.arms, done, args)
        finished = True
    finally:
        append(args.out, {"run": "end", "started": started, "at": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "load": os.getloadavg(), "finished": finished})


# ---------------------------------------------------------------------------------------------
# Summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def median_ratio(rows: dict[str, dict[int, dict]], a: str, b: str, key: str) -> float | None:
    ratios = [r for i in rows[a] for r in [ratio(rows[a][i][key], rows[b][i][key])] if r is not None]
    return statistics.median(ratios) if ratios else None


def totals(by_id: dict[int, dict]) -> dict:
    rows = list(by_id.values())
    wall = sum(r["seconds"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {"questions": len(rows), "accuracy": 100 * sum(r["correct"] for r in rows) / max(1, len(rows)),
            "wall": wall, "tokens": tokens, "tok_s": tokens / wall if wall else None,
            "load": statistics.mean(r["load_before"] for r in rows) if rows else None,
            "early": sum(bool(r.get("early_stopped")) for r in rows), "paths": sum(r["paths"] for r in rows)}


def common_rows(rows: list[dict], quant: str) -> dict[str, dict[int, dict]]:
    """arm -> id -> row, over the questions every arm measured for ``quant`` has."""
    by_arm: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["quant"] == quant:
            by_arm.setdefault(r["arm"], {})[r["id"]] = r  # a row measured twice: the last counts
    ids = set.intersection(*(set(v) for v in by_arm.values())) if by_arm else set()
    return {arm: {i: v[i] for i in sorted(ids)} for arm in ARMS for v in [by_arm.get(arm)] if v}


def target_rows(t: dict[str, dict], rows: dict[str, dict[int, dict]]) -> Iterator[tuple[str, str, str, str, bool]]:
    """(target, sums, median per question, goal, met) for the arms present."""
    if SC in t and LLAMA in t:
        r, acc = ratio(t[SC]["wall"], t[LLAMA]["wall"]), t[SC]["accuracy"] - t[LLAMA]["accuracy"]
        yield (f"sc wall / llama-server wall (accuracy {t[SC]['accuracy']:.1f}% vs {t[LLAMA]['accuracy']:.1f}%)",
               fmt(r, "x"), fmt(median_ratio(rows, SC, LLAMA, "seconds"), "x"),
               f"<= {TARGET_VS_LLAMA}x at >= accuracy", r is not None and r <= TARGET_VS_LLAMA and acc >= 0)
    if SC in t and NO_EARLY in t:
        r = ratio(t[SC]["wall"], t[NO_EARLY]["wall"])
        yield ("sc wall / sc-no-early wall", fmt(r, "x"), fmt(median_ratio(rows, SC, NO_EARLY, "seconds"), "x"),
               f"<= {TARGET_EARLY_WALL}x", r is not None and r <= TARGET_EARLY_WALL)
        r = ratio(t[SC]["tokens"], t[NO_EARLY]["tokens"])
        yield ("sc tokens / sc-no-early tokens", fmt(r, "x"), fmt(median_ratio(rows, SC, NO_EARLY, "tokens"), "x"),
               f"<= {TARGET_EARLY_TOKENS}x", r is not None and r <= TARGET_EARLY_TOKENS)
        acc = t[SC]["accuracy"] - t[NO_EARLY]["accuracy"]
        yield ("sc accuracy - sc-no-early accuracy", f"{acc:+.1f} pts", "-", f">= -{TARGET_EARLY_ACC_PTS:g} pt",
               acc >= -TARGET_EARLY_ACC_PTS)


def summary(lines: list[dict]) -> str:
    rows = measured(lines)
    runs = [line for line in lines if line.get("run")]
    out = []
    starts = [r for r in runs if r["run"] == "start"]
    if starts:
        s = starts[-1]["settings"]
        out.append(f"{s['machine']}; {s['threads']} threads, {s['paths']} paths, max_tokens {s['max_tokens']}, "
                   f"temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']}, min-p {s['min_p']}, "
                   f"ctx {s['ctx']}, cache_prompt {s['cache_prompt']}; llama-server {s.get('peer_version') or '-'}")
    for r in runs:
        if r["run"] == "profile":
            out.append(f"profile {r['model']}: {r['tokens_per_s']} tok/s by batch width; sc launches "
                       f"{launch_label(r['launch'])}")
            continue
        out.append(f"run {r['run']} {r['at']}: load average {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}"
                   + ("" if r["run"] == "start" else "" if r.get("finished") else " (interrupted)"))
    out += ["", "| quant | arm | questions | accuracy | wall s | tokens | tok/s | paths | early-stopped | mean load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    targets = []
    for quant in dict.fromkeys(r["quant"] for r in rows):
        by_arm = common_rows(rows, quant)
        t = {arm: totals(v) for arm, v in by_arm.items()}
        for arm, x in t.items():
            early = str(x["early"]) if arm in EDGESRM_ARMS else "-"
            out.append(f"| {quant} | {arm} | {x['questions']} | {x['accuracy']:.1f}% | {x['wall']:.1f} | "
                       f"{x['tokens']} | {fmt(x['tok_s'], digits=1)} | {x['paths']} | {early} | {fmt(x['load'])} |")
        targets += [(quant, *row) for row in target_rows(t, by_arm)]
    out += ["", "| quant | target | ratio of sums | median per question | goal | met |",
            "|---|---|---:|---:|---|:---:|"]
    out += [f"| {q} | {what} | {sums} | {med} | {goal} | {'yes' if met else '**no**'} |"
            for q, what, sums, med, goal, met in targets]
    return "\n".join(out + by_launch(lines) + replayed(lines))


def with_launch(lines: list[dict]) -> list[dict]:
    """The measured rows in file order, each with ``profile`` (tokens/s by width, the last profile
    line before it: the one its run measured) and each sc row with the ``launch`` policy it ran
    (rows from before the policy was recorded per row take the one that profile line gives;
    None if there is none)."""
    rows, profile, launch = [], None, None
    for line in lines:
        if line.get("run") == "profile":
            profile, launch = line["tokens_per_s"], launch_record(Launch(**line["launch"]))
        elif "arm" in line:
            own = line.get("launch")
            rows.append({**line, "profile": profile,
                         "launch": launch_record(Launch(**own)) if own else launch if line["arm"] == SC else None})
    return rows


def by_launch(lines: list[dict]) -> list[str]:
    """sc against the other arms on the questions each launch policy ran (for a quantization
    whose sc rows ran more than one)."""
    rows = with_launch(lines)
    out = []
    for quant in dict.fromkeys(r["quant"] for r in rows):
        by_arm = common_rows(rows, quant)
        sc_rows = by_arm.get(SC, {})
        policies = sorted({json.dumps(r["launch"], sort_keys=True) for r in sc_rows.values()})
        if len(policies) < 2:
            continue
        for policy in policies:
            ids = [i for i, r in sc_rows.items() if json.dumps(r["launch"], sort_keys=True) == policy]
            sums = {arm: {key: sum(by_arm[arm][i][key] for i in ids) for key in ("seconds", "tokens")}
                    for arm in by_arm}
            cell = lambda arm, key: fmt(ratio(sums[SC][key], sums.get(arm, {}).get(key)), "x")  # noqa: E731
            label = launch_label(json.loads(policy)) if policy != "null" else "not recorded"
            out.append(f"| {quant} | {label} | {len(ids)} | {cell(LLAMA, 'seconds')} | "
                       f"{cell(NO_EARLY, 'seconds')} | {cell(NO_EARLY, 'tokens')} |")
    header = ["", "| quant | sc launch policy | questions | sc / llama-server wall | sc / sc-no-early wall | "
                  "sc / sc-no-early tokens |", "|---|---|---:|---:|---:|---:|"]
    return header + out if out else []


def voted(path: list) -> bool:
    """Whether a recorded path voted: its 4th field where recorded, else (older rows) an answer
    from a path that was not cut off by its token cap or the deadline."""
    if len(path) > 3:
        return bool(path[3])
    return path[0] is not None and path[2] not in ("length", "deadline", "pruned")


def replayed(lines: list[dict]) -> list[str]:
    """Every launch policy sc considers, replayed (``early_stopping.replay``) on the paths each
    quantization's ``sc-no-early`` rows recorded, each question in its 8 launch-order rotations,
    with the step times of the profile those rows ran with (the last, if several): predicted wall
    time and tokens relative to all 8 at once, beside what the replay of the train calibration
    (``early_stopping.predict``, which ``choose_launch`` ranks by) predicts."""
    rows = with_launch(lines)
    out = []
    for quant in dict.fromkeys(r["quant"] for r in rows):
        full = [r for r in common_rows(rows, quant).get(NO_EARLY, {}).values()
                if len(r["per_path"]) == PATHS and r["profile"]]
        if full:
            out += replay_table(quant, full)
    return out


def replay_table(quant: str, rows: list[dict]) -> list[str]:
    speeds = rows[-1]["profile"]
    profile = SpeedProfile({int(w): float(s) for w, s in speeds.items()})
    questions = []
    for r in rows:
        classes: dict = {}
        questions.append([(classes.setdefault(p[0], len(classes)) if voted(p) else None, float(p[1]))
                          for p in r["per_path"]])

    def cost(policy: Launch) -> tuple[float, float]:
        seconds = tokens = 0.0
        for q in questions:
            for shift in range(PATHS):
                s, t, _ = replay(q[shift:] + q[:shift], policy, profile.step_s, STOP_CONFIDENCE)
                seconds, tokens = seconds + s, tokens + t
        return seconds, tokens

    wide, train_wide = cost(Launch(PATHS)), predict(profile, PATHS, Launch(PATHS), STOP_CONFIDENCE)
    chosen = choose_launch(profile, PATHS, STOP_CONFIDENCE)
    out = ["", f"{quant}: launch policies replayed on {len(questions)} questions' sc-no-early paths, profile "
               f"{speeds} tok/s (relative to all {PATHS} at once; * = chosen from train):", "",
           "| policy | wall, these questions | tokens, these questions | wall, train | tokens, train |",
           "|---|---:|---:|---:|---:|"]
    table = []
    for policy in launches(PATHS, STOP_CONFIDENCE):
        s, t = cost(policy)
        p = predict(profile, PATHS, policy, STOP_CONFIDENCE)
        table.append((s / wide[0], t / wide[1], p.seconds / train_wide.seconds, p.tokens / train_wide.tokens, policy))
    for s, t, ps, pt, policy in sorted(table, key=lambda r: r[0]):
        mark = " *" if policy == chosen else ""
        out.append(f"| {launch_label(launch_record(policy))}{mark} | {s:.3f}x | {t:.2f}x | {ps:.3f}x | {pt:.2f}x |")
    return out


# ---------------------------------------------------------------------------------------------


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of ``least`` or more."""
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {least} or more")
        return int(text)
    return parse


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=at_least(1), default=50, help="GSM8K test questions (the first LIMIT)")
    ap.add_argument("--first", type=at_least(0), default=0,
                    help="start at this question (0-based; arms keep the rotation of a whole run)")
    ap.add_argument("--quants", nargs="+", default=list(QUANTS),
                    help="Q4_K_M (the evaluation model as shipped) and/or types to requantize it to")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="a subset of the arms")
    ap.add_argument("--seed", type=int, default=0, help="question i samples with seed SEED + i")
    ap.add_argument("--max-tokens", type=int, default=384, help="tokens per path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192, help="KV cells, all paths together (both sides)")
    ap.add_argument("--cache-prompt", action="store_true", help="let both sides reuse cached prompt prefixes")
    ap.add_argument("--model", type=Path, default=None,
                    help="another GGUF instead of the evaluation model (a smoke run); --quants is then ignored")
    ap.add_argument("--peer", type=Path, default=PEER, help="llama-server (scripts/build_peer.sh builds it)")
    ap.add_argument("--out", type=Path, default=OUT, help="JSONL of rows, appended to and resumed from")
    ap.add_argument("--texts", type=Path, default=None,
                    help="also append each row's path texts to this JSONL (kept apart: some MB for a full run)")
    ap.add_argument("--summary", action="store_true", help="only print the table of what --out holds")
    args = ap.parse_args()
    args.arms = [arm for arm in ARMS if arm in args.arms]  # their rotation starts in this order
    return args


def main() -> None:
    args = parse_args()
    if not args.summary:
        run(args)
    if args.summary and not args.out.exists():
        sys.exit(f"{args.out}: no such file")
    lines = read_lines(args.out)
    if not measured(lines):
        sys.exit(f"{args.out} holds no rows")
    try:
        print(summary(lines))
    except (KeyError, TypeError, ValueError) as exc:
        sys.exit(f"{args.out}: a row lacks what this benchmark writes ({exc!r})")


if __name__ == "__main__":
    main()
