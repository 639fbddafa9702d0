"""The scheduler: many requests on one engine, one ``llama_decode`` per step.

Each request runs its strategy unchanged, in its own thread, as if it were alone: it starts a
``Generation`` and calls ``step()``. Under a scheduler those calls *park* the thread instead of
decoding; one decode thread waits until every running request has parked (or ``gather_s`` has
passed), then builds one batch: one token for every live sequence of every parked generation,
then chunks of newly arrived prompts up to ``n_batch`` (chunked prefill, so running streams keep
flowing), decodes it, samples each generation's rows and wakes the threads. This is the slot loop
of llama-server (``update_slots``) and mlx-lm's ``BatchGenerator``, with each strategy's own loop
kept as it is (sc's early stopping, budget forcing, plan, reflect) instead of rewritten as a
state machine: a thread costs a few microseconds per step, a step tens of milliseconds.

Only one thread touches the llama.cpp context at a time (the *baton*): a request thread holds it
while it runs and gives it back when it parks; the decode thread takes it for the decode.

Admission: a request names the sequences it needs at once (``slots``: sc's paths, 1 otherwise)
and the tokens each may generate; it runs when the free sequences and KV cells allow, else it
waits in a bounded queue (``QueueFull`` beyond it). KV cells are reserved per generation when its
prompt is known: prompt + slots x max_tokens (capped at the context), so that admitted requests do
not run one another out of cells; the prefix cache lives in what is left and is evicted first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import EdgesrmError


class QueueFull(EdgesrmError):
    """Every sequence is busy and the waiting queue is full: try again later."""


class Cancelled(EdgesrmError):
    """The request was cancelled (its client went away); its sequences were dropped."""


class ShuttingDown(EdgesrmError):
    """The scheduler is closing and takes no new requests."""


@dataclass(eq=False)
class Request:
    slots: int  # sequences it may decode at once
    max_tokens: int  # tokens each sequence may generate (for the KV cells it reserves)
    cancel: threading.Event = field(default_factory=threading.Event)
    admitted: bool = False
    generations: list = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


@dataclass
class Metrics:
    requests_total: int = 0  # admitted
    requests_rejected: int = 0  # queue full or shutting down
    requests_cancelled: int = 0
    steps: int = 0  # llama_decode calls of the shared loop
    decode_s: float = 0.0
    generated_tokens: int = 0  # sampled and forced tokens decoded for sequences (not prompts)
    prompt_tokens: int = 0  # prompt tokens prefilled
    last_tokens_per_s: float = 0.0  # generated tokens per second over the latest steps


class Scheduler:
    """Runs the engine's steps in one thread for every request; see the module docstring.

    ``max_queue``: requests that may wait for admission (beyond them ``request`` raises
    ``QueueFull``). ``gather_s``: how long a step waits for running requests to park.
    """

    def __init__(self, engine, *, max_queue: int = 64, gather_s: float = 0.05) -> None:
        if engine._scheduler is not None:
            raise EdgesrmError("this engine already has a scheduler")
        if engine._generation is not None:
            engine._generation.close()
        self.engine = engine
        self.max_queue = max_queue
        self.gather_s = gather_s
        self.metrics = Metrics()
        self._cv = threading.Condition()
        self._baton = threading.Lock()
        self._local = threading.local()
        self._queue: deque[Request] = deque()
        self._live: list[Request] = []
        self._running = 0  # admitted requests whose thread runs (not parked)
        self._slots_used = 0
        self._prefilling: list = []  # generations whose prompt is being decoded
        self._parked: list = []  # generations waiting for the next step
        self._cells: dict = {}  # generation -> KV cells reserved
        self._owner: dict = {}  # generation -> the Request that started it
        self._done: set = set()  # generations whose step (or prefill) is over
        self._errors: dict = {}  # generation -> exception raised in its part of a step
        self._closing = False
        self._stopped = False
        self._recent: deque[tuple[float, int]] = deque(maxlen=32)
        engine._scheduler = self
        self._thread = threading.Thread(target=self._loop, name="edgesrm-decode", daemon=True)
        self._thread.start()

    # -- requests (called from request threads) -----------------------------------------

    @contextmanager
    def request(self, *, slots: int = 1, max_tokens: int = 512,
                cancel: threading.Event | None = None) -> Iterator[Request]:
        """Run the body as one request: wait for admission (``QueueFull`` if the queue is full,
        ``Cancelled`` if ``cancel`` is set meanwhile), then hold the engine while it runs."""
        if getattr(self._local, "request", None) is not None:
            raise EdgesrmError("a request cannot start another request on the same engine")
        req = Request(slots=max(1, min(slots, self.engine.config.max_sequences)), max_tokens=max_tokens)
        if cancel is not None:
            req.cancel = cancel
        with self._cv:
            if self._closing:
                self.metrics.requests_rejected += 1
                raise ShuttingDown("the server is shutting down")
            if not self._queue and self._fits(req):
                self._admit(req)
            elif len(self._queue) >= self.max_queue:
                self.metrics.requests_rejected += 1
                raise QueueFull(f"all {self.engine.config.max_sequences} sequences are busy and "
                                f"{len(self._queue)} requests are waiting: try again later")
            else:
                self._queue.append(req)
                while not req.admitted:
                    if req.cancelled or self._closing:
                        self._queue.remove(req)
                        self.metrics.requests_cancelled += 1
                        self._cv.notify_all()
                        raise Cancelled("the request was cancelled while it waited")
                    self._cv.wait(0.1)
        self._baton.acquire()
        self._local.request = req
        try:
            yield req
        finally:
            try:
                for gen in req.generations:
                    gen.close()  # what a strategy left open; its cells go back (or to the prefix cache)
            finally:
                self._local.request = None
                self._baton.release()
                with self._cv:
                    for gen in req.generations:
                        self._cells.pop(gen, None)
                        self._owner.pop(gen, None)
                    self._live.remove(req)
                    self._running -= 1
                    self._slots_used -= req.slots
                    if req.cancelled:
                        self.metrics.requests_cancelled += 1
                    while self._queue and self._fits(self._queue[0]):
                        self._admit(self._queue.popleft())
                    self._cv.notify_all()

    def slots(self) -> int:
        """The calling request's sequences (the whole engine's outside a request)."""
        req = getattr(self._local, "request", None)
        return req.slots if req is not None else self.engine.config.max_sequences

    def prefill(self, gen) -> None:
        """Park until ``gen``'s prompt is decoded (by the decode thread, in chunks)."""
        req = self._current()
        req.generations.append(gen)
        self._owner[gen] = req
        n_ctx = self.engine.n_ctx
        cells = min(n_ctx, len(gen.prompt_tokens) - gen._prefilled + req.slots * req.max_tokens)
        self._park(gen, lambda: (self._cells.__setitem__(gen, cells), self._prefilling.append(gen)))

    def step(self, gen) -> None:
        """Park until the next shared step has decoded ``gen``'s sequences."""
        self._current()
        self._park(gen, lambda: self._parked.append(gen))

    def close(self, grace_s: float = 0.0, *, cancel_wait_s: float = 30.0) -> None:
        """Take no new requests; let running ones finish for ``grace_s`` seconds, then cancel
        them (they unwind at their next step, for at most ``cancel_wait_s``); stop the decode
        thread."""
        on_loop = threading.current_thread() is self._thread
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            for wait_s, cancel in ((grace_s, False), (cancel_wait_s, True)):
                if cancel:
                    for req in self._live + list(self._queue):
                        req.cancel.set()
                    self._cv.notify_all()
                end = time.perf_counter() + wait_s
                while self._live and not on_loop and (left := end - time.perf_counter()) > 0:
                    self._cv.wait(min(0.1, left))
            self._stopped = True
            self._cv.notify_all()
        if not on_loop:
            self._thread.join()
        if self.engine._scheduler is self:
            self.engine._scheduler = None

    # -- what /metrics reads -------------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        with self._cv:
            cache = self.engine.prefix_cache
            return {
                "requests_running": len(self._live),
                "requests_queued": len(self._queue),
                "sequences_busy": self._slots_used,
                "sequences_max": self.engine.config.max_sequences,
                "kv_cells_reserved": sum(self._cells.values()),
                "kv_cells_max": self.engine.n_ctx,
                "prefix_cache_entries": len(cache.entries),
                "prefix_cache_tokens": cache.tokens,
                "prefix_cache_hits": cache.hits,
                "prefix_cache_misses": cache.misses,
                "prefix_cache_reused_tokens": cache.reused_tokens,
                "sequence_ids_held": self.engine.n_seq_max - len(self.engine._seq_ids) - len(cache.entries),
                **vars(self.metrics),
            }

    # -- internals -------------------------------------------------------------------------

    def _current(self) -> Request:
        req = getattr(self._local, "request", None)
        if req is None:
            raise EdgesrmError("this engine is shared by a scheduler: run generations inside scheduler.request()")
        return req

    def _fits(self, req: Request) -> bool:
        return not self._live or self._slots_used + req.slots <= self.engine.config.max_sequences

    def _admit(self, req: Request) -> None:
        req.admitted = True
        self._live.append(req)
        self._slots_used += req.slots
        self._running += 1
        self.metrics.requests_total += 1

    def _park(self, gen, enqueue) -> None:
        req = self._current()
        with self._cv:
            if self._stopped:
                raise Cancelled("the server has stopped")
            enqueue()
            self._running -= 1
            self._cv.notify_all()
        self._baton.release()
        try:
            with self._cv:
                while gen not in self._done:
                    self._cv.wait()
                self._done.discard(gen)  # (the decode thread counted this thread as running again)
        finally:
            self._baton.acquire()
        error = self._errors.pop(gen, None)
        if error is not None:
            raise error
        if req.cancelled:
            raise Cancelled("the request was cancelled")

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._parked and not self._prefilling:
                    self._cv.wait()
                if self._stopped:
                    for gen in self._parked + self._prefilling:
                        self._errors[gen] = Cancelled("the server has stopped")
                    self._wake(self._parked + self._prefilling)
                    self._parked, self._prefilling = [], []
                    return
                end = time.perf_counter() + self.gather_s  # let running requests join this step
                while self._running > 0 and (left := end - time.perf_counter()) > 0:
                    self._cv.wait(left)
                stepping, self._parked = self._parked, []
            with self._baton:
                woken = self._step(stepping)
            with self._cv:
                self._wake(woken)
                if not woken and not stepping:  # only prompts waiting for KV cells: no busy loop
                    self._cv.wait(0.05)

    def _wake(self, gens: list) -> None:
        """(under the condition) Let the threads of ``gens`` run again."""
        for gen in gens:
            self._done.add(gen)
            self._running += 1
        self._cv.notify_all()

    def _step(self, stepping: list) -> list:
        """One shared decode; returns the generations whose threads may run again."""
        engine = self.engine
        started = time.perf_counter()
        items: list[tuple[int, int, int, bool]] = []
        parts = []  # (gen, its items' start, its items, outputs, active)
        woken = []
        for gen in stepping:
            try:
                if self._owner[gen].cancelled:
                    raise Cancelled("the request was cancelled")
                gen._sample_prompt_logits()
                if gen._closed:
                    raise EdgesrmError("this generation was closed by a text callback")
                own, outputs, active = gen._collect(engine.n_batch - len(items))
            except BaseException as exc:  # this generation's own failure: the others go on
                self._errors[gen] = exc
                woken.append(gen)
                continue
            parts.append((gen, len(items), own, outputs, active))
            items += own
        prefills = []  # (gen, start, items)
        with self._cv:
            order = list(self._prefilling)
        for gen in order:
            room = engine.n_batch - len(items)
            if room <= 0:
                break
            if self._owner[gen].cancelled:
                with self._cv:
                    self._prefilling.remove(gen)
                self._errors[gen] = Cancelled("the request was cancelled")
                woken.append(gen)
                continue
            if not _started(gen) and not self._cells_allow(gen):
                continue  # its KV cells are not free yet: it waits (others may fit)
            own = gen._prefill_items(room)
            prefills.append((gen, len(items), own))
            items += own
        if not items:
            return woken + [p[0] for p in parts]
        status = engine._decode(items)
        decoding = sum(len(p[2]) for p in parts)
        if status == 1 and prefills and decoding:
            # The KV cache is full even without cached prefixes: the running sequences go on, the
            # new prompts wait for cells (rather than every request being cut for their sake).
            prefills = []
            status = engine._decode(items[:decoding])
        seconds = time.perf_counter() - started
        for gen, start, own, outputs, active in parts:
            try:
                gen._apply(status, own, outputs, start, active)
            except BaseException as exc:
                self._errors[gen] = exc
            gen._count_step(seconds, len(own), len(active))
            woken.append(gen)
        for gen, start, own in prefills:
            if status != 0:
                self._errors[gen] = EdgesrmError(
                    "the context is full (raise the context size)" if status == 1
                    else f"llama_decode failed during prefill (status {status})")
                with self._cv:
                    self._prefilling.remove(gen)
                woken.append(gen)
                continue
            gen._prefill_decoded(len(own), start + len(own) - 1)
            if gen.prefilled:
                with self._cv:
                    self._prefilling.remove(gen)
                woken.append(gen)
        generated = sum(len(p[2]) for p in parts)
        m = self.metrics
        m.steps += 1
        m.decode_s += seconds
        m.generated_tokens += generated
        m.prompt_tokens += sum(len(p[2]) for p in prefills)
        self._recent.append((seconds, generated))
        total_s = sum(s for s, _ in self._recent)
        m.last_tokens_per_s = sum(n for _, n in self._recent) / total_s if total_s > 0 else 0.0
        return woken

    def _cells_allow(self, gen) -> bool:
        """Whether the KV cells ``gen`` reserves are free (it starts its prefill then)."""
        with self._cv:
            others = sum(c for g, c in self._cells.items() if g is not gen and not g._closed and _started(g))
            return others == 0 or others + self._cells[gen] <= self.engine.n_ctx


def _started(gen) -> bool:
    """Whether ``gen`` has begun decoding its prompt (its reserved cells are then in use)."""
    return gen.prefilled or gen._prefilled > gen.timings.cached_tokens
