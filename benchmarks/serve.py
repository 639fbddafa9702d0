"""Serving: ``edgesrm serve`` against llama.cpp's own ``llama-server``, side by side.

Both servers run the same model, threads, context (``--ctx``, one KV pool shared by all
sequences: llama-server gets ``-kvu``) and parallel slots, the same batch (512) and llama.cpp
source (scripts/build_peer.sh). Where edgesrm loads weights without the extra buffer types (a
CPU with AMX: ``edgesrm.engine.backend.use_extra_buffer_types``), llama-server runs with
``--no-repack`` so that both sides use the same kernels. Only one server runs at a time: each is
started, measured and stopped before the next starts (2 cores). Clients are threads speaking
HTTP/1.1 with the standard library (light on the CPU the servers share); a stream's time to first
token (TTFT) runs from sending the request to the first chunk with non-empty ``content`` or
``reasoning_content``. Sampling is the same on both sides (top-k 40, top-p 0.95, min-p 0.05 and
the temperature and seed given).

Parts (``--only``):

- ``concurrent``: C clients at once (``--clients``, default 8 and 16), each one streamed chat
  completion of a distinct short story prompt, ``--max-tokens`` 256, temperature 0.7, a seed per
  client; replies end naturally (edgesrm has no ``ignore_eos``), so the completion tokens are
  reported per server. Aggregate tokens/s = completion tokens of all clients / wall time from the
  first send to the last finish; TTFT p50 and p95 over the clients. ``--repeats`` rounds, the
  servers' order alternating; medians reported.
- ``conversation``: a 6-turn chat (fixed user messages, each reply appended to the history,
  64 tokens per reply, temperature 0, streamed) against edgesrm (prefix reuse on), edgesrm with
  ``EDGESRM_CACHE_PROMPT=0`` and llama-server (``cache_prompt`` true, its default). Turn 6's
  TTFT and ``cached_tokens``; ``--repeats`` conversations (a different city each, fresh servers),
  medians reported.
- ``sc``: ``--sc-limit`` GSM8K test questions. edgesrm: one request each with ``strategy: sc``,
  ``paths: 8``, 512 tokens, temperature 0.7; edgesrm's sc gets the question alone and adds its own
  step-by-step system prompt (``edgesrm.chat.STEP_BY_STEP_SYSTEM``), pauses each path at "Final
  answer:" and stops voting early once the vote is decided (its defaults). llama-server: one
  request each with ``n: 8`` (children get seeds seed+1...) and that same system prompt sent by the
  client, then a client-side majority vote (``Counter``) over the 8 answers taken with
  ``edgesrm.answers.extract_answer`` / ``normalize``. Graded with ``answers_match`` against the
  text after ``####``. Accuracy and total wall time.
- ``soak`` (edgesrm only): 16 warm-up requests, then 300 requests from 16 client threads: 10% open
  a stream, read 2 chunks and hang up; 10% are malformed (bad JSON, wrong types, unknown role);
  the rest are normal (64 tokens, streamed or not). Well-formed requests must get no 5xx; after
  the run ``edgesrm_requests_running``, ``edgesrm_sequences_busy`` and
  ``edgesrm_kv_cells_reserved`` (from /metrics) must come back to 0; the server's RSS (psutil)
  after the warm-up and at the end must be within 5%.

The machine's load average is recorded before and after each part: another process on the two
cores slows whichever server runs at that moment. Results go to ``--out`` (JSON; a part run again
replaces its entry, the others are kept), then a markdown table of every target is printed.
Server logs are in ``$TMPDIR/edgesrm-serve-bench/``.

    python benchmarks/serve.py                                   # about an hour on the 2-core AMX Xeon
    python benchmarks/serve.py --only conversation --repeats 1   # one part
    python benchmarks/serve.py --summary                         # the table again, no servers
    python benchmarks/serve.py --model "$(python -c 'from edgesrm.models import find_default_model; print(find_default_model())')" \\
        --repeats 1 --clients 4 --max-tokens 32 --sc-limit 2 --soak-requests 40   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from edgesrm.answers import answers_match, extract_answer, normalize
from edgesrm.chat import STEP_BY_STEP_SYSTEM
from edgesrm.engine.backend import use_extra_buffer_types
from edgesrm.eval import Item, find_dataset, load_items
from edgesrm.models import model_store

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
EVAL_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # the name scripts/get_eval_model.py gives it
PEER = Path(os.environ.get("EDGESRM_PEER") or Path.home() / ".cache" / "edgesrm" / "peer") / "llama.cpp" / "build" / "bin" / "llama-server"
LOGS = Path(tempfile.gettempdir()) / "edgesrm-serve-bench"
PARTS = ("concurrent", "conversation", "sc", "soak")
EDGESRM, NO_REUSE, LLAMA = "edgesrm", "edgesrm-no-reuse", "llama-server"
SAMPLING = {"top_p": 0.95, "top_k": 40, "min_p": 0.05}  # edgesrm's defaults, sent to both servers
SC_PATHS, SC_MAX_TOKENS, SC_TEMPERATURE = 8, 512, 0.7
CONVERSATION_TOKENS = 64
SOAK_THREADS, SOAK_MAX_TOKENS = 16, 64

WHO = ("a lighthouse keeper", "a retired astronaut", "a street musician", "a clockmaker", "a young beekeeper",
       "a night-shift nurse", "a stubborn goat", "a lost robot")
WHERE = ("on a foggy island", "in a desert town", "at a winter market", "under a city bridge", "in an old library",
         "on a night train", "in a mountain village", "at the edge of a forest")
CITIES = ("Lisbon", "Kyoto", "Montreal", "Edinburgh", "Prague", "Oaxaca", "Hanoi", "Cape Town")
TURNS = (
    "I am planning a one-week trip to {city} in spring with two friends. Suggest a rough plan for the first two days.",
    "That sounds good. What should we eat on those days? Keep it affordable.",
    "One of my friends is vegetarian. Adjust the food suggestions for her.",
    "What about days three and four? We like museums and long walks.",
    "Give us a packing list for the whole trip, as short bullet points.",
    "Summarize the whole plan in three sentences.",
)
USER = {"role": "user", "content": "Say hello in one short sentence."}
MALFORMED: tuple[bytes, ...] = (
    b'{"messages": [{"role": "user", "content": "hi"}',  # truncated JSON
    b"this is not json",
    json.dumps({"messages": "hello"}).encode(),  # wrong type
    json.dumps({"messages": [USER], "max_tokens": "64"}).encode(),
    json.dumps({"messages": [USER], "temperature": "hot"}).encode(),
    json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),  # unknown role
    json.dumps([USER]).encode(),
)


# ---------------------------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    cmd: list[str]
    log: Path

    @property
    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_command(name: str, port: int, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name == LLAMA:
        cmd = [str(args.peer), "-m", str(args.model), "--host", HOST, "--port", str(port), "-np", str(args.parallel),
               "-c", str(args.ctx), "-t", str(args.threads), "-tb", str(args.threads), "-kvu", "-b", "512",
               "-ub", "512", *([] if use_extra_buffer_types() else ["--no-repack"]), "--no-webui", "--fit", "off"]
        return cmd, env
    env["EDGESRM_CACHE_PROMPT"] = "0" if name == NO_REUSE else "1"
    cmd = [sys.executable, "-m", "edgesrm", "serve", "-m", str(args.model), "--host", HOST, "--port", str(port),
           "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--threads", str(args.threads)]
    return cmd, env


@contextlib.contextmanager
def serving(name: str, args: argparse.Namespace, timeout: float = 300.0) -> Iterator[Server]:
    """Start one server, wait for /health to answer 200, yield it; always stop it."""
    port = free_port()
    cmd, env = server_command(name, port, args)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    server = Server(name, port, proc, cmd, log)
    try:
        started = time.perf_counter()
        while get(server, "/health", timeout=2.0)[0] != 200:
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not come up (exit code {proc.poll()}); {log} ends:\n{tail}")
            time.sleep(0.5)
        print(f"{name} up on port {port} after {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        chat(server, {"messages": [USER], "max_tokens": 8, "temperature": 0})  # warm-up
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------------------
# Client


@dataclass
class Reply:
    status: int = 0
    sent: float = 0.0  # perf_counter when sent, and when the reply ended
    done: float = 0.0
    ttft: float | None = None
    text: str = ""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    body: object = None  # a non-streamed reply's JSON
    error: str | None = None
    chunks: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def seconds(self) -> float:
        return self.done - self.sent

    def take_usage(self, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.completion_tokens = usage.get("completion_tokens")
            self.prompt_tokens = usage.get("prompt_tokens")
            self.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")


def get(server: Server, path: str, timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        conn.close()


def chat(server: Server, body: dict | bytes, *, timeout: float = 1800.0, hang_up_after: int | None = None) -> Reply:
    """POST /v1/chat/completions; a stream (``"stream": true``) is read event by event.
    ``hang_up_after``: close the connection after that many stream events."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    reply = Reply(sent=time.perf_counter())
    try:
        conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        reply.status = resp.status
        if not (resp.getheader("Content-Type") or "").startswith("text/event-stream"):
            reply.body = json.loads(resp.read() or b"null")
            if reply.ok and isinstance(reply.body, dict):
                reply.text = reply.body["choices"][0]["message"].get("content") or ""
                reply.take_usage(reply.body.get("usage"))
            return reply
        parts = []
        while line := resp.readline():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            reply.chunks += 1
            if "error" in event:
                reply.error = str(event["error"])
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if (delta.get("content") or delta.get("reasoning_content")) and reply.ttft is None:
                    reply.ttft = time.perf_counter() - reply.sent
                parts.append(delta.get("content") or "")
            reply.take_usage(event.get("usage"))
            if hang_up_after is not None and reply.chunks >= hang_up_after:
                reply.error = "hung up by the client"
                break
        reply.text = "".join(parts)
    except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        reply.done = time.perf_counter()
    return reply


def streamed(messages: list[dict], max_tokens: int, temperature: float, seed: int, **extra: object) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "seed": seed, **SAMPLING,
            "stream": True, "stream_options": {"include_usage": True}, **extra}


def parallel(fn: Callable[[int], Reply], count: int, threads: int) -> list[Reply]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, range(count)))


# ---------------------------------------------------------------------------------------------
# Parts


def concurrent_round(server: Server, clients: int, first: int, args: argparse.Namespace) -> dict:
    """``clients`` streamed stories sent at once (a barrier): tokens/s and TTFT percentiles."""
    barrier = threading.Barrier(clients)

    def one(i: int) -> Reply:
        k = first + i
        prompt = f"Write a short story about {WHO[k % len(WHO)]} {WHERE[k // len(WHO) % len(WHERE)]}."
        body = streamed([{"role": "user", "content": prompt}], args.max_tokens, 0.7, args.seed + k)
        barrier.wait()
        return chat(server, body, timeout=900)

    replies = parallel(one, clients, clients)
    ok = [r for r in replies if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    wall = max(r.done for r in replies) - min(r.sent for r in replies)
    return {"server": server.name, "clients": clients, "tokens": tokens, "wall_s": round(wall, 3),
            "tok_s": tokens / wall, "ttft_p50_s": float(np.percentile(ttfts, 50)) if ttfts else None,
            "ttft_p95_s": float(np.percentile(ttfts, 95)) if ttfts else None,
            "errors": [f"{r.status} {r.error}" for r in replies if not r.ok],
            "no_usage": sum(r.completion_tokens is None for r in ok)}


def run_concurrent(args: argparse.Namespace) -> dict:
    runs = []
    offsets = [sum(args.clients[:i]) for i in range(len(args.clients))]  # distinct prompts and seeds per round
    for repeat in range(args.repeats):
        order = (EDGESRM, LLAMA) if repeat % 2 == 0 else (LLAMA, EDGESRM)
        for name in order:
            with serving(name, args) as server:
                for clients, offset in zip(args.clients, offsets):
                    row = concurrent_round(server, clients, repeat * sum(args.clients) + offset, args)
                    runs.append({**row, "repeat": repeat})
                    print(f"concurrent {name} C={clients} #{repeat}: {row['tok_s']:.1f} tok/s ({row['tokens']} tokens), "
                          f"TTFT p95 {row['ttft_p95_s'] or float('nan'):.2f} s, {len(row['errors'])} errors",
                          file=sys.stderr, flush=True)
    medians = {}
    for clients in args.clients:
        for name in (EDGESRM, LLAMA):
            rows = [r for r in runs if r["server"] == name and r["clients"] == clients]
            medians.setdefault(str(clients), {})[name] = {
                key: median([r[key] for r in rows]) for key in ("tok_s", "ttft_p50_s", "ttft_p95_s", "tokens")}
    return {"runs": runs, "medians": medians}


def conversation(server: Server, repeat: int) -> dict:
    """Six turns, each reply appended to the history; TTFT and cached tokens per turn."""
    messages: list[dict] = []
    turns = []
    for k, text in enumerate(TURNS):
        messages.append({"role": "user", "content": text.format(city=CITIES[repeat % len(CITIES)])})
        reply = chat(server, streamed(messages, CONVERSATION_TOKENS, 0.0, 0, cache_prompt=True), timeout=900)
        if not reply.ok:
            raise RuntimeError(f"{server.name}: turn {k + 1} failed: {reply.status} {reply.error} {reply.body}")
        messages.append({"role": "assistant", "content": reply.text})
        turns.append({"ttft_s": reply.ttft, "prompt_tokens": reply.prompt_tokens, "cached_tokens": reply.cached_tokens,
                      "completion_tokens": reply.completion_tokens})
    return {"server": server.name, "turns": turns, "turn6_ttft_s": turns[-1]["ttft_s"],
            "turn6_cached_tokens": turns[-1]["cached_tokens"], "turn6_prompt_tokens": turns[-1]["prompt_tokens"]}


def run_conversation(args: argparse.Namespace) -> dict:
    runs = []
    for repeat in range(args.repeats):
        for name in (EDGESRM, LLAMA, NO_REUSE):
            with serving(name, args) as server:
                row = {**conversation(server, repeat), "repeat": repeat}
            runs.append(row)
            print(f"conversation {name} #{repeat}: turn 6 TTFT {fmt(row['turn6_ttft_s'], ' s', 3)}, cached "
                  f"{row['turn6_cached_tokens']} of {row['turn6_prompt_tokens']}", file=sys.stderr, flush=True)
    medians = {name: {key: median([r[key] for r in runs if r["server"] == name])
                      for key in ("turn6_ttft_s", "turn6_cached_tokens", "turn6_prompt_tokens")}
               for name in (EDGESRM, LLAMA, NO_REUSE)}
    return {"runs": runs, "medians": medians}


def sc_question(server: Server, item: Item, args: argparse.Namespace) -> dict:
    common = {"max_tokens": SC_MAX_TOKENS, "temperature": SC_TEMPERATURE, "seed": args.seed + item.id, **SAMPLING}
    if server.name == LLAMA:
        messages = [{"role": "system", "content": STEP_BY_STEP_SYSTEM}, {"role": "user", "content": item.question}]
        reply = chat(server, {"messages": messages, "n": SC_PATHS, **common})
    else:
        messages = [{"role": "user", "content": item.question}]
        reply = chat(server, {"messages": messages, "strategy": "sc", "paths": SC_PATHS, **common})
    if not reply.ok:
        raise RuntimeError(f"{server.name}: question {item.id} failed: {reply.status} {reply.error} {reply.body}")
    if server.name == LLAMA:
        choices = reply.body["choices"]
        answers = [normalize(extract_answer(c["message"].get("content") or "")) for c in choices]
        votes = Counter(a for a in answers if a is not None)
        answer = votes.most_common(1)[0][0] if votes else None
        paths = len(choices)
    else:
        extra = reply.body["edgesrm"]
        answer, votes, paths = extra["extracted"], extra["votes"], extra["paths"]
    return {"server": server.name, "id": item.id, "gold": item.gold, "answer": answer,
            "correct": answers_match(answer, item.gold), "seconds": round(reply.seconds, 3), "paths": paths,
            "votes": dict(votes or {})}


def run_sc(args: argparse.Namespace) -> dict:
    items = load_items(find_dataset("gsm8k"), args.sc_limit)
    rows = []
    for name in (EDGESRM, LLAMA):
        with serving(name, args) as server:
            for item in items:
                row = sc_question(server, item, args)
                rows.append(row)
                print(f"sc {name} q{item.id}: {row['answer']} ({'ok' if row['correct'] else 'x'}) "
                      f"{row['seconds']:.1f} s, {row['paths']} paths", file=sys.stderr, flush=True)
    totals = {name: {"questions": len(sel), "accuracy": sum(r["correct"] for r in sel) / max(1, len(sel)),
                     "wall_s": round(sum(r["seconds"] for r in sel), 3)}
              for name in (EDGESRM, LLAMA) for sel in [[r for r in rows if r["server"] == name]]}
    return {"rows": rows, "totals": totals}


def metrics(server: Server) -> dict[str, float]:
    status, text = get(server, "/metrics")
    if status != 200:
        raise RuntimeError(f"{server.name}: GET /metrics answered {status}")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def run_soak(args: argparse.Namespace) -> dict:
    gauges = ("edgesrm_requests_running", "edgesrm_sequences_busy", "edgesrm_kv_cells_reserved")
    rng = random.Random(args.seed)
    kinds = ["hang-up" if i % 10 == 0 else "malformed" if i % 10 == 1 else "normal" for i in range(args.soak_requests)]
    rng.shuffle(kinds)

    def normal(i: int, stream: bool) -> Reply:
        content = f"Give me one tip about {WHO[i % len(WHO)][2:]}s, in two sentences."
        body = streamed([{"role": "user", "content": content}], SOAK_MAX_TOKENS, 0.7, args.seed + i)
        return chat(server, body if stream else {**body, "stream": False, "stream_options": None}, timeout=900)

    def one(i: int) -> Reply:
        if kinds[i] == "malformed":
            return chat(server, MALFORMED[i % len(MALFORMED)], timeout=60)
        if kinds[i] == "hang-up":
            body = streamed([{"role": "user", "content": "Write a long poem about the sea."}], 256, 0.7, args.seed + i)
            return chat(server, body, timeout=900, hang_up_after=2)
        return normal(i, stream=i % 2 == 0)

    with serving(EDGESRM, args) as server:
        warm = parallel(lambda i: normal(i, True), SOAK_THREADS, SOAK_THREADS)
        rss_start = server.rss
        started = time.perf_counter()
        replies = parallel(one, len(kinds), SOAK_THREADS)
        elapsed = time.perf_counter() - started
        settle = time.perf_counter()  # a hung-up request is cancelled at the server's next check
        while any(metrics(server).get(g, 0) for g in gauges) and time.perf_counter() - settle < 30:
            time.sleep(0.25)
        settle_s = time.perf_counter() - settle
        final = metrics(server)
        rss_end = server.rss
    well_formed = [(k, r) for k, r in zip(kinds, replies) if k != "malformed"]
    statuses = {kind: dict(Counter(str(r.status) for k, r in zip(kinds, replies) if k == kind)) for kind in set(kinds)}
    return {
        "requests": len(kinds), "kinds": dict(Counter(kinds)), "statuses": statuses, "seconds": round(elapsed, 1),
        "warm_up_errors": sum(not r.ok for r in warm),
        "server_errors_well_formed": sum(r.status >= 500 for _, r in well_formed),
        "failed_normal": [f"{r.status} {r.error}" for k, r in well_formed if k == "normal" and not r.ok],
        "malformed_not_4xx": sum(not 400 <= r.status < 500 for k, r in zip(kinds, replies) if k == "malformed"),
        "gauges_at_end": {g: final.get(g) for g in gauges}, "settle_s": round(settle_s, 2),
        "http_responses": {k: v for k, v in final.items() if k.startswith("edgesrm_http_responses_total")},
        "rss_start_mb": rss_start / 2**20, "rss_end_mb": rss_end / 2**20,
        "rss_change_pct": 100 * (rss_end - rss_start) / rss_start,
    }


# ---------------------------------------------------------------------------------------------
# Report


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


@dataclass
class Target:
    what: str
    edgesrm: str
    reference: str
    ratio: str
    goal: str
    met: bool | None  # None: not measured

    def row(self) -> str:
        met = "-" if self.met is None else "yes" if self.met else "**no**"
        return f"| {self.what} | {self.edgesrm} | {self.reference} | {self.ratio} | {self.goal} | {met} |"


def targets(results: dict) -> list[Target]:
    out: list[Target] = []
    for clients, sides in (results.get("concurrent") or {}).get("medians", {}).items():
        e, l = sides[EDGESRM], sides[LLAMA]
        r = ratio(e["tok_s"], l["tok_s"])
        out.append(Target(f"C={clients}: aggregate tok/s (tokens {e['tokens']:.0f} / {l['tokens']:.0f})",
                          fmt(e["tok_s"], digits=1), fmt(l["tok_s"], digits=1), fmt(r, "x"), ">= 1.0x llama-server",
                          None if r is None else r >= 1.0))
        r = ratio(e["ttft_p95_s"], l["ttft_p95_s"])
        out.append(Target(f"C={clients}: TTFT p95 (p50 {fmt(e['ttft_p50_s'], ' s')} / {fmt(l['ttft_p50_s'], ' s')})",
                          fmt(e["ttft_p95_s"], " s"), fmt(l["ttft_p95_s"], " s"), fmt(r, "x"), "<= 1.2x llama-server",
                          None if r is None else r <= 1.2))
    if "conversation" in results:
        m = results["conversation"]["medians"]
        e, l, n = (m[k]["turn6_ttft_s"] for k in (EDGESRM, LLAMA, NO_REUSE))
        cached = {k: fmt(m[k]["turn6_cached_tokens"], digits=0) for k in (EDGESRM, LLAMA, NO_REUSE)}
        prompt = fmt(m[EDGESRM]["turn6_prompt_tokens"], digits=0)
        r = ratio(e, l)
        out.append(Target(f"turn-6 TTFT vs llama-server (cached {cached[EDGESRM]} / {cached[LLAMA]} of {prompt} tokens)",
                          fmt(e, " s", 3), fmt(l, " s", 3), fmt(r, "x"), "<= 1.1x llama-server",
                          None if r is None else r <= 1.1))
        r = ratio(e, n)
        out.append(Target(f"turn-6 TTFT vs edgesrm without prefix reuse (cached {cached[NO_REUSE]})",
                          fmt(e, " s", 3), fmt(n, " s", 3), fmt(r, "x"), "<= 0.3x no reuse",
                          None if r is None else r <= 0.3))
    if "sc" in results:
        t = results["sc"]["totals"]
        e, l = t[EDGESRM], t[LLAMA]
        out.append(Target(f"sc-8 accuracy ({e['questions']} GSM8K questions)", fmt(100 * e["accuracy"], "%", 1),
                          fmt(100 * l["accuracy"], "%", 1), f"{100 * (e['accuracy'] - l['accuracy']):+.1f} pts",
                          ">= llama-server", e["accuracy"] >= l["accuracy"]))
        r = ratio(e["wall_s"], l["wall_s"])
        out.append(Target("sc-8 wall time", fmt(e["wall_s"], " s", 1), fmt(l["wall_s"], " s", 1), fmt(r, "x"),
                          "<= 0.8x llama-server", None if r is None else r <= 0.8))
    if "soak" in results:
        s = results["soak"]
        out.append(Target(f"soak: 5xx for well-formed requests ({s['requests']} requests)",
                          str(s["server_errors_well_formed"]), "-", "-", "0", s["server_errors_well_formed"] == 0))
        g = s["gauges_at_end"]
        leaked = [g[k] for k in ("edgesrm_requests_running", "edgesrm_sequences_busy", "edgesrm_kv_cells_reserved")]
        out.append(Target("soak: running requests / busy sequences / reserved KV cells at the end",
                          " / ".join(fmt(v, digits=0) for v in leaked), "-", "-", "0 / 0 / 0",
                          all(v == 0 for v in leaked)))
        out.append(Target("soak: server RSS, after warm-up -> end", f"{s['rss_start_mb']:.0f} -> {s['rss_end_mb']:.0f} MB",
                          "-", f"{s['rss_change_pct']:+.1f}%", "within 5%", abs(s["rss_change_pct"]) <= 5.0))
    return out


def print_table(results: dict) -> None:
    s = results.get("settings", {})
    print(f"\n{Path(s.get('model', '?')).name}, {s.get('threads')} threads, --ctx {s.get('ctx')}, "
          f"--parallel {s.get('parallel')}; llama-server {s.get('peer_version', '?')}; {results.get('machine', '')}")
    for part in PARTS:
        if part in results:
            load = results[part]["load"]
            print(f"{part}: load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    print("\n| target | edgesrm | llama-server / reference | ratio | goal | met |")
    print("|---|---:|---:|---:|---|:---:|")
    for target in targets(results):
        print(target.row())


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    return f"CPU: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def peer_version(peer: Path) -> str:
    try:
        out = subprocess.run([str(peer), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    line = next((l for l in (out.stdout + out.stderr).splitlines() if l.startswith("version:")), "version: ?")
    return line.split(":", 1)[1].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help=f"GGUF (default: {EVAL_MODEL} in edgesrm's model store)")
    ap.add_argument("--peer", type=Path, default=PEER, help="llama-server binary (scripts/build_peer.sh builds it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192, help="KV cells shared by all sequences, both servers")
    ap.add_argument("--parallel", type=int, default=16, help="sequences (edgesrm) / slots (llama-server)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--repeats", type=int, default=3, help="rounds of concurrent and conversation (medians)")
    ap.add_argument("--clients", default="8,16", help="concurrent clients per round, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=256, help="max_tokens of each concurrent request")
    ap.add_argument("--sc-limit", type=int, default=20, help="GSM8K test questions for sc")
    ap.add_argument("--soak-requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    ap.add_argument("--summary", action="store_true", help="only print the table of what --out holds")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c]
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.summary:
        if not results:
            sys.exit(f"{args.out} holds no results")
        print_table(results)
        return
    args.model = (args.model or model_store() / EVAL_MODEL).expanduser()
    if not args.model.is_file():
        sys.exit(f"no model {args.model}: run scripts/get_eval_model.py, or give --model")
    if set(parts) - {"soak"} and not args.peer.is_file():
        sys.exit(f"no llama-server at {args.peer}: run scripts/build_peer.sh, or give --peer")
    if max(args.clients) > args.parallel:
        print(f"warning: {max(args.clients)} clients on {args.parallel} slots: some requests wait", file=sys.stderr)

    results["machine"] = machine()
    results["settings"] = {"model": str(args.model), "peer": str(args.peer), "peer_version": peer_version(args.peer),
                           "threads": args.threads, "ctx": args.ctx, "parallel": args.parallel,
                           "max_tokens": args.max_tokens, "repeats": args.repeats, "clients": args.clients,
                           "sc_limit": args.sc_limit, "seed": args.seed,
                           "commands": {name: server_command(name, 0, args)[0] for name in (EDGESRM, LLAMA)},
                           "no_reuse": "the edgesrm command with EDGESRM_CACHE_PROMPT=0 in its environment"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runners = {"concurrent": run_concurrent, "conversation": run_conversation, "sc": run_sc, "soak": run_soak}
    for part in parts:
        before = os.getloadavg()
        print(f"{part}: load average {before[0]:.2f}", file=sys.stderr, flush=True)
        result = runners[part](args)
        results[part] = {**result, "load": {"before": before, "after": os.getloadavg()},
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": results["settings"]}
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each part: an interrupted run keeps it
    results["targets"] = [vars(t) for t in targets(results)]
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
