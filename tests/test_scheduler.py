"""Many requests on one engine (edgesrm.engine.scheduler), through real llama.cpp and the
embedded model: shared decode steps, chunked prefill, prefix reuse, cancellation, admission."""

from __future__ import annotations

import threading
import time

import pytest

from edgesrm import load
from edgesrm.engine import Cancelled, GREEDY, QueueFull, SamplingParams, Scheduler
from edgesrm.errors import EdgesrmError


@pytest.fixture()
def rt(model_path):
    runtime = load(model_path, n_ctx=4096, max_sequences=8)
    runtime.start_scheduler(max_queue=4)
    yield runtime
    runtime.close()


def held_ids(rt) -> int:
    """Sequence ids held by live generations (neither free nor in the prefix cache)."""
    return rt.scheduler.snapshot()["sequence_ids_held"]


def run_threads(*jobs):
    results, errors = [None] * len(jobs), []

    def run(i, job):
        try:
            results[i] = job()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results, errors


def test_requests_share_decode_steps(rt):
    before = rt.scheduler.metrics.steps
    results, errors = run_threads(
        lambda: rt.ask("Tell me a story about a dragon.", strategy="plain", max_tokens=40, seed=1),
        lambda: rt.ask("Write a poem about the sea.", strategy="plain", max_tokens=25, seed=2),
        lambda: rt.ask("What is 2 + 3?", strategy="sc", n=4, max_tokens=30, seed=3),
    )
    assert not errors, errors
    steps = rt.scheduler.metrics.steps - before
    tokens = sum(r.completion_tokens + r.forced_tokens for r in results)
    assert all(r.completion_tokens > 0 for r in results)
    assert steps < tokens  # alone, each token of each request would be one step of its own
    assert held_ids(rt) == 0  # every sequence id came back (or went to the prefix cache)
    assert rt.scheduler.snapshot()["kv_cells_reserved"] == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(model_path):
    rt = load(model_path, n_ctx=4096, max_sequences=4)
    rt.start_scheduler()
    try:
        long_question = "Summarize: " + " ".join(f"line {i} of a long report." for i in range(250))
        results, errors = run_threads(
            lambda: rt.ask("Count from one to twenty.", strategy="plain", max_tokens=40, seed=1),
            lambda: (time.sleep(0.3), rt.ask(long_question, strategy="plain", max_tokens=5, seed=2))[1],
        )
        assert not errors, errors
        assert results[1].prompt_tokens > 1024
        assert results[0].completion_tokens > 0 and results[1].completion_tokens > 0
    finally:
        rt.close()


def test_the_next_turn_reuses_the_cached_conversation(rt):
    first = rt.ask(messages=[{"role": "user", "content": "My name is Ada."}], max_tokens=20, seed=1)
    second = rt.ask(messages=[{"role": "user", "content": "My name is Ada."},
                              {"role": "assistant", "content": first.answer},
                              {"role": "user", "content": "What is my name?"}], max_tokens=20, seed=2)
    assert first.cached_tokens == 0 or first.cached_tokens < first.prompt_tokens
    # The whole first prompt at least, and its reply's cells as far as they match the template's.
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert rt.engine.prefix_cache.hits >= 1


def test_prefix_reuse_can_be_turned_off(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=2, cache_prompt=False)
    rt.start_scheduler()
    try:
        messages = [{"role": "user", "content": "Hello there."}]
        rt.ask(messages=messages, max_tokens=5, seed=1)
        again = rt.ask(messages=messages, max_tokens=5, seed=1)
        assert again.cached_tokens == 0 and not rt.engine.prefix_cache.entries
    finally:
        rt.close()


def test_cancel_drops_the_sequences_and_frees_their_cells(rt):
    cancel = threading.Event()
    seen = []

    def on_text(kind, text):
        seen.append(text)
        if len(seen) == 3:
            cancel.set()

    other = {}
    results, errors = run_threads(
        lambda: rt.ask("Tell me a very long story.", strategy="plain", max_tokens=400, seed=1, on_text=on_text,
                       cancel=cancel),
        lambda: other.setdefault("r", rt.ask("Write a haiku.", strategy="plain", max_tokens=30, seed=2)),
    )
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert other["r"].completion_tokens > 0  # the other request was not harmed
    assert held_ids(rt) == 0
    assert rt.scheduler.metrics.requests_cancelled == 1
    assert len(seen) < 20  # dropped within a step or two of the cancel


def test_an_error_in_one_request_leaves_the_others_running(rt):
    def explode(kind, text):
        raise RuntimeError("a broken callback")

    results, errors = run_threads(
        lambda: rt.ask("Say something.", strategy="plain", max_tokens=20, seed=1, on_text=explode),
        lambda: rt.ask("Write a haiku.", strategy="plain", max_tokens=20, seed=2),
    )
    assert len(errors) == 1 and "broken callback" in str(errors[0])
    assert [r for r in results if r is not None][0].completion_tokens > 0
    assert held_ids(rt) == 0


def test_a_full_queue_refuses_at_once(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=1)
    rt.start_scheduler(max_queue=0)
    try:
        started = threading.Event()
        results, errors = run_threads(
            lambda: rt.ask("Tell me a long story.", strategy="plain", max_tokens=60, seed=1,
                           on_text=lambda k, t: started.set()),
            lambda: (started.wait(60), rt.ask("Hi", strategy="plain", max_tokens=5))[1],
        )
        assert len(errors) == 1 and isinstance(errors[0], QueueFull)
        assert "try again" in str(errors[0])
    finally:
        rt.close()


def test_a_queued_request_runs_when_a_sequence_is_free(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=1)
    rt.start_scheduler(max_queue=2)
    try:
        results, errors = run_threads(*(lambda i=i: rt.ask(f"Say {i}.", strategy="plain", max_tokens=8, seed=i)
                                        for i in range(3)))
        assert not errors and all(r.completion_tokens > 0 for r in results)
    finally:
        rt.close()


def test_engine_generations_need_a_request_under_a_scheduler(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=2)
    scheduler = rt.start_scheduler()
    try:
        with pytest.raises(EdgesrmError, match="scheduler.request"):
            rt.engine.start("Hello")
        with scheduler.request(slots=2, max_tokens=8):
            gen = rt.engine.start("Hello")
            a, b = gen.add(GREEDY, max_tokens=8), gen.add(SamplingParams(seed=1), max_tokens=8)
            gen.run()
            assert a.finished and b.finished
            with pytest.raises(EdgesrmError, match="at most 2 sequences"):
                for _ in range(3):
                    gen.add(GREEDY, max_tokens=1)
        assert isinstance(scheduler, Scheduler)
    finally:
        rt.close()
    assert rt.scheduler is None


def test_close_cancels_what_runs_after_the_grace(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=2)
    rt.start_scheduler()
    started = threading.Event()
    results, errors = [], []

    def long_ask():
        try:
            results.append(rt.ask("Tell me a very long story.", strategy="plain", max_tokens=2000, seed=1,
                                  on_text=lambda k, t: started.set()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=long_ask)
    t.start()
    assert started.wait(60)
    rt.close(grace_s=0.2)
    t.join(60)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], Cancelled)


def test_a_chat_session_keeps_the_conversation_and_its_cache(model_path):
    rt = load(model_path, n_ctx=2048, max_sequences=2)
    try:
        session = rt.chat_session(system="You are terse.", max_tokens=16, seed=1)
        first = session.send("My name is Ada.")
        second = session.send("What is my name?")
        assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
        assert session.messages[1]["content"] == first.answer
        assert second.cached_tokens >= first.prompt_tokens - 1  # the first turn was not prefilled again
        with pytest.raises(EdgesrmError, match="non-empty"):
            session.send("   ")
        assert len(session.messages) == 4  # a refused turn changes nothing
        session.reset()
        assert session.messages == [] and session.system == "You are terse."
    finally:
        rt.close()


def test_a_deadline_counts_the_time_spent_waiting_in_the_queue(model_path):
    """The answer arrives within the deadline from the call, queued or not."""
    from edgesrm import Budget

    rt = load(model_path, n_ctx=2048, max_sequences=1)
    rt.start_scheduler(max_queue=2)
    try:
        started, timed = threading.Event(), {}

        def queued():
            started.wait(60)
            t = time.perf_counter()
            result = rt.ask("Say hi.", strategy="plain", max_tokens=4, budget=Budget(deadline_s=120), seed=2)
            timed.update(wall=time.perf_counter() - t, result=result)

        results, errors = run_threads(
            lambda: rt.ask("Tell me a very long story.", strategy="plain", max_tokens=200, temperature=1.0, seed=1,
                           on_text=lambda k, t: started.set()), queued)
        assert not errors, errors
        assert timed["wall"] > 0.3  # it waited for the first request's sequence
        assert timed["result"].total_s >= 0.9 * timed["wall"]
    finally:
        rt.close()
