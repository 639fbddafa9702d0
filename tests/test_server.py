"""The OpenAI-compatible server through a live uvicorn on 127.0.0.1 and the official ``openai``
client (and raw HTTP for what a client library would not send)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

from edgesrm import load
from edgesrm.server import create_app


class LiveServer:
    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.app = app

    def client(self, key: str = "none", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, parsed JSON or text)."""
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, head, data = response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as err:
            status, head, data = err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
        try:
            return status, head, json.loads(data)
        except ValueError:
            return status, head, data.decode()

    def metrics(self) -> dict[str, float]:
        _, _, text = self.http("GET", "/metrics")
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line and not line.startswith("#") and "{" not in line}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def runtime(model_path):
    rt = load(model_path, n_ctx=4096, max_sequences=8)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def server(runtime):
    live = LiveServer(create_app(runtime, max_queue=16, max_body_bytes=64 * 1024))
    yield live
    live.stop()


def test_chat_completion(server):
    reply = server.client().chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, seed=1)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert reply.model == server.app.state.runtime.model_path.stem
    extra = reply.model_extra["edgesrm"]
    assert extra["strategy"] == "plain" and extra["seed"] == 1


def test_streaming_gives_the_same_text_as_the_result(server):
    stream = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is 6 times 7?"}], max_tokens=60, seed=3,
        stream=True, stream_options={"include_usage": True}, extra_body={"strategy": "cot"})
    reasoning, content, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            extra = chunk.model_extra["edgesrm"]
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
            finish = choice.finish_reason or finish
    assert reasoning and content  # cot: the chain of thought in reasoning_content, the answer in content
    assert finish in ("stop", "length")
    assert extra["strategy"] == "cot"
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.completion_tokens >= usage.completion_tokens_details.reasoning_tokens


def test_reasoning_content_and_votes_in_a_sc_reply(server):
    reply = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=60, seed=5,
        extra_body={"strategy": "sc", "paths": 3})
    extra = reply.model_extra["edgesrm"]
    assert extra["strategy"] == "sc" and extra["paths"] <= 3
    assert sum(extra["votes"].values()) <= 3
    assert reply.choices[0].message.model_extra.get("reasoning_content")


def test_concurrent_clients_share_decode_steps(server):
    before = server.metrics()
    client = server.client()

    def one(i):
        return client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}],
            max_tokens=24, seed=i)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    after = server.metrics()
    tokens = sum(r.usage.completion_tokens for r in replies)
    steps = after["edgesrm_decode_steps_total"] - before["edgesrm_decode_steps_total"]
    assert all(r.choices[0].message.content for r in replies)
    assert steps < tokens / 2  # one request at a time would take a step per token
    assert server.metrics()["edgesrm_sequence_ids_held"] == 0
    assert after["edgesrm_requests_running"] == 0 and after["edgesrm_kv_cells_reserved"] == 0


def test_the_second_turn_reports_cached_tokens(server):
    client = server.client()
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    first = client.chat.completions.create(model="m", messages=history, max_tokens=12, seed=1)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "Another one."}]
    second = client.chat.completions.create(model="m", messages=history, max_tokens=12, seed=2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1 and cached < second.usage.prompt_tokens


def test_a_client_that_disconnects_frees_its_sequences(server):
    before = server.metrics()
    client = server.client()
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Tell me a very long story about a lighthouse."}],
        max_tokens=1500, temperature=1.0, seed=1, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    for _ in range(200):
        now = server.metrics()
        if now["edgesrm_requests_cancelled_total"] > before["edgesrm_requests_cancelled_total"]:
            break
        time.sleep(0.05)
    assert now["edgesrm_requests_cancelled_total"] == before["edgesrm_requests_cancelled_total"] + 1
    assert now["edgesrm_requests_running"] == 0 and now["edgesrm_sequences_busy"] == 0
    assert server.metrics()["edgesrm_sequence_ids_held"] == 0
    assert now["edgesrm_tokens_generated_total"] - before["edgesrm_tokens_generated_total"] < 200


def test_legacy_completions(server):
    client = server.client()
    reply = client.completions.create(model="m", prompt="The capital of France is", max_tokens=6, seed=1,
                                      temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 6
    pieces = [c.choices[0].text for c in client.completions.create(
        model="m", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(pieces)


def test_models_health_and_metrics(server):
    assert server.client().models.list().data[0].id == server.app.state.runtime.model_path.stem
    assert server.http("GET", "/health")[2]["status"] == "ok"
    text = server.http("GET", "/metrics")[2]
    for name in ("edgesrm_requests_queued", "edgesrm_tokens_per_second", "edgesrm_kv_cells_reserved",
                 "edgesrm_prefix_cache_hits_total", "edgesrm_http_responses_total"):
        assert f"# TYPE {name}" in text


@pytest.mark.parametrize("body, field", [
    (b"{not json", None),
    (json.dumps([1, 2]).encode(), None),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}).encode(), "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}).encode(), "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(), "stream"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}).encode(), "stop"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "strategy": "magic"}).encode(), "strategy"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"}).encode(),
     "reasoning_effort"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "deadline_ms": -1}).encode(), "deadline_ms"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                 "strategy": "sc"}).encode(), "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
])
def test_bad_requests_get_400_in_openai_format(server, body, field):
    status, _, reply = server.http("POST", "/v1/chat/completions", body)
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    assert reply["error"]["param"] == field


def test_unknown_fields_are_ignored(server):
    status, _, reply = server.http("POST", "/v1/chat/completions", json.dumps({
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "frobnicate": {"x": 1},
        "logit_bias": {}, "user": "u1"}).encode())
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"


def test_a_prompt_longer_than_the_context_gets_400_with_the_numbers(server):
    status, _, reply = server.http("POST", "/v1/chat/completions", json.dumps({
        "messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 4}).encode())
    assert status == 400 and "longer than the context of 4,096 tokens" in reply["error"]["message"]


def test_a_body_over_the_limit_gets_413(server):
    status, _, reply = server.http("POST", "/v1/chat/completions", b'{"messages": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and "larger than" in reply["error"]["message"]


def test_unknown_routes_and_methods(server):
    assert server.http("GET", "/v1/nothing")[0] == 404
    status, _, reply = server.http("GET", "/v1/chat/completions")
    assert status == 405 and "error" in reply


def test_api_key(runtime):
    live = LiveServer(create_app(runtime, api_key="s3cret"))
    try:
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        assert live.http("GET", "/v1/models")[0] == 401
        assert live.client("s3cret").models.list().data
        assert live.http("GET", "/health")[0] == 200  # for load balancers' probes
    finally:
        live.stop()


def long_stream(live: LiveServer, max_tokens: int):
    """A streamed story request, open (read it like a file)."""
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me a very long story."}],
                       "max_tokens": max_tokens, "temperature": 1.0, "seed": 1, "stream": True}).encode()
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=120)


def test_queue_full_gets_503_with_retry_after(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=1)
    live = LiveServer(create_app(rt, max_queue=0))
    try:
        with long_stream(live, max_tokens=200) as running:
            running.readline()  # it is decoding
            status, headers, reply = live.http("POST", "/v1/chat/completions", json.dumps({
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode())
            assert status == 503 and headers.get("retry-after") and "try again" in reply["error"]["message"]
            rest = running.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
    finally:
        live.stop()
        rt.close()


def serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgesrm", "serve", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_stops_on_sigterm_with_exit_code_0(model_path):
    port = free_port()
    proc = serve("-m", str(model_path), "--port", str(port), "--parallel", "2", "--ctx", "2048", "--grace", "2")
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/v1" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        for _ in range(100):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tell a story."}],
                                                max_tokens=3000, temperature=1.0, stream=True)
        next(iter(stream))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_serve_errors_are_one_line(model_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve("-m", str(model_path), "--host", "0.0.0.0", "--port", str(port))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith("warning: listening on 0.0.0.0 without an API key")
    assert lines[-1].startswith("error: cannot listen on 0.0.0.0") and len(lines) == 2


def test_requests_cancelled_by_the_shutdown_get_503_not_499(model_path):
    """A queued request and a running stream, when the server stops: 503 shutting_down (retry
    elsewhere), not "the client closed the request" (the client did nothing)."""
    rt = load(model_path, n_ctx=2048, max_sequences=1)
    live = LiveServer(create_app(rt, max_queue=2))
    try:
        with long_stream(live, max_tokens=1500) as running:
            running.readline()
            queued = ThreadPoolExecutor(1).submit(live.http, "POST", "/v1/chat/completions", json.dumps({
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode())
            for _ in range(100):
                if live.metrics()["edgesrm_requests_queued"] == 1:
                    break
                time.sleep(0.05)
            live.app.state.scheduler.close(grace_s=0)
            status, _, reply = queued.result(60)
            rest = running.read().decode()
        assert status == 503 and reply["error"]["code"] == "shutting_down"
        assert '"shutting_down"' in rest and rest.rstrip().endswith("data: [DONE]")
        assert live.metrics()["edgesrm_requests_cancelled_total"] == 2
    finally:
        live.stop()
        rt.close()
