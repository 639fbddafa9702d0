"""No order of public calls can crash the process.

Engines, generations and sequences wrap native llama.cpp objects: a closed engine, a
generation replaced by the next ``start``, a sequence from another generation must give an
``EdgesrmError``, never a use of freed memory. Each scenario runs in a subprocess, so that a
segmentation fault fails its test (with the signal named) instead of killing pytest.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = '''
import json, sys
from edgesrm.engine import Engine, EngineConfig, GREEDY, SamplingParams
from edgesrm.errors import EdgesrmError
from edgesrm.models import default_model_path

MODEL = default_model_path()
# One thread: a shared, busy machine makes llama.cpp's spinning worker threads very slow.
eng = Engine(MODEL, EngineConfig(n_ctx=512, max_sequences=4, n_threads=1))
PROMPT = "The capital of France is"
SAMPLED = SamplingParams(temperature=1.0, seed=1)

def expect(call, *args, **kwargs):
    """Run a call that must raise EdgesrmError; its message is reported to the test."""
    try:
        call(*args, **kwargs)
    except EdgesrmError as exc:
        print("RAISED " + json.dumps(str(exc)), flush=True)
    else:
        print("RETURNED " + json.dumps(getattr(call, "__name__", repr(call))), flush=True)
'''


def run(code: str, timeout: float = 300) -> list[str]:
    """Run ``code`` after PRELUDE in a fresh interpreter; return the messages ``expect`` saw."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    if proc.returncode < 0:
        pytest.fail(f"the process died from {signal.Signals(-proc.returncode).name}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    messages = []
    for line in proc.stdout.splitlines():
        kind, _, payload = line.partition(" ")
        if kind == "RAISED":
            messages.append(json.loads(payload))
        elif kind == "RETURNED":
            pytest.fail(f"{json.loads(payload)} returned instead of raising EdgesrmError")
    for message in messages:
        assert "\n" not in message
    return messages


CLOSED_GENERATION = "this generation is closed (the engine started another one, or was closed): start a new one"
CLOSED_ENGINE = "the engine is closed: load the model again"


def test_the_old_generation_after_a_second_start_refuses_every_call():
    messages = run('''
        old = eng.start(PROMPT)
        a = old.add(SAMPLED, max_tokens=16)
        b = old.add(SAMPLED, max_tokens=16, pause=[" "])
        old.step()
        new = eng.start(PROMPT)  # frees the old generation's sampler chains
        expect(old.step)
        expect(old.run)
        expect(old.add, SAMPLED)
        expect(old.fork, a)
        expect(old.force, a, " Paris")
        expect(old.resume, b)
        expect(old.configure, a, max_tokens=4)
        expect(old.drop, a)
        expect(old.last_logits, a)
        # The new generation works, and the old one's sequences are not its own.
        expect(new.fork, a)
        expect(new.drop, b)
        seq = new.add(GREEDY, max_tokens=4)
        new.run()
        assert seq.finished and seq.n_sampled >= 1, seq
    ''')
    assert messages[:9] == [CLOSED_GENERATION] * 9
    assert messages[9:] == ["sequence 0 belongs to another generation", "sequence 1 belongs to another generation"]


def test_a_closed_engine_refuses_every_call():
    messages = run('''
        gen = eng.start(PROMPT)
        seq = gen.add(SAMPLED, max_tokens=16)
        gen.step()
        eng.close()
        expect(eng.start, PROMPT)
        expect(eng.start, [1, 2, 3])
        expect(eng.tokenize, "hello")
        expect(eng.piece, seq.tokens[0])  # even a piece that was cached
        expect(eng.meta, "general.architecture")
        expect(eng.detokenize, seq.tokens)
        expect(eng.detokenize_special, 0)
        expect(eng.is_eog, 0)
        expect(lambda: eng.bos_token)
        expect(gen.step)
        expect(gen.add, SAMPLED)
        expect(gen.last_logits, seq)
        eng.close()  # twice is harmless
        with Engine(MODEL, EngineConfig(n_ctx=256, max_sequences=1, n_threads=1)) as other:
            other_gen = other.start(PROMPT)
        expect(other.start, PROMPT)
        expect(other_gen.step)
    ''')
    assert messages == [CLOSED_ENGINE] * 9 + [CLOSED_GENERATION] * 3 + [CLOSED_ENGINE, CLOSED_GENERATION]


def test_closing_twice_and_collecting_in_any_order_is_harmless():
    run('''
        import gc
        gen = eng.start(PROMPT)
        seq = gen.add(SAMPLED, max_tokens=8)
        gen.step()
        gen.close(); gen.close()
        eng.close(); eng.close()
        del eng; gc.collect()
        seq.text, seq.mean_logprob, gen.active  # plain Python state stays readable
        del gen, seq; gc.collect()
        e2 = Engine(MODEL, EngineConfig(n_ctx=256, max_sequences=2, n_threads=1))
        g2 = e2.start(PROMPT)
        s2 = g2.add(SAMPLED, max_tokens=4)
        del e2; gc.collect()  # the generation keeps its engine alive
        g2.run()
        assert s2.finished
    ''')


def test_a_sequence_from_another_generation_is_refused():
    messages = run('''
        other_engine = Engine(MODEL, EngineConfig(n_ctx=512, max_sequences=4, n_threads=1))
        gen, other = eng.start(PROMPT), other_engine.start(PROMPT)
        mine, theirs = gen.add(SAMPLED, max_tokens=8), other.add(SAMPLED, max_tokens=8)
        gen.step(); other.step()
        for call in (gen.fork, gen.drop, gen.resume, gen.last_logits, gen.configure):
            expect(call, theirs)
        expect(gen.force, theirs, "x")
        expect(gen.fork, "not a sequence")
        expect(gen.drop, None)
        gen.run(); other.run()  # both still fine
        assert mine.finished and theirs.finished and theirs.finish_reason != "dropped"
    ''')
    assert messages == ["sequence 0 belongs to another generation"] * 6 + [
        "expected a Sequence, got str", "expected a Sequence, got NoneType"]


def test_paused_sequences_can_be_forked_and_forced_finished_ones_cannot():
    messages = run('''
        gen = eng.start(PROMPT)
        seq = gen.add(SAMPLED, max_tokens=40, pause=[" "])
        for _ in range(40):
            gen.step()
            if seq.paused:
                break
        assert seq.paused, seq.text
        child = gen.fork(seq)
        assert child.paused and child.text == seq.text
        gen.force(seq, " Wait,")
        gen.resume(child)
        gen.configure(child, pause=[])
        gen.run()
        assert seq.paused or seq.finished
        gen.drop(seq)
        assert seq.finished and child.finished
        expect(gen.fork, seq)
        expect(gen.force, seq, "more")
        expect(gen.fork, child)
        gen.resume(child); gen.configure(child, max_tokens=3); gen.drop(child)  # harmless on a finished one
    ''')
    assert messages[:2] == [
        "cannot fork sequence 0: it has finished (dropped)", "cannot force text into sequence 0: it has finished"]
    assert len(messages) == 3 and messages[2].startswith("cannot fork sequence 1: it has finished (")


def test_last_logits_only_while_they_are_there():
    messages = run('''
        gen = eng.start(PROMPT)
        short = gen.add(GREEDY, max_tokens=1)  # samples once, from the prompt's logits
        long = gen.add(SAMPLED, max_tokens=8)
        gen.step()  # ... then the step decodes `long` again: `short`'s logits are overwritten
        assert short.finished and not long.finished
        assert gen.last_logits(long).shape == (eng.n_vocab,)
        expect(gen.last_logits, short)
        fresh = gen.add(GREEDY, max_tokens=2)
        expect(gen.last_logits, fresh)  # not sampled yet
        gen.drop(long)
        gen.step()  # decodes `fresh` only
        expect(gen.last_logits, long)
        assert gen.last_logits(fresh).shape == (eng.n_vocab,)
    ''')
    assert messages == [
        "sequence 0 was not sampled in the latest step: its logits are gone",
        "sequence 2 was not sampled in the latest step: its logits are gone",
        "sequence 1 was not sampled in the latest step: its logits are gone",
    ]


def test_adding_past_the_pool_and_bad_arguments_are_errors():
    messages = run('''
        gen = eng.start(PROMPT)
        seqs = [gen.add(SAMPLED, max_tokens=4) for _ in range(4)]
        expect(gen.add, SAMPLED)
        expect(gen.fork, seqs[0])
        gen.drop(seqs[0])
        seqs.append(gen.add(SAMPLED, max_tokens=4))  # a dropped sequence frees its place
        expect(gen.add, SAMPLED, max_tokens=0)
        expect(gen.add, SAMPLED, max_tokens=4.0)
        expect(gen.add, SAMPLED, max_tokens=True)
        expect(gen.add, {"temperature": 1.0})
        expect(gen.add, SAMPLED, stop="</s>")
        expect(gen.configure, seqs[1], max_tokens=-3)
        expect(gen.configure, seqs[1], pause=[None])
        expect(gen.force, seqs[1], b"bytes")
        expect(gen.drop, seqs[1], None)
        expect(eng.start, [0, 1, eng.n_vocab])
        expect(eng.start, [-1])
        expect(eng.start, [1.5])
    ''')
    assert messages[:2] == ["at most 4 sequences can run at once (raise max_sequences when loading the engine)"] * 2
    assert [m.split(" must ")[0] for m in messages[2:5]] == ["max_tokens"] * 3
    assert messages[5:] == [
        "sampling must be a SamplingParams, got dict",
        "stop must be a list or tuple of strings, got '</s>'",
        "max_tokens must be an integer from 1 to 2,147,483,647, got -3",
        "pause must be a list or tuple of strings, got [None]",
        "force takes text (a str), got bytes",
        "a finish reason must be a non-empty str, got None",
        "prompt tokens must be token ids from 0 to 49,151, got 49152",
        "prompt tokens must be token ids from 0 to 49,151, got -1",
        "prompt tokens must be token ids from 0 to 49,151, got 1.5",
    ]


def test_text_callbacks_cannot_pull_the_generation_from_under_a_step():
    messages = run('''
        # A callback that steps its own generation.
        gen = eng.start(PROMPT)
        gen.add(SAMPLED, max_tokens=8, on_text=lambda s, t: gen.step())
        expect(gen.run)
        # A callback that starts another generation (closing this one) mid-step.
        gen = eng.start(PROMPT)
        for i in range(3):
            gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=8, on_text=lambda s, t: eng.start(PROMPT))
        expect(gen.run)
        # A callback that closes the engine mid-step.
        gen = eng.start(PROMPT)
        gen.add(SAMPLED, max_tokens=8, on_text=lambda s, t: eng.close())
        expect(gen.run)
        expect(eng.start, PROMPT)
    ''')
    assert messages == ["a generation cannot be stepped from its own text callback", CLOSED_GENERATION,
                        CLOSED_GENERATION, CLOSED_ENGINE]


def test_callbacks_that_drop_fork_or_raise_leave_a_generation_that_still_runs():
    run('''
        gen = eng.start(PROMPT)
        seqs = []
        def meddle(seq, text):
            others = [s for s in seqs if s is not seq and not s.finished]
            if others and seq.n_sampled == 2:
                gen.drop(others[0])
            elif seq.n_sampled == 3 and len(gen.sequences) < 4 and not seq.finished:
                gen.fork(seq)
            elif seq.n_sampled == 4:
                raise ValueError("a bug in the callback")
        seqs += [gen.add(SamplingParams(temperature=1.0, seed=i), max_tokens=12, on_text=meddle) for i in range(3)]
        errors = 0
        for _ in range(200):
            if not gen.active:
                break
            try:
                gen.step()
            except ValueError:
                errors += 1
        assert not gen.active and errors >= 1
        assert all(s.finished for s in gen.sequences)
    ''')


def test_a_closed_runtime_refuses_to_answer():
    messages = run('''
        import edgesrm
        rt = edgesrm.load(n_ctx=512, max_sequences=2, threads=1)
        assert rt.ask("What is 1 + 1?", max_tokens=2, seed=1).completion_tokens >= 1
        rt.close(); rt.close()
        expect(rt.ask, "What is 1 + 1?")
        expect(rt.ask, "What is 1 + 1?", strategy="sc", n=2)
        expect(rt.engine.start, PROMPT)
        with edgesrm.load(n_ctx=512, max_sequences=1, threads=1) as rt2:
            pass
        expect(rt2.ask, "What is 1 + 1?", strategy="auto", budget=edgesrm.Budget(deadline_s=5))
    ''')
    assert messages == ["this runtime is closed: load the model again"] * 2 + [CLOSED_ENGINE] + [
        "this runtime is closed: load the model again"]


def test_a_token_id_outside_the_vocabulary_is_an_error():
    messages = run('''
        expect(eng.piece, eng.n_vocab)
        expect(eng.detokenize_special, 10**6)
        expect(eng.detokenize, [-5])
    ''')
    assert len(messages) == 3


# -- random sequences of public calls --------------------------------------------------------

FUZZ = '''
import random, traceback
from edgesrm.checks import MAX_SEED

PROGRAMS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
FIRST = int(sys.argv[3]) if len(sys.argv) > 3 else 0
OPS = 40
log = open(sys.argv[2], "w") if len(sys.argv) > 2 else sys.stderr
texts = ["", " Paris", "Wait", "<|im_end|>", "\\u00e9\\u00e8 \\U0001F600", " 12 + 7 =", "\\n\\n"]
surprises = []

class Skip(Exception):
    """Nothing to call this on yet."""

def program(seed):
    global eng
    rng = random.Random(seed)
    gens, seqs = [], []
    def some_gen():
        if not gens:
            raise Skip
        return rng.choice(gens)
    def some_seq():
        return rng.choice(seqs) if seqs and rng.random() < 0.95 else object()
    def callback(seq, text):
        if rng.random() < 0.03:
            rng.choice(actions)()
    def start():
        prompt = rng.choice([PROMPT, "Hi", [1, 2, 3], list(range(1, 40))])
        gens.append(eng.start(prompt, logprobs=rng.random() < 0.8))
    def add():
        sampling = GREEDY if rng.random() < 0.3 else SamplingParams(temperature=rng.choice([0.5, 1.0, 2.0]),
                                                                      seed=rng.randrange(MAX_SEED))
        seqs.append(some_gen().add(
            sampling, max_tokens=rng.choice([1, 2, 5, 16]), stop=rng.choice([(), (".",)]),
            pause=rng.choice([(), (" ",), ("e",)]), pause_on_eos=rng.random() < 0.3,
            on_text=callback if rng.random() < 0.3 else None))
    def fork():
        seqs.append(some_gen().fork(some_seq()))
    def force():
        some_gen().force(some_seq(), rng.choice(texts))
    def resume():
        some_gen().resume(some_seq())
    def configure():
        some_gen().configure(some_seq(), max_tokens=rng.choice([None, 1, 3, 30]),
                                   stop=rng.choice([None, (), ("a",)]), pause_on_eos=rng.choice([None, True, False]))
    def drop():
        some_gen().drop(some_seq())
    def last_logits():
        some_gen().last_logits(some_seq())
    def step():
        for _ in range(rng.choice([1, 1, 3])):
            some_gen().step()
    def run():
        gen = some_gen()
        for _ in range(60):  # paused sequences wait forever: bounded
            if not gen.active:
                break
            gen.step()
    def close_generation():
        some_gen().close()
    def engine_calls():
        eng.tokenize(rng.choice(texts)); eng.piece(rng.randrange(eng.n_vocab)); eng.meta("general.name")
        eng.detokenize([t for s in seqs[-2:] for t in s.tokens])
    def close_engine():
        eng.close()
    def new_engine():
        global eng
        eng = Engine(MODEL, EngineConfig(n_ctx=rng.choice([64, 512]), max_sequences=rng.choice([1, 4]), n_threads=1))
    actions = [start, add, add, fork, force, resume, configure, drop, last_logits, step, step, step, run,
               close_generation, engine_calls, close_engine, new_engine]
    weights = [4, 6, 6, 3, 3, 2, 2, 2, 2, 8, 8, 8, 2, 1, 2, 1, 1]
    start()
    for i in range(OPS):
        action = rng.choices(actions, weights)[0]
        print(f"program {seed} op {i}: {action.__name__}", file=log, flush=True)
        try:
            action()
        except (EdgesrmError, Skip):
            pass
        except Exception:
            surprises.append(f"program {seed} op {i} {action.__name__}: " + traceback.format_exc(limit=3))

for seed in range(FIRST, FIRST + PROGRAMS):
    program(seed)
    if eng._closed:
        eng = Engine(MODEL, EngineConfig(n_ctx=512, max_sequences=4, n_threads=1))
print("SURPRISES " + json.dumps(surprises))
'''


def test_random_sequences_of_public_calls_never_crash(tmp_path):
    # EDGESRM_FUZZ_PROGRAMS=300 EDGESRM_FUZZ_FIRST=1000 explores further (the default takes ~30 s).
    programs = int(os.environ.get("EDGESRM_FUZZ_PROGRAMS", "24"))
    first = int(os.environ.get("EDGESRM_FUZZ_FIRST", "0"))
    log = tmp_path / "ops.log"
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + FUZZ, str(programs), str(log), str(first)], capture_output=True, text=True,
        timeout=900, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    if proc.returncode < 0:
        last_ops = log.read_text().splitlines()[-15:]
        pytest.fail(f"died from {signal.Signals(-proc.returncode).name} after:\n" + "\n".join(last_ops)
                    + "\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    surprises = json.loads(proc.stdout.split("SURPRISES ", 1)[1])
    assert not surprises, "\n".join(surprises[:5])
