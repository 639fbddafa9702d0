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
import json
import math
import numbers
import time
import warnings
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import INT32_MAX, MAX_CTX, MAX_SEQUENCES, MAX_THREADS, MIN_CTX, check_int, show
from ..errors import EdgesrmError, EdgesrmWarning
from ..models import model_store, resolve_model, write_cache_file
from .backend import KV_TYPES, backend_report, default_threads, lib, load_model, recent_errors, token_piece, tokenize
from .prefix_cache import PrefixCache
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
    """Context settings. ``None`` picks the machine's default (see ``backend``).

    Numbers are checked (``edgesrm.checks``): n_ctx 16 to 262,144, n_threads 1 to 512,
    n_gpu_layers -1 (all) to 2**31 - 1, max_sequences 1 to 255, n_batch 1 to 262,144.
    """

    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    kv_type: str = "f16"
    max_sequences: int = 16  # sequences decoded at once (all generations, all requests together)
    n_batch: int = 512
    # Keep finished prompts' KV cells (and a single path's reply) and prefill only what a new prompt
    # adds after the longest cached prefix (llama-server's cache_prompt, across every cached prompt):
    # a conversation's next turn, a system prompt shared by many requests (see prefix_cache).
    cache_prompt: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.cache_prompt, bool):
            raise EdgesrmError(f"cache_prompt must be True or False, got {self.cache_prompt!r}")
        if not isinstance(self.kv_type, str) or self.kv_type not in KV_TYPES:
            raise EdgesrmError(f"unknown KV cache type {self.kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        set_field = object.__setattr__  # checked, and made plain ints, before they reach llama.cpp
        set_field(self, "n_ctx", check_int("n_ctx (context size)", self.n_ctx, MIN_CTX, MAX_CTX))
        set_field(self, "n_threads", check_int("n_threads", self.n_threads, 1, MAX_THREADS, optional=True))
        # -1 offloads every layer, as in llama.cpp; so does any number above the model's layers.
        set_field(self, "n_gpu_layers", check_int("n_gpu_layers", self.n_gpu_layers, -1, INT32_MAX, optional=True))
        set_field(self, "max_sequences", check_int("max_sequences", self.max_sequences, 1, MAX_SEQUENCES))
        set_field(self, "n_batch", check_int("n_batch", self.n_batch, 1, MAX_CTX))
        # llama.cpp clamps the batch to the context and needs one output row per sequence
        # (the prompt's included) in a batch: fewer aborts the process (GGML_ASSERT).
        if min(self.n_ctx, self.n_batch) < self.max_sequences + 1:
            raise EdgesrmError(
                f"a context (and batch) of {min(self.n_ctx, self.n_batch):,} tokens cannot hold {self.max_sequences} "
                f"parallel sequences: use at least {self.max_sequences + 1} tokens, or fewer sequences"
            )


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
    _logits_decode: int = -1  # ... and the engine's llama_decode count then (later ones overwrite it)
    _utf8: Utf8Stream = field(default_factory=Utf8Stream)
    _stops: StopScanner = field(default_factory=lambda: StopScanner(()))
    _on_text: TextCallback | None = None
    _generation: object = field(default=None, repr=False, compare=False)  # the Generation it belongs to

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


def _vocab_cache(model_path: Path) -> Path:
    """Where what is learnt once about a model file's vocabulary is kept: a file named by the
    model file's identity (path, size, mtime) and the llama.cpp binding's version (which decides
    the token attributes), in edgesrm's cache directory."""
    import hashlib

    import llama_cpp

    stat = model_path.stat()
    key = f"{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{llama_cpp.__version__}"
    return model_store().parent / "vocab" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


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

        gpu = self.config.n_gpu_layers
        self._model = load_model(self.model_path, gpu)
        if gpu and not llama.llama_supports_gpu_offload():  # asked for, not the default
            warnings.warn(EdgesrmWarning(
                f"--gpu-layers {gpu} asked but {backend_report().no_offload_reason}: every layer runs on the CPU"
            ), stacklevel=2)
        self.vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)

        threads = self.config.n_threads or default_threads()
        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = self.config.n_ctx
        ctx_params.n_batch = self.config.n_batch
        ctx_params.n_ubatch = self.config.n_batch
        # Sequence ids: the paths, one per live generation for its prompt, and the rest for the
        # prefix cache (llama.cpp allows 256; each id reserves one row of logits up front).
        self.n_seq_max = min(MAX_SEQUENCES + 1, 2 * self.config.max_sequences + 2)
        ctx_params.n_seq_max = self.n_seq_max
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
        if 0 < self.n_ctx_train < self.config.n_ctx:
            warnings.warn(EdgesrmWarning(
                f"a context of {self.config.n_ctx:,} tokens is longer than the {self.n_ctx_train:,} "
                f"{self.model_path.name} was trained for: expect worse output past {self.n_ctx_train:,} tokens"
            ), stacklevel=2)
        self.n_batch = llama.llama_n_batch(self._ctx)
        self.n_threads = threads
        self._memory = llama.llama_get_memory(self._ctx)
        # A recurrent or hybrid model's state cannot be cut at a position, so a prefix of it cannot
        # be copied: such models prefill every prompt in full.
        self.cache_prompt = self.config.cache_prompt and not (
            llama.llama_model_is_recurrent(self._model) or llama.llama_model_is_hybrid(self._model))
        self._batch = llama.llama_batch_init(self.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._control_tokens: tuple[str, ...] | None = None
        self._generation: Generation | None = None  # the latest one started without a scheduler
        self._seq_ids = list(range(self.n_seq_max - 1, -1, -1))  # free llama.cpp sequence ids
        self.prefix_cache = PrefixCache()
        self._scheduler = None  # set by edgesrm.engine.scheduler.Scheduler while it runs

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
        return tokenize(self.vocab, text, add_special=add_special, parse_special=parse_special, llama=self._llama)

    def tokenize_prompt(self, prompt: str | Seq[tuple[str, bool]]) -> list[int]:
        """Token ids of a prompt, starting with exactly one BOS when the model adds one.

        ``prompt`` is text (control-token strings in it are parsed) or the pieces of a
        ``ChatPrompt``: ``(text, parse_special)`` pairs, where the pieces with
        ``parse_special=False`` are text typed by a user and never become control tokens.
        A template that writes ``{{ bos_token }}`` itself and a GGUF that says
        ``add_bos_token`` give one BOS, not two (as llama.cpp's server does).
        """
        pieces = [(prompt, True)] if isinstance(prompt, str) else list(prompt)
        ids: list[int] = []
        newline = self.tokenize("\n", parse_special=False) if len(pieces) > 1 else []
        for i, (text, special) in enumerate(pieces):
            if not text:
                continue
            if i == 0:
                ids += self.tokenize(text, parse_special=special)
                continue
            # A piece after the first continues the text: tokenized after a newline, whose
            # tokens are then cut, so that SentencePiece adds no space prefix in the middle.
            with_newline = self.tokenize("\n" + text, parse_special=special)
            ids += (with_newline[len(newline):] if with_newline[: len(newline)] == newline
                    else self.tokenize(text, parse_special=special))
        bos = self.bos_token
        if self.add_bos and bos >= 0 and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    @property
    def control_tokens(self) -> tuple[str, ...]:
        """Texts of the vocabulary's control tokens (``<|im_start|>``, BOS, EOS...), which a
        chat template writes and a user's message must not (see ``ChatFormat``).

        Asking llama.cpp about every token of a 150k vocabulary takes 0.15 s, a tenth of a
        start-up; the answer is kept in a small file per model file (``_vocab_cache``).
        """
        if self._control_tokens is None:
            cache = _vocab_cache(self.model_path)
            try:
                self._control_tokens = tuple(json.loads(cache.read_text(encoding="utf-8"))["control_tokens"])
            except (OSError, ValueError, KeyError, TypeError):
                llama, vocab = self._llama, self.vocab
                control = llama.LLAMA_TOKEN_ATTR_CONTROL
                texts = []
                for token in range(self.n_vocab):
                    if llama.llama_vocab_get_attr(vocab, token) & control:
                        text = llama.llama_vocab_get_text(vocab, token)
                        if text:
                            texts.append(text.decode("utf-8", "replace"))
                self._control_tokens = tuple(texts)
                write_cache_file(cache, json.dumps({"control_tokens": texts}))
        return self._control_tokens

    def piece(self, token: int) -> bytes:
        """The bytes of one token as it appears in text (control tokens are empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            self._check_token(token)
            cached = self._pieces[token] = token_piece(self.vocab, token, llama=self._llama)
        return cached

    def detokenize_special(self, token: int) -> str:
        """The text of a control token such as BOS or EOS (``""`` when there is none)."""
        if isinstance(token, int) and token < 0:  # llama.cpp's "no such token"
            return ""
        self._check_token(token)
        buf = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def _check_token(self, token: object) -> None:
        """llama.cpp aborts the process on a token id outside the vocabulary: refuse it here."""
        if not isinstance(token, numbers.Integral) or isinstance(token, bool) or not 0 <= token < self.n_vocab:
            raise EdgesrmError(f"token ids are integers from 0 to {self.n_vocab - 1:,}, got {show(token)}")

    def detokenize(self, tokens: Seq[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    # -- generation -----------------------------------------------------------------

    def start(self, prompt: str | Seq[int], *, logprobs: bool = True) -> "Generation":
        """Clear the KV cache and prefill ``prompt`` once; sequences are then added from it.

        ``prompt`` is text, a ``ChatPrompt`` (see ``tokenize_prompt``) or token ids (used as
        they are).
        """
        if self._closed:
            raise EdgesrmError("the engine is closed: load the model again")
        if self._scheduler is None:
            if self._generation is not None:
                self._generation.close()  # one generation at a time, unless a scheduler shares the steps
            if not self.prefix_cache.entries and len(self._seq_ids) == self.n_seq_max:
                # Nothing is held: an empty cache also starts placing cells from its first one again,
                # so the same prompt and seed replay the same text (cell placement changes the numbers).
                self._llama.llama_memory_clear(self._memory, True)
        if isinstance(prompt, str):
            tokens = self.tokenize_prompt(prompt)
        elif hasattr(prompt, "pieces"):  # a ChatPrompt
            tokens = self.tokenize_prompt(prompt.pieces)
        else:
            tokens = list(prompt)
        if not tokens:
            raise EdgesrmError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            need = _next_pow2(len(tokens) + 512)
            trained = f"; the model was trained for {self.n_ctx_train:,}" if need > self.n_ctx_train > 0 else ""
            why = f"the prompt is {len(tokens):,} tokens, longer than the context of {self.n_ctx:,} tokens"
            raise EdgesrmError(f"{why} (raise the context size, e.g. n_ctx={need}{trained})",
                               cli=f"{why} (raise the context size, e.g. --ctx {need}{trained})")
        generation = Generation(self, tokens, logprobs)
        if self._scheduler is None:
            self._generation = generation
        return generation

    @property
    def max_parallel(self) -> int:
        """Sequences the caller may decode at once: ``max_sequences``, or under a scheduler the
        calling request's share."""
        if self._scheduler is not None:
            return self._scheduler.slots()
        return self.config.max_sequences

    def _take_seq_id(self) -> int:
        """A free llama.cpp sequence id, forgetting cached prefixes if none is free."""
        while not self._seq_ids:
            if not self._evict():
                raise EdgesrmError("no free sequence id (too many generations at once)")
        return self._seq_ids.pop()

    def _free_seq(self, seq_id: int) -> None:
        """Free a sequence's KV cells and give its id back."""
        self._llama.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        self._seq_ids.append(seq_id)

    def _evict(self) -> bool:
        """Forget the least recently used cached prefix; whether there was one."""
        seq_id = self.prefix_cache.pop_lru()
        if seq_id is None:
            return False
        self._free_seq(seq_id)
        return True

    # Class defaults, so that they exist however far __init__ got.
    _closed = False
    _n_decodes = 0  # llama_decode calls so far: logits read after a later one are stale

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> int:
        """Decode (token, pos, seq_id, wants_logits) items in one ``llama_decode``; when the KV
        cache is full, cached prefixes are forgotten (least recently used first) and it is tried
        again. Returns llama_decode's status (1: no room even then)."""
        while True:
            status = self._decode_once(items)
            if status != 1 or not self._evict():
                return status

    def _decode_once(self, items: list[tuple[int, int, int, bool]]) -> int:
        self._n_decodes += 1
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
        """Free the native resources now (they are also freed when the engine is collected).

        Closing twice is harmless. Any later use of the engine, or of a generation it
        started, raises ``EdgesrmError``: llama.cpp is replaced by a stand-in that refuses
        every call, so nothing can reach the freed model or context.
        """
        if self._closed:
            return
        self._closed = True
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None:
            scheduler.close()
        generation = getattr(self, "_generation", None)
        if generation is not None:
            generation.close()
            self._generation = None
        llama = getattr(self, "_llama", None)
        if llama is None:  # __init__ failed before loading anything
            return
        if getattr(self, "_batch", None) is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
            self._model = None
        self._pieces = {}
        self._llama = _CLOSED_LIBRARY

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _ClosedLibrary:
    """Stands in for llama.cpp in a closed engine: every call is an ``EdgesrmError``."""

    def __getattr__(self, name: str):
        raise EdgesrmError("the engine is closed: load the model again")


_CLOSED_LIBRARY = _ClosedLibrary()


@dataclass
class Timings:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's tokens, those whose KV cells were kept from the last prompt
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    decoded_tokens: int = 0  # every token decoded after the prompt, all sequences together
    widths: dict[int, int] = field(default_factory=dict)  # decode steps by how many of its sequences each decoded (first seen first)


class Generation:
    """Sequences that share one prefilled prompt, advanced together one token per step."""

    def __init__(self, engine: Engine, prompt_tokens: list[int], logprobs: bool) -> None:
        n_vocab = engine.n_vocab
        for token in prompt_tokens:  # llama.cpp would read out of bounds for a bad token id
            if not (type(token) is int or (isinstance(token, numbers.Integral) and not isinstance(token, bool))) \
                    or not 0 <= token < n_vocab:
                raise EdgesrmError(f"prompt tokens must be token ids from 0 to {n_vocab - 1:,}, got {show(token)}")
        prompt_tokens = [int(t) for t in prompt_tokens]
        self.engine = engine
        self.prompt_tokens = prompt_tokens
        self.sequences: list[Sequence] = []
        self.timings = Timings(prompt_tokens=len(prompt_tokens))
        self._want_logprobs = logprobs
        self._closed = False
        self._stepping = False
        self._max_paths = engine.max_parallel  # sequences it may decode at once
        self._held: set[int] = set()  # llama.cpp sequence ids of its sequences that hold KV cells
        self._kept: Sequence | None = None  # its single finished path, whose cells stay for the prefix cache
        self._prompt_logits_fresh = False
        self._prompt_logits_index = 0
        self._prompt_logits_decode = -1
        self._root = engine._take_seq_id()  # holds the prompt for the whole generation
        self._prefilled = 0  # prompt tokens whose KV cells are in place
        try:
            self._prefilled = self.timings.cached_tokens = self._reuse_prefix()
            self._prefill_started = time.perf_counter()
            if engine._scheduler is not None:
                engine._scheduler.prefill(self)  # in the shared steps, in chunks
            else:
                self._prefill_alone()
        except BaseException:
            self.close()
            raise

    def _reuse_prefix(self) -> int:
        """Copy the longest cached prefix of the prompt (all but its last token, whose logits
        the first step needs) into the prompt's sequence; how many tokens that saves."""
        engine = self.engine
        if not engine.cache_prompt:
            return 0
        entry, n = engine.prefix_cache.longest(self.prompt_tokens[:-1])
        if entry is None or n == 0:
            engine.prefix_cache.misses += 1
            return 0
        engine._llama.llama_memory_seq_cp(engine._memory, entry.seq_id, self._root, 0, n)
        engine.prefix_cache.use(entry, n)
        return n

    def _prefill_alone(self) -> None:
        engine, tokens = self.engine, self.prompt_tokens
        last = len(tokens) - 1
        for begin in range(self._prefilled, last, engine.n_batch):  # a cached prefix's cells are there already
            chunk = tokens[begin : min(begin + engine.n_batch, last)]
            self._check(engine._decode([(t, begin + j, self._root, False) for j, t in enumerate(chunk)]), "prefill")
        # The last token alone, whether the rest was cached or not: its logits are then computed the
        # same way every time (llama.cpp's are not batch-invariant), so a seed replays the same text
        # with or without a cached prefix.
        self._check(engine._decode([(tokens[last], last, self._root, True)]), "prefill")
        self._prefill_decoded(len(tokens) - self._prefilled, 0)

    @property
    def prefilled(self) -> bool:
        return self._prefilled == len(self.prompt_tokens)

    def _prefill_items(self, room: int) -> list[tuple[int, int, int, bool]]:
        """The next ``room`` prompt tokens to decode (a scheduler's chunked prefill)."""
        last = len(self.prompt_tokens) - 1
        return [(self.prompt_tokens[p], p, self._root, p == last)
                for p in range(self._prefilled, min(len(self.prompt_tokens), self._prefilled + room))]

    def _prefill_decoded(self, n: int, last_row: int) -> None:
        """``n`` more prompt tokens were decoded; ``last_row``: the batch row of the last one's logits."""
        self._prefilled += n
        if self.prefilled:
            self.timings.prefill_s = time.perf_counter() - self._prefill_started
            # The prompt's last logits stay valid until the next decode: the first step samples
            # every new sequence from them instead of decoding the last prompt token again.
            self._prompt_logits_index = last_row
            self._prompt_logits_decode = self.engine._n_decodes
            self._prompt_logits_fresh = True

    def _logits_fresh(self) -> bool:
        return self._prompt_logits_fresh and self._prompt_logits_decode == self.engine._n_decodes

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
        if self._closed:
            raise EdgesrmError(CLOSED_GENERATION)
        max_tokens = check_int("max_tokens", max_tokens, 1, INT32_MAX)
        stops, pauses = _strings("stop", stop), _strings("pause", pause)  # checked before anything changes
        seq = self._new_sequence(sampling, max_tokens, on_text)
        self.configure(seq, stop=stops, pause=pauses, pause_on_eos=pause_on_eos)
        n = len(self.prompt_tokens)
        if self._logits_fresh():
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
        self._own(parent)
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
        self._own(seq)
        if seq.finished:
            raise EdgesrmError(f"cannot force text into sequence {seq.index}: it has finished")
        if not isinstance(text, str):
            raise EdgesrmError(f"force takes text (a str), got {type(text).__name__}")
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
        self._own(seq)
        seq.paused_on = None

    def configure(
        self, seq: Sequence, *, stop: Seq[str] | None = None, pause: Seq[str] | None = None,
        max_tokens: int | None = None, pause_on_eos: bool | None = None,
    ) -> None:
        """Change a live sequence's stop strings, pause strings, token limit or EOS pausing."""
        self._own(seq)
        stop = None if stop is None else _strings("stop", stop)
        pause = None if pause is None else _strings("pause", pause)
        max_tokens = check_int("max_tokens", max_tokens, 1, INT32_MAX, optional=True)
        if stop is not None:
            seq.stops = stop
        if pause is not None:
            seq.pauses = pause
        if stop is not None or pause is not None:
            seq._stops = StopScanner(seq.stops + seq.pauses)
        if max_tokens is not None:
            seq.max_tokens = max_tokens
        if pause_on_eos is not None:
            seq.pause_on_eos = pause_on_eos

    def drop(self, seq: Sequence, reason: str = DROPPED) -> None:
        """End ``seq`` now (``reason`` becomes its finish reason) and free its KV cells."""
        self._own(seq)
        if not isinstance(reason, str) or not reason:
            raise EdgesrmError(f"a finish reason must be a non-empty str, got {show(reason)}")
        if not seq.finished:
            self._finish(seq, reason)

    def last_logits(self, seq: Sequence) -> np.ndarray:
        """A copy of the logits ``seq`` sampled its latest token from.

        Valid until the next step; strategies use it for confidence or entropy, tests to
        compare distributions across batch shapes.
        """
        self._own(seq)
        engine = self.engine
        if (seq._logits_step != self.timings.steps or seq._logits_index is None
                or seq._logits_decode != engine._n_decodes):
            raise EdgesrmError(f"sequence {seq.index} was not sampled in the latest step: its logits are gone")
        ptr = engine._llama.llama_get_logits_ith(engine._ctx, seq._logits_index)
        if not ptr:
            raise EdgesrmError(f"llama.cpp has no logits for sequence {seq.index}")
        return np.ctypeslib.as_array(ptr, shape=(engine.n_vocab,)).copy()

    @property
    def active(self) -> list[Sequence]:
        return [s for s in self.sequences if not s.finished and not s.paused]

    # -- decoding -------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """Advance every live sequence by one token in one ``llama_decode``.

        Returns the sequences that finished during this step. Text callbacks may add,
        fork, force, drop or close, but not step (or run) the generation they belong to.
        """
        if self._closed:
            raise EdgesrmError(CLOSED_GENERATION)
        if self._stepping:
            raise EdgesrmError("a generation cannot be stepped from its own text callback")
        if not self.active:
            return []
        self._stepping = True
        try:
            return self._step()
        finally:
            self._stepping = False

    def _step(self) -> list[Sequence]:
        engine = self.engine
        finished_before = {s.index for s in self.sequences if s.finished}
        if engine._scheduler is not None:  # one shared llama_decode with every other live generation
            engine._scheduler.step(self)
            return [s for s in self.sequences if s.finished and s.index not in finished_before]
        start = time.perf_counter()
        self._sample_prompt_logits()
        if self._closed:  # by a text callback
            raise EdgesrmError(CLOSED_GENERATION)
        items, outputs, active = self._collect(engine.n_batch)
        if items:
            self._apply(engine._decode(items), items, outputs, 0, active)
        self._count_step(time.perf_counter() - start, len(items), len(active))
        return [s for s in self.sequences if s.finished and s.index not in finished_before]

    def _sample_prompt_logits(self) -> None:
        """Sequences added since the prefill sample their first token from its logits: one prompt
        decode serves them all. If another decode came first (a scheduler's), they decode the
        last prompt token again instead."""
        if not self._prompt_logits_fresh:
            return
        fresh = self._logits_fresh()
        self._prompt_logits_fresh = False
        waiting = [s for s in self.active if not s._pending]
        if fresh:
            self._sample([(s, self._prompt_logits_index) for s in waiting])
            return
        n = len(self.prompt_tokens)
        for seq in waiting:
            if not seq.tokens and seq._pos == n:
                self.engine._llama.llama_memory_seq_rm(self.engine._memory, seq.seq_id, n - 1, -1)
                seq._pos, seq._pending = n - 1, [self.prompt_tokens[-1]]

    def _collect(self, room: int) -> tuple[list[tuple[int, int, int, bool]], list[tuple[Sequence, int]], list[Sequence]]:
        """This step's batch items (at most ``room``), the sequences that sample and the rows of
        their logits (within the items), and the sequences that were active."""
        items: list[tuple[int, int, int, bool]] = []  # (token, pos, seq_id, wants logits)
        outputs: list[tuple[Sequence, int]] = []  # (sequence, batch index of its logits)
        active = self.active
        for seq in active:
            left = room - len(items)
            if left <= 0:
                break
            if not seq._pending:  # its sampled token was lost to an exception in a text callback
                self._rewind_to(seq, len(seq.text))  # decode its last token again
            take = seq._pending[:left]
            done = len(take) == len(seq._pending)
            for j, token in enumerate(take):
                items.append((token, seq._pos + j, seq.seq_id, done and j == len(take) - 1))
            if done:
                outputs.append((seq, len(items) - 1))
        return items, outputs, active

    def _apply(self, status: int, items: list[tuple[int, int, int, bool]], outputs: list[tuple[Sequence, int]],
               offset: int, active: list[Sequence]) -> None:
        """After the decode of ``items`` (at batch row ``offset``): advance and sample."""
        if status == 1:  # no room left in the KV cache for this batch
            for seq in active:
                if not seq.finished:  # (a text callback may have dropped it)
                    self._finish(seq, CONTEXT)
            return
        self._check(status, "decode")
        decoded: dict[int, int] = {}
        for _, _, seq_id, _ in items:
            decoded[seq_id] = decoded.get(seq_id, 0) + 1
        for seq in active:
            n = decoded.get(seq.seq_id, 0)
            seq._pos += n
            del seq._pending[:n]
        self._sample([(seq, offset + i) for seq, i in outputs])

    def _count_step(self, seconds: float, tokens: int, width: int) -> None:
        timings = self.timings
        timings.decode_s += seconds
        timings.steps += 1
        timings.decoded_tokens += tokens
        if width:  # (a step can only sample, e.g. the prompt's own logits: no sequence decoded)
            timings.widths[width] = timings.widths.get(width, 0) + 1

    def run(self) -> list[Sequence]:
        """Step until every sequence has finished; returns all sequences."""
        if self._closed:
            raise EdgesrmError(CLOSED_GENERATION)
        while self.active:
            self.step()
        return self.sequences

    def close(self) -> None:
        """Free its sequences' KV cells and sampler chains. With ``cache_prompt``, the prompt's
        cells (and a single path's reply) stay in the engine's prefix cache."""
        if self._closed:
            return
        self._closed = True
        for seq in self.sequences:
            if seq._chain is not None:
                free_chain(seq._chain)
                seq._chain = None
        engine = self.engine
        if engine._closed or getattr(self, "_root", None) is None:
            return
        keep_id, keep_tokens = None, None
        if engine.cache_prompt and self.prefilled:
            kept = self._kept
            if kept is not None and kept._pos > len(self.prompt_tokens):
                keep_id, keep_tokens = kept.seq_id, (self.prompt_tokens + kept.tokens)[: kept._pos]
            else:
                keep_id, keep_tokens = self._root, self.prompt_tokens
        for seq_id in [self._root, *self._held]:
            if seq_id != keep_id:
                engine._free_seq(seq_id)
        self._held.clear()
        if keep_id is not None:
            for redundant in engine.prefix_cache.put(keep_id, keep_tokens):
                engine._free_seq(redundant)
        if engine._generation is self:
            engine._generation = None

    # -- internals ------------------------------------------------------------------

    def _own(self, seq: object) -> None:
        """Refuse a closed generation, and a sequence that is not one of its own."""
        if self._closed:
            raise EdgesrmError(CLOSED_GENERATION)
        if not isinstance(seq, Sequence):
            raise EdgesrmError(f"expected a Sequence, got {type(seq).__name__}")
        if seq._generation is not self:
            raise EdgesrmError(f"sequence {seq.index} belongs to another generation")

    def _new_sequence(self, sampling, max_tokens, on_text) -> Sequence:
        if self._closed:
            raise EdgesrmError(CLOSED_GENERATION)
        if not isinstance(sampling, SamplingParams):
            raise EdgesrmError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if on_text is not None and not callable(on_text):
            raise EdgesrmError(f"on_text must be callable, got {type(on_text).__name__}")
        if self._kept is not None:  # a second path: the first one's reply is not kept after all
            self._held.discard(self._kept.seq_id)
            self.engine._free_seq(self._kept.seq_id)
            self._kept = None
        if len(self._held) >= self._max_paths:
            raise EdgesrmError(
                f"at most {self._max_paths} sequences can run at once "
                "(raise max_sequences when loading the engine)"
            )
        seq_id = self.engine._take_seq_id()
        self._held.add(seq_id)
        seq = Sequence(index=len(self.sequences), seq_id=seq_id, sampling=sampling, max_tokens=max_tokens)
        seq._chain = make_chain(sampling)
        seq._on_text = on_text
        seq._generation = self
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
            seq._logits_decode = self.engine._n_decodes
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
        if seq.finish_reason is not None or self._closed:  # by a text callback of an earlier sequence
            return
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
        seq._pending = []
        if seq._chain is not None:
            free_chain(seq._chain)
            seq._chain = None
        if not self._closed:  # (a closed generation has freed its cells)
            if self.engine.cache_prompt and len(self.sequences) == 1:
                self._kept = seq  # its reply's cells stay until close, for the prefix cache
            else:
                self._held.discard(seq.seq_id)
                self.engine._free_seq(seq.seq_id)
        self._emit(seq, len(seq.text))  # last: a text callback may call anything

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            detail = recent_errors()
            if status == 1:
                raise EdgesrmError(f"{what}: the context is full (raise the context size); {detail}".rstrip("; "))
            raise EdgesrmError(f"llama_decode failed during {what} (status {status}); {detail}".rstrip("; "))


CLOSED_GENERATION = "this generation is closed (the engine started another one, or was closed): start a new one"


def _strings(name: str, values: object) -> tuple[str, ...]:
    """Stop or pause strings: any iterable of str but a str itself (empty ones are ignored)."""
    try:
        strings = None if isinstance(values, (str, bytes)) else tuple(values)
    except TypeError:
        strings = None
    if strings is None or not all(isinstance(v, str) for v in strings):
        raise EdgesrmError(f"{name} must be a list or tuple of strings, got {show(values)}")
    return tuple(v for v in strings if v)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()
