"""``edgesrm serve``: the OpenAI-compatible server (``edgesrm.server``) under uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import threading

import click

from ..checks import MAX_CTX, MAX_SEQUENCES, MIN_CTX
from ..errors import EdgesrmError
from ..options import FiniteRange
from .common import MODEL_HELP, threads_option

DEFAULT_SERVE_CTX = 8192  # tokens for all parallel sequences together (KV cells are shared)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise EdgesrmError(f"cannot listen on {host}: {exc.strerror}", cli=f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise EdgesrmError(f"cannot listen on {host}:{port}: {exc.strerror}",
                           cli=f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port)") from None
    sock.listen(2048)
    return sock


@click.command("serve")
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the model to the network: set --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any free one).")
@click.option("--parallel", "-np", type=click.IntRange(1, MAX_SEQUENCES), default=8, show_default=True,
              help="Sequences decoded at once, all requests together (an sc request with 8 paths takes 8).")
@click.option("--ctx", "n_ctx", type=click.IntRange(MIN_CTX, MAX_CTX), default=DEFAULT_SERVE_CTX, show_default=True,
              help="KV cache size in tokens, shared by all sequences (each request reserves its prompt + "
                   "max_tokens per path; the rest holds cached prompts).")
@threads_option
@click.option("--gpu-layers", type=click.IntRange(-1, 2**31 - 1), default=None,
              help="Layers to offload to the GPU (-1: all). Default: all when llama.cpp was built with a GPU backend.")
@click.option("--api-key", default=None, envvar="EDGESRM_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' of every client (not of /health).")
@click.option("--cors", multiple=True, metavar="ORIGIN",
              help="Let web pages from ORIGIN call the API (repeat for several; '*' for any).")
@click.option("--queue", "max_queue", type=click.IntRange(0, 100_000), default=64, show_default=True,
              help="Requests that may wait for free sequences; beyond them clients get 503 with Retry-After.")
@click.option("--cache-prompt/--no-cache-prompt", default=True, show_default=True, envvar="EDGESRM_CACHE_PROMPT",
              help="Keep finished prompts' KV cells: a conversation's next turn prefills only what is new.")
@click.option("--grace", type=FiniteRange(0, 3600), default=30.0, show_default=True,
              help="Seconds running requests may take to finish after SIGTERM or Ctrl-C, before they are cancelled.")
def serve(model: str | None, host: str, port: int, parallel: int, n_ctx: int, threads: int | None,
          gpu_layers: int | None, api_key: str | None, cors: tuple[str, ...], max_queue: int, cache_prompt: bool, grace: float) -> None:
    """Serve a model over an OpenAI-compatible HTTP API: many requests share every decode step.

    Endpoints: POST /v1/chat/completions and /v1/completions (streamed with "stream": true),
    GET /v1/models, /health and /metrics (Prometheus). Replies carry the thinking of reasoning
    models in reasoning_content; extra request fields: strategy, paths, thinking_budget,
    deadline_ms (see the README's "Serve" section).

    \b
    Examples:
      edgesrm serve
      edgesrm serve -m qwen2.5-1.5b-instruct-q4_k_m.gguf --parallel 16 --ctx 16384
      EDGESRM_API_KEY=secret edgesrm serve --host 0.0.0.0 --port 8000
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}]}'
    """
    import uvicorn

    from ..runtime import load
    from ..server import create_app

    if api_key is not None and not api_key.strip():
        raise EdgesrmError("the API key is empty", cli="--api-key (or EDGESRM_API_KEY) is empty")
    if not _loopback(host) and not api_key:
        click.echo(f"warning: listening on {host} without an API key: anyone who can reach this machine can use "
                   "the model (set --api-key or EDGESRM_API_KEY)", err=True)
    sock = _listen(host, port)
    rt = load(model, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers, max_sequences=parallel,
              cache_prompt=cache_prompt)
    store_name = model if model is not None and not os.path.exists(model) else None  # /v1/models shows it
    app = create_app(rt, api_key=api_key, cors=list(cors) or None, max_queue=max_queue, shutdown_grace_s=grace,
                     close_runtime=True, model_name=store_name)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    click.echo(f"serving {rt.model_path.name} at http://{shown}:{bound[1]}/v1 ({parallel} sequences, "
               f"{rt.engine.n_ctx:,} KV cells); Ctrl-C stops", err=True)
    # uvicorn waits for open connections a little longer than the scheduler's grace, so that
    # requests cancelled at its end still close their streams with an error event.
    config = uvicorn.Config(app, log_level=os.environ.get("EDGESRM_LOG_LEVEL", "warning"),
                            timeout_graceful_shutdown=grace + 10, access_log=False)
    _run(config, sock, lambda: threading.Thread(target=app.state.scheduler.close, args=(grace,), daemon=True).start())


def _run(config, sock: socket.socket, on_exit) -> None:
    """uvicorn's server, except that SIGTERM and Ctrl-C end with exit code 0 after the graceful
    shutdown (uvicorn raises the signal again once it has stopped, which kills the process), and
    that they start the scheduler's shutdown (``on_exit``) at once."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                on_exit()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    Server(config).run(sockets=[sock])
