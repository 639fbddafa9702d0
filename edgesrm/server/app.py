"""The OpenAI-compatible HTTP server, on Starlette (small, standard ASGI: it runs under uvicorn and
mounts inside a FastAPI app).

Every request runs ``Runtime.ask`` (or ``complete``) in a worker thread; the runtime's scheduler
decodes all of them together (``edgesrm.engine.scheduler``). Text streams back through the event
loop (``call_soon_threadsafe``). A client that goes away sets its request's cancel event: its
sequences are dropped at the next step and their KV cells freed.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming as server-sent events,
or not), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import Cancelled, QueueFull, ShuttingDown
from ..errors import EdgesrmError
from ..runtime import Runtime
from . import openai
from .metrics import prometheus_text

log = logging.getLogger("edgesrm.server")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt the context holds
RETRY_AFTER_S = 2  # what a 503 (queue full) asks a client to wait


class _Refused(Exception):
    def __init__(self, status: int, body: dict, headers: dict | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


def _refusal(exc: BaseException) -> _Refused:
    """The HTTP answer to an exception from ``ask``: 4xx for the request's own fault, 503 when
    the server is full or closing, 500 (logged) for a bug."""
    if isinstance(exc, Cancelled):  # by the server's shutdown (a client that left hears nothing)
        return _Refused(503, openai.error_body(f"{exc}: the server is shutting down", "server_error",
                                               code="shutting_down"))
    if isinstance(exc, (QueueFull, ShuttingDown)):
        return _Refused(503, openai.error_body(str(exc), "server_error", code="overloaded"),
                        {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, openai.BadRequest):
        return _Refused(400, openai.error_body(str(exc), param=exc.param))
    if isinstance(exc, EdgesrmError):
        return _Refused(400, openai.error_body(str(exc)))
    log.error("request failed", exc_info=exc)
    return _Refused(500, openai.error_body(f"internal error: {type(exc).__name__}", "server_error"))


def _retrieve(future: asyncio.Future) -> None:
    """Mark a worker's exception as seen (asyncio would log it): the handler reports what matters."""
    if not future.cancelled():
        future.exception()


def _json_error(refused: _Refused) -> JSONResponse:
    return JSONResponse(refused.body, status_code=refused.status, headers=refused.headers)


async def _read_json(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, openai.error_body(f"the request body is larger than {limit:,} bytes"))
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise _Refused(413, openai.error_body(f"the request body is larger than {limit:,} bytes"))
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise _Refused(400, openai.error_body("the request body is not valid JSON")) from None


class _ApiKey:
    """Pure ASGI middleware: every route but ``/health`` needs ``Authorization: Bearer KEY``
    (compared in constant time)."""

    def __init__(self, app, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health" and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(token, self.key):
                body = openai.error_body("invalid or missing API key (Authorization: Bearer KEY)",
                                         "authentication_error", code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(runtime: Runtime, *, api_key: str | None = None, cors: list[str] | None = None,
               max_queue: int = 64, max_body_bytes: int = MAX_BODY_BYTES, model_name: str | None = None,
               shutdown_grace_s: float = 30.0, close_runtime: bool = False) -> Starlette:
    """The ASGI app serving ``runtime`` (its scheduler is started here; see ``Runtime.start_scheduler``).

    ``api_key``: required of every client (``None``: none). ``cors``: origins allowed to call it
    from a browser. ``max_queue``: requests that may wait for a free sequence before 503s.
    ``shutdown_grace_s``: at shutdown, running requests have this long to finish before they are
    cancelled. ``close_runtime``: free the model at shutdown (``edgesrm serve`` owns it).
    """
    scheduler = runtime.start_scheduler(max_queue=max_queue)
    n_workers = runtime.engine.config.max_sequences + max_queue + 4
    workers = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="edgesrm-request")
    busy = [0]  # jobs submitted and not finished: beyond n_workers a request would wait unseen

    def submit(loop: asyncio.AbstractEventLoop, job: Callable[[], object]) -> asyncio.Future:
        if busy[0] >= n_workers:  # (the caller's cancel event stops any job it submitted before)
            raise _refusal(QueueFull("every worker is busy: try again later"))
        busy[0] += 1
        future = loop.run_in_executor(workers, job)
        future.add_done_callback(lambda _: busy.__setitem__(0, busy[0] - 1))
        future.add_done_callback(_retrieve)  # a request cancelled after its client left ends in Cancelled: not an error to log
        return future
    model = model_name or runtime.model_path.stem
    created = int(time.time())
    http_counts: dict[int, int] = {}

    def count(status: int) -> None:
        http_counts[status] = http_counts.get(status, 0) + 1

    async def run(request: Request, jobs: list[Callable[[], object]], cancel: threading.Event) -> list:
        """Run ``jobs`` in worker threads; cancel them if the client goes away meanwhile."""
        loop = asyncio.get_running_loop()
        futures = []
        try:
            futures += [submit(loop, job) for job in jobs]
        except _Refused:
            cancel.set()
            raise
        try:
            while True:
                done, _ = await asyncio.wait(futures, timeout=0.25)
                if len(done) == len(futures):
                    break
                if any(f.exception() is not None for f in done) or await request.is_disconnected():
                    cancel.set()
                    await asyncio.wait(futures)
                    break
        except asyncio.CancelledError:
            cancel.set()
            raise
        for f in futures:
            if f.exception() is not None and not isinstance(f.exception(), Cancelled):
                raise _refusal(f.exception())
        if any(f.exception() is not None for f in futures):
            raise cancelled()
        return [f.result() for f in futures]

    def cancelled() -> _Refused:
        """A request cancelled by the server's shutdown (503, try again) or because its client left (499)."""
        if scheduler._closing:
            return _refusal(Cancelled("the request was cancelled"))
        return _Refused(499, openai.error_body("the client closed the request"))

    def ask_job(req: openai.ChatRequest, i: int, cancel: threading.Event, on_text=None):
        def job():
            seed = openai.choice_seed(req.seed, i)
            result = runtime.ask(**{**req.ask, "seed": seed}, on_text=on_text, cancel=cancel)
            reasoning_tokens = len(runtime.engine.tokenize(result.reasoning)) if result.reasoning else 0
            return result, reasoning_tokens
        return job

    def complete_job(req: openai.CompletionRequest, i: int, cancel: threading.Event, on_text=None):
        def job():
            seed = openai.choice_seed(req.seed, i)
            return runtime.complete(req.prompt, **{**req.complete, "seed": seed}, on_text=on_text, cancel=cancel)
        return job

    async def answer(request: Request, parse, job, respond, *, chat: bool) -> Response:
        """One OpenAI request: checked, run (streamed or not) and answered, or refused."""
        try:
            req = parse(await _read_json(request, max_body_bytes))
            if req.stream:
                return await stream(request, req, chat=chat)
            cancel = threading.Event()
            done = await run(request, [job(req, i, cancel) for i in range(req.n)], cancel)
        except openai.BadRequest as exc:
            count(400)
            return _json_error(_refusal(exc))
        except _Refused as refused:
            count(refused.status)
            return _json_error(refused)
        count(200)
        return JSONResponse(respond(done))

    async def chat_completions(request: Request) -> Response:
        return await answer(request, openai.parse_chat, ask_job, chat=True, respond=lambda done: openai.chat_response(
            model, [result for result, _ in done], sum(tokens for _, tokens in done)))

    async def completions(request: Request) -> Response:
        return await answer(request, openai.parse_completion, complete_job, chat=False,
                            respond=lambda done: openai.completion_response(model, done))

    async def stream(request: Request, req, *, chat: bool) -> Response:
        """Server-sent events. The status is sent with the first text, so that a request refused
        before any (queue full, prompt too long) still gets its 4xx/503 as JSON."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()  # (choice, kind, text); kind "done" when a job has ended
        cancel = threading.Event()

        def put(item: tuple) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def job(i: int):
            if chat:
                inner = ask_job(req, i, cancel, lambda kind, text: put((i, kind, text)))
            else:
                inner = complete_job(req, i, cancel, lambda text: put((i, "text", text)))

            def run():
                try:
                    return inner()
                finally:
                    put((i, "done", None))  # after its text: the queue keeps the order
            return run

        futures = []
        try:
            futures += [submit(loop, job(i)) for i in range(req.n)]
        except _Refused:
            cancel.set()
            raise
        try:
            first = await next_event(request, queue, cancel)
            if first[1] == "done":
                await asyncio.wait([futures[first[0]]])
                exc = futures[first[0]].exception()
                if exc is not None:
                    cancel.set()
                    raise cancelled() if isinstance(exc, Cancelled) else _refusal(exc)
        except BaseException:
            cancel.set()
            raise
        cid = openai.new_id("chatcmpl" if chat else "cmpl")
        stamp = int(time.time())
        count(200)
        return StreamingResponse(events(request, req, chat, cid, stamp, queue, first, futures, cancel),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def next_event(request: Request, queue: asyncio.Queue, cancel: threading.Event) -> tuple:
        """The next item of ``queue``; a client gone meanwhile cancels the request (499)."""
        while True:
            try:
                return await asyncio.wait_for(queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    cancel.set()
                    raise _Refused(499, openai.error_body("the client closed the request")) from None

    async def events(request, req, chat, cid, stamp, queue, first, futures, cancel) -> AsyncIterator[str]:
        def sse(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        finished = 0
        try:
            if chat:
                for i in range(req.n):
                    yield sse(openai.chat_chunk(cid, model, stamp, i, {"role": "assistant", "content": ""}))
            item = first
            while True:
                i, kind, text = item
                if kind == "done":
                    finished += 1
                    await asyncio.wait([futures[i]])
                    exc = futures[i].exception()
                    if exc is not None:  # refused after it had begun (the deadline, a bug): said in the stream
                        yield sse(_refusal(exc).body)
                    elif chat:
                        reason = openai.finish_reason(futures[i].result()[0].finish_reason)
                        yield sse(openai.chat_chunk(cid, model, stamp, i, {}, reason))
                    else:
                        reason = openai.finish_reason(futures[i].result().finish_reason)
                        yield sse(openai.completion_chunk(cid, model, stamp, i, "", reason))
                    if finished == req.n:
                        break
                elif chat:
                    field = "reasoning_content" if kind == "reasoning" else "content"
                    yield sse(openai.chat_chunk(cid, model, stamp, i, {field: text}))
                else:
                    yield sse(openai.completion_chunk(cid, model, stamp, i, text))
                item = await next_event(request, queue, cancel)
            if req.include_usage and all(f.exception() is None for f in futures):
                if chat:
                    usage = openai.chat_usage([f.result()[0] for f in futures], sum(f.result()[1] for f in futures))
                    extra = openai.edgesrm_fields(futures[0].result()[0])
                    yield sse({"id": cid, "object": "chat.completion.chunk", "created": stamp, "model": model,
                               "choices": [], "usage": usage, "edgesrm": extra})
                else:
                    usage = openai.completion_response(model, [f.result() for f in futures])["usage"]
                    yield sse({"id": cid, "object": "text_completion", "created": stamp, "model": model,
                               "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        except _Refused:  # the client went away
            return
        finally:
            if finished < req.n:  # the client went away (or the server is closing)
                cancel.set()

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "edgesrm"}]})

    async def health(request: Request) -> Response:
        if scheduler._closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": model})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(prometheus_text(scheduler.snapshot(), http_counts),
                                 media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        count(exc.status_code)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(openai.error_body(f"{request.method} {request.url.path}: {exc.detail}", kind),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has stopped taking connections and waited for open ones (its own grace):
        # what still runs is cancelled, then the model is freed if this app owns it.
        await asyncio.get_running_loop().run_in_executor(None, scheduler.close, shutdown_grace_s)
        workers.shutdown(wait=False, cancel_futures=True)
        if close_runtime:
            runtime.close()

    middleware = []
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))
    if api_key:
        middleware.append(Middleware(_ApiKey, key=api_key))
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.runtime = runtime
    app.state.scheduler = scheduler
    return app
