"""The engine: one llama.cpp model and context, many sequences decoded together.

Every reasoning strategy needs several sequences per ``llama_decode``: self-consistency
samples N paths over one prompt, budget forcing injects text into a running path, tree
searches fork a path mid-way. ``Engine.start`` prefills a prompt once; a ``Generation``
then adds, forks, forces and drops sequences, and ``Generation.step`` advances every live
sequence by one token with a single ``llama_decode``.

The KV cache is unified (``kv_unified=True``): a prompt cell is shared by every sequence
that starts from it instead of being copied, and it is also what llama.cpp requires for
sequences that share a prompt within one batch.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgesrmError
from ..models import resolve_model
from .backend import KV_TYPES, clear_errors, default_gpu_layers, default_threads, lib, recent_errors
from .sampling import SamplingParams, free_chain, make_chain
from .text import StopScanner, Utf8Stream

TextCallback = Callable[["Sequence", str], None]

# Why a sequence ended.
EOS = "eos"  # the model emitted an end-of-generation token
STOP = "stop"  # a stop string appeared (it is cut from the text)
LENGTH = "length"  # the sequence reached its max_tokens
CONTEXT = "context"  # the context window (KV cache) is full
DROPPED = "dropped"  # the caller dropped it


@dataclass(frozen=True)
class EngineConfig:
    """Context settings. ``None`` picks the machine's default (see ``backend``)."""

    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    kv_type: str = "f16"
    max_sequences: int = 16
    n_batch: int = 512

    def __post_init__(self) -> None:
        if self.kv_type not in KV_TYPES:
            raise EdgesrmError(f"unknown KV cache type {self.kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        if self.n_ctx < 16:
            raise EdgesrmError(f"context size must be at least 16 tokens, got {self.n_ctx}")
        if self.max_sequences < 1:
            raise EdgesrmError(f"max_sequences must be at least 1, got {self.max_sequences}")
        if self.n_threads is not None and self.n_threads < 1:
            raise EdgesrmError(f"threads must be at least 1, got {self.n_threads}")


@dataclass
class Sequence:
    """One generated continuation and everything measured about it."""

    index: int
    seq_id: int
    sampling: SamplingParams
    max_tokens: int
    tokens: list[int] = field(default_factory=list)  # sampled and forced, in order
    logprobs: list[float | None] = field(default_factory=list)  # None: forced; NaN: not measured
    text: str = ""
    n_sampled: int = 0
    n_forced: int = 0
    finish_reason: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    parent: int | None = None  # index of the sequence it was forked from
    stops: tuple[str, ...] = ()  # strings that end the sequence (cut from the text)
    pauses: tuple[str, ...] = ()  # strings that pause it (cut, and the KV rewound) until resumed
    paused_on: str | None = None  # the pause string that paused it, while paused
    pause_on_eos: bool = False  # pause (paused_on == EOS) instead of ending at end-of-generation
    # engine state
    _pos: int = 0  # position of the next token to decode
    _pending: list[int] = field(default_factory=list)  # tokens to decode in the next step
    _emitted: int = 0  # characters of text already given to the callback
    _scan_from: int = 0  # stop strings are searched from here (after forced text)
    _chain: object = None
    _logits_index: int | None = None  # batch row of the logits it last sampled from
    _logits_step: int = -1  # ... and the step that row belongs to
    _utf8: Utf8Stream = field(default_factory=Utf8Stream)
    _stops: StopScanner = field(default_factory=lambda: StopScanner(()))
    _on_text: TextCallback | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def paused(self) -> bool:
        return self.paused_on is not None

    @property
    def seconds(self) -> float:
        end = self.finished_at if self.finished else time.perf_counter()
        return end - self.started_at

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability of the sampled tokens: a cheap confidence for voting."""
        sampled = [lp for lp in self.logprobs if lp is not None and not math.isnan(lp)]
        return float(np.mean(sampled)) if sampled else None


class Engine:
    """A loaded model and one context able to decode up to ``max_sequences`` at once."""

    def __init__(self, model: str | Path | None = None, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model_path = resolve_model(model)
        llama = lib()
        self._llama = llama
        self._model = None
        self._ctx = None
        self._batch = None

        model_params = llama.llama_model_default_params()
        gpu = self.config.n_gpu_layers
        clear_errors()
        model_params.n_gpu_layers = default_gpu_layers() if gpu is None else gpu
        self._model = llama.llama_model_load_from_file(str(self.model_path).encode(), model_params)
        if not self._model:
            raise EdgesrmError(f"cannot load {self.model_path}: {recent_errors() or 'llama.cpp gave no reason'}")
        self.vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)

        threads = self.config.n_threads or default_threads()
        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = self.config.n_ctx
        ctx_params.n_batch = self.config.n_batch
        ctx_params.n_ubatch = self.config.n_batch
        ctx_params.n_seq_max = self.config.max_sequences + 1  # +1: the prompt's own sequence
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.kv_unified = True
        ctx_params.type_k = ctx_params.type_v = KV_TYPES[self.config.kv_type]
        if self.config.kv_type not in ("f16", "f32", "bf16"):
            ctx_params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ctx_params.no_perf = True
        self._ctx = llama.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            raise EdgesrmError(f"llama.cpp could not create a context: {recent_errors() or 'unknown error'}")
        # llama.cpp may round the context up and clamp the batch to it: use what it chose.
        self.n_ctx = llama.llama_n_ctx(self._ctx)
        self.n_batch = llama.llama_n_batch(self._ctx)
        self.n_threads = threads
        self._memory = llama.llama_get_memory(self._ctx)
        self._batch = llama.llama_batch_init(self.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._generation: Generation | None = None

    # -- model metadata -------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (``general.architecture``, ``tokenizer.chat_template``...)."""
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._llama.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    @property
    def bos_token(self) -> int:
        return self._llama.llama_vocab_bos(self.vocab)

    @property
    def eos_token(self) -> int:
        return self._llama.llama_vocab_eos(self.vocab)

    @property
    def add_bos(self) -> bool:
        return bool(self._llama.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self._llama.llama_vocab_is_eog(self.vocab, token))

    # -- text <-> tokens ----------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Tokenize ``text``; ``parse_special`` lets ``<|im_end|>``-style markers become their tokens."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buf = (ctypes.c_int32 * capacity)()
            n = self._llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise EdgesrmError("tokenization failed")

    def piece(self, token: int) -> bytes:
        """The bytes of one token as it appears in text (control tokens are empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self._llama.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._llama.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def detokenize_special(self, token: int) -> str:
        """The text of a control token such as BOS or EOS (``""`` when there is none)."""
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def detokenize(self, tokens: Seq[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    # -- generation -----------------------------------------------------------------

    def start(self, prompt: str | Seq[int], *, logprobs: bool = True) -> "Generation":
        """Clear the KV cache and prefill ``prompt`` once; sequences are then added from it."""
        if self._generation is not None:
            self._generation.close()
        tokens = self.tokenize(prompt, add_special=self.add_bos) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise EdgesrmError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise EdgesrmError(
                f"the prompt is {len(tokens):,} tokens, longer than the context of {self.n_ctx:,} tokens "
                f"(raise the context size, e.g. --ctx {_next_pow2(len(tokens) + 512)})"
            )
        self._llama.llama_memory_clear(self._memory, True)
        self._generation = Generation(self, tokens, logprobs)
        return self._generation

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> int:
        """Decode (token, pos, seq_id, wants_logits) items in one ``llama_decode``."""
        batch = self._batch
        for i, (token, pos, seq_id, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(items)
        return self._llama.llama_decode(self._ctx, batch)

    def close(self) -> None:
        """Free the native resources now (they are also freed when the engine is collected)."""
        llama = self._llama
        if self._generation is not None:
            self._generation.close()
            self._generation = None
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


@dataclass
class Timings:
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    decoded_tokens: int = 0  # every token decoded after the prompt, all sequences together


class Generation:
    """Sequences that share one prefilled prompt, advanced together one token per step."""

    def __init__(self, engine: Engine, prompt_tokens: list[int], logprobs: bool) -> None:
        self.engine = engine
        self.prompt_tokens = prompt_tokens
        self.sequences: list[Sequence] = []
        self.timings = Timings(prompt_tokens=len(prompt_tokens))
        self._want_logprobs = logprobs
        self._root = 0  # llama seq id that holds the prompt for the whole generation
        self._free_ids = list(range(engine.config.max_sequences, 0, -1))
        self._closed = False

        start = time.perf_counter()
        n_batch = engine.n_batch
        last = len(prompt_tokens) - 1
        for begin in range(0, len(prompt_tokens), n_batch):
            chunk = prompt_tokens[begin : begin + n_batch]
            items = [(t, begin + j, self._root, begin + j == last) for j, t in enumerate(chunk)]
            self._check(engine._decode(items), "prefill")
        self.timings.prefill_s = time.perf_counter() - start
        # The prompt's last logits stay valid until the next decode: the first step samples
        # every new sequence from them instead of decoding the last prompt token again.
        self._prompt_logits_index = len(prompt_tokens) - 1 - (last // n_batch) * n_batch
        self._prompt_logits_fresh = True

    # -- building the set of sequences ----------------------------------------------

    def add(
        self,
        sampling: SamplingParams = SamplingParams(),
        *,
        max_tokens: int = 512,
        stop: Seq[str] = (),
        pause: Seq[str] = (),
        pause_on_eos: bool = False,
        on_text: TextCallback | None = None,
    ) -> Sequence:
        """A new sequence continuing the prompt (its KV cells are shared, not copied).

        ``stop`` strings end it; ``pause`` strings stop it without ending it: the string is
        cut, the sequence waits until ``force`` or ``resume`` (budget forcing replaces a
        model's ``</think>`` with "Wait" this way). ``pause_on_eos`` does the same for the
        end-of-generation token, so that a strategy can still ask for an answer.
        """
        if max_tokens < 1:
            raise EdgesrmError(f"max_tokens must be at least 1, got {max_tokens}")
        seq = self._new_sequence(sampling, max_tokens, on_text)
        self.configure(seq, stop=stop, pause=pause, pause_on_eos=pause_on_eos)
        n = len(self.prompt_tokens)
        if self._prompt_logits_fresh:
            # Sampled straight from the prefill logits in the next step.
            self.engine._llama.llama_memory_seq_cp(self.engine._memory, self._root, seq.seq_id, 0, n)
            seq._pos = n
        else:
            # Re-decode the last prompt token for this sequence to get its own logits.
            self.engine._llama.llama_memory_seq_cp(self.engine._memory, self._root, seq.seq_id, 0, n - 1)
            seq._pos = n - 1
            seq._pending = [self.prompt_tokens[-1]]
        return seq

    def fork(self, parent: Sequence, sampling: SamplingParams | None = None, *, on_text: TextCallback | None = None) -> Sequence:
        """A copy of ``parent`` as it is now, that goes on sampling on its own from here."""
        if parent.finished:
            raise EdgesrmError(f"cannot fork sequence {parent.index}: it has finished ({parent.finish_reason})")
        seq = self._new_sequence(sampling or parent.sampling, parent.max_tokens, on_text)
        self.configure(seq, stop=parent.stops, pause=parent.pauses, pause_on_eos=parent.pause_on_eos)
        seq.paused_on = parent.paused_on
        self.engine._llama.llama_memory_seq_cp(self.engine._memory, parent.seq_id, seq.seq_id, -1, -1)
        seq.parent = parent.index
        seq.tokens = list(parent.tokens)
        seq.logprobs = list(parent.logprobs)
        seq.text = parent.text
        seq.n_sampled, seq.n_forced = parent.n_sampled, parent.n_forced
        seq._pos, seq._pending = parent._pos, list(parent._pending)
        seq._emitted, seq._scan_from = parent._emitted, parent._scan_from
        seq._utf8.setstate(parent._utf8.getstate())
        return seq

    def force(self, seq: Sequence, text: str) -> list[int]:
        """Append ``text`` to ``seq`` as if the model had written it; it is decoded next step.

        Budget forcing uses this to close a thinking block (``</think>``) or to make the
        model keep thinking ("Wait").
        """
        if seq.finished:
            raise EdgesrmError(f"cannot force text into sequence {seq.index}: it has finished")
        seq.paused_on = None
        tokens = self.engine.tokenize(text, add_special=False, parse_special=True)
        seq._pending.extend(tokens)
        seq.tokens.extend(tokens)
        seq.logprobs.extend([None] * len(tokens))
        seq.n_forced += len(tokens)
        self._append_text(seq, b"".join(self.engine.piece(t) for t in tokens), forced=True)
        return tokens

    def resume(self, seq: Sequence) -> None:
        """Let a paused sequence go on generating."""
        seq.paused_on = None

    def configure(
        self, seq: Sequence, *, stop: Seq[str] | None = None, pause: Seq[str] | None = None,
        max_tokens: int | None = None, pause_on_eos: bool | None = None,
    ) -> None:
        """Change a live sequence's stop strings, pause strings, token limit or EOS pausing."""
        if stop is not None:
            seq.stops = tuple(s for s in stop if s)
        if pause is not None:
            seq.pauses = tuple(s for s in pause if s)
        if stop is not None or pause is not None:
            seq._stops = StopScanner(seq.stops + seq.pauses)
        if max_tokens is not None:
            seq.max_tokens = max_tokens
        if pause_on_eos is not None:
            seq.pause_on_eos = pause_on_eos

    def drop(self, seq: Sequence, reason: str = DROPPED) -> None:
        """End ``seq`` now (``reason`` becomes its finish reason) and free its KV cells."""
        if not seq.finished:
            self._finish(seq, reason)

    def last_logits(self, seq: Sequence) -> np.ndarray:
        """A copy of the logits ``seq`` sampled its latest token from.

        Valid until the next step; strategies use it for confidence or entropy, tests to
        compare distributions across batch shapes.
        """
        if seq._logits_step != self.timings.steps or seq._logits_index is None:
            raise EdgesrmError(f"sequence {seq.index} was not sampled in the latest step")
        llama = self.engine._llama
        ptr = llama.llama_get_logits_ith(self.engine._ctx, seq._logits_index)
        return np.ctypeslib.as_array(ptr, shape=(self.engine.n_vocab,)).copy()

    @property
    def active(self) -> list[Sequence]:
        return [s for s in self.sequences if not s.finished and not s.paused]

    # -- decoding -------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """Advance every live sequence by one token in one ``llama_decode``.

        Returns the sequences that finished during this step.
        """
        if not self.active:
            return []
        engine = self.engine
        finished_before = {s.index for s in self.sequences if s.finished}
        start = time.perf_counter()
        if self._prompt_logits_fresh:
            # Sequences added before the first step sample their first token from the
            # prefill's logits: one prompt decode serves them all.
            self._prompt_logits_fresh = False
            self._sample([(s, self._prompt_logits_index) for s in self.active if not s._pending])

        items: list[tuple[int, int, int, bool]] = []  # (token, pos, seq_id, wants logits)
        outputs: list[tuple[Sequence, int]] = []  # (sequence, batch index of its logits)
        capacity = engine.n_batch
        active = self.active
        for seq in active:
            room = capacity - len(items)
            if room <= 0:
                break
            take = seq._pending[:room]
            done = len(take) == len(seq._pending)
            for j, token in enumerate(take):
                items.append((token, seq._pos + j, seq.seq_id, done and j == len(take) - 1))
            if done:
                outputs.append((seq, len(items) - 1))

        if items:
            status = engine._decode(items)
            if status == 1:  # no room left in the KV cache for this batch
                for seq in active:
                    self._finish(seq, CONTEXT)
            else:
                self._check(status, "decode")
                decoded: dict[int, int] = {}
                for _, _, seq_id, _ in items:
                    decoded[seq_id] = decoded.get(seq_id, 0) + 1
                for seq in active:
                    n = decoded.get(seq.seq_id, 0)
                    seq._pos += n
                    del seq._pending[:n]
                self._sample(outputs)
        self.timings.decode_s += time.perf_counter() - start
        self.timings.steps += 1
        self.timings.decoded_tokens += len(items)
        return [s for s in self.sequences if s.finished and s.index not in finished_before]

    def run(self) -> list[Sequence]:
        """Step until every sequence has finished; returns all sequences."""
        while self.active:
            self.step()
        return self.sequences

    def close(self) -> None:
        """Free sampler chains; the engine's KV cache is cleared by the next ``start``."""
        if self._closed:
            return
        self._closed = True
        for seq in self.sequences:
            if seq._chain is not None:
                free_chain(seq._chain)
                seq._chain = None

    # -- internals ------------------------------------------------------------------

    def _new_sequence(self, sampling, max_tokens, on_text) -> Sequence:
        if self._closed:
            raise EdgesrmError("this generation is closed: start a new one")
        if not self._free_ids:
            raise EdgesrmError(
                f"at most {self.engine.config.max_sequences} sequences can run at once "
                "(raise max_sequences when loading the engine)"
            )
        seq = Sequence(index=len(self.sequences), seq_id=self._free_ids.pop(), sampling=sampling, max_tokens=max_tokens)
        seq._chain = make_chain(sampling)
        seq._on_text = on_text
        seq.started_at = time.perf_counter()
        self.sequences.append(seq)
        return seq

    def _sample(self, outputs: list[tuple[Sequence, int]]) -> None:
        if not outputs:
            return
        llama, ctx = self.engine._llama, self.engine._ctx
        indices = [i for _, i in outputs]
        chosen = [llama.llama_sampler_sample(seq._chain, ctx, i) for seq, i in outputs]
        # None marks a forced token (rewinding counts on it): unmeasured sampled ones are NaN.
        logprobs: list[float | None] = [math.nan] * len(outputs)
        if self._want_logprobs:
            logprobs = self._logprobs(indices, chosen)
        for (seq, index), token, logprob in zip(outputs, chosen, logprobs):
            seq._logits_index, seq._logits_step = index, self.timings.steps + 1
            self._accept(seq, token, logprob)

    def _logprobs(self, indices: list[int], chosen: list[int]) -> list[float | None]:
        """log p(chosen token) under the model's own distribution (before temperature)."""
        llama, ctx, n_vocab = self.engine._llama, self.engine._ctx, self.engine.n_vocab
        result: list[float | None] = []
        for i, token in zip(indices, chosen):
            row = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
            top = row.max()
            result.append(float(row[token] - top - np.log(np.exp(row - top).sum())))
        return result

    def _accept(self, seq: Sequence, token: int, logprob: float | None) -> None:
        engine = self.engine
        if engine.is_eog(token):
            if seq.pause_on_eos:
                self._rewind_to(seq, len(seq.text))  # keeps every token; the last is decoded again
                seq.paused_on = EOS
            else:
                self._finish(seq, EOS)
            return
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        seq.n_sampled += 1
        seq._pending.append(token)
        self._append_text(seq, engine.piece(token), forced=False)
        if seq.finished:
            return
        if seq.n_sampled >= seq.max_tokens:
            self._finish(seq, LENGTH)
        elif seq._pos + len(seq._pending) >= engine.n_ctx:
            self._finish(seq, CONTEXT)

    def _append_text(self, seq: Sequence, data: bytes, *, forced: bool) -> None:
        before = len(seq.text)
        seq.text += seq._utf8.push(data)
        if forced:
            seq._scan_from = len(seq.text)
            self._emit(seq, len(seq.text))
            return
        hit, string = seq._stops.find(seq.text, max(before, seq._scan_from))
        if hit < 0:
            self._emit(seq, seq._stops.safe_end(seq.text))
        elif string in seq.pauses:
            self._rewind_to(seq, hit)
            seq.paused_on = string
        else:
            seq.text = seq.text[:hit]
            self._finish(seq, STOP)

    def _rewind_to(self, seq: Sequence, chars: int) -> None:
        """Drop the newest tokens until the text is at most ``chars`` long; rewind the KV.

        The last kept token goes back to pending: its logits were overwritten by later
        decodes, so it is decoded once more before the sequence samples again.
        """
        engine = self.engine
        keep = len(seq.tokens)
        while keep > 0 and len(engine.detokenize(seq.tokens[:keep])) > chars:
            keep -= 1
        removed = seq.logprobs[keep:]
        seq.n_forced -= sum(lp is None for lp in removed)
        seq.n_sampled -= len(removed) - sum(lp is None for lp in removed)
        del seq.tokens[keep:], seq.logprobs[keep:]
        seq._utf8 = Utf8Stream()
        seq.text = seq._utf8.push(b"".join(engine.piece(t) for t in seq.tokens))
        seq._emitted = min(seq._emitted, len(seq.text))
        seq._scan_from = min(seq._scan_from, len(seq.text))
        all_tokens = self.prompt_tokens + seq.tokens
        seq._pos = len(all_tokens) - 1
        seq._pending = [all_tokens[-1]]
        engine._llama.llama_memory_seq_rm(engine._memory, seq.seq_id, seq._pos, -1)

    def _emit(self, seq: Sequence, end: int) -> None:
        if end > seq._emitted:
            delta = seq.text[seq._emitted : end]
            seq._emitted = end
            if seq._on_text is not None:
                seq._on_text(seq, delta)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        seq.finished_at = time.perf_counter()
        if reason != STOP:
            seq.text += seq._utf8.flush()
        self._emit(seq, len(seq.text))
        seq._pending = []
        engine = self.engine
        engine._llama.llama_memory_seq_rm(engine._memory, seq.seq_id, -1, -1)
        if seq._chain is not None:
            free_chain(seq._chain)
            seq._chain = None
        self._free_ids.append(seq.seq_id)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            detail = recent_errors()
            if status == 1:
                raise EdgesrmError(f"{what}: the context is full (raise the context size); {detail}".rstrip("; "))
            raise EdgesrmError(f"llama_decode failed during {what} (status {status}); {detail}".rstrip("; "))


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()
