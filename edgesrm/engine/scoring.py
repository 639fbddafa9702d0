"""Whole-text evaluation: a model decodes fixed-length chunks of tokens with the logits of every
position, as llama.cpp's perplexity and imatrix tools do. For importance matrices (through an
evaluation callback that sees every matrix multiplication), perplexity and KL divergence; not
for generation (that is ``Engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import EdgesrmError
from .backend import default_threads, lib, load_model, recent_errors, tokenize

# ggml_backend_sched_eval_callback: (struct ggml_tensor *, bool ask, void *user_data) -> bool
EvalCallback = Callable[[int, bool, int], bool]


class Scorer:
    """A model with one context of ``n_ctx`` tokens, each chunk decoded in one batch (so that every
    matrix multiplication sees all its rows at once) with the logits of every position.

    ``eval_callback``, when given, is llama.cpp's ``cb_eval``: called for every node of the
    compute graph, first with ``ask=True`` (return whether to see it), then for the nodes it asked
    for with ``ask=False`` once computed (return True, or the rest of the graph is skipped).
    Raises ``EdgesrmError`` if the model cannot be loaded.
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int = 512, threads: int | None = None,
                 gpu_layers: int | None = None, eval_callback: EvalCallback | None = None) -> None:
        llama = lib()
        self._llama = llama
        self.model_path = Path(model_path)
        self._model = self._ctx = self._batch = None
        self._model = load_model(self.model_path, gpu_layers)
        self.vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads or default_threads()
        params.no_perf = True
        self._callback = None
        if eval_callback is not None:
            self._callback = llama.ggml_backend_sched_eval_callback(eval_callback)  # kept alive with the context
            params.cb_eval = self._callback
            params.cb_eval_user_data = None
        self._ctx = llama.llama_init_from_model(self._model, params)
        if not self._ctx:
            self.close()
            raise EdgesrmError(f"llama.cpp could not create a context: {recent_errors() or 'unknown error'}")
        # llama.cpp rounds the context up (to 256); a chunk is what one batch holds.
        self.n_ctx = min(n_ctx, llama.llama_n_batch(self._ctx))
        self._memory = llama.llama_get_memory(self._ctx)
        self._batch = llama.llama_batch_init(self.n_ctx, 0, 1)
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama.llama_vocab_bos(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """``text`` as tokens, without BOS (special tokens written in it are parsed)."""
        return tokenize(self.vocab, text, llama=self._llama)

    def decode(self, tokens: list[int]) -> None:
        """Decode ``tokens`` (1 to ``n_ctx``) as a fresh sequence, with every position's output
        computed (so that the last layer sees all rows, as llama.cpp's imatrix tool needs).
        Raises ``EdgesrmError`` when llama.cpp fails."""
        if not 0 < len(tokens) <= self.n_ctx:
            raise EdgesrmError(f"a chunk must have 1 to {self.n_ctx} tokens, got {len(tokens)}")
        llama, batch = self._llama, self._batch
        llama.llama_memory_clear(self._memory, True)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True  # every row: llama.cpp would skip the others in the last layer
        batch.n_tokens = len(tokens)
        status = llama.llama_decode(self._ctx, batch)
        if status != 0:
            raise EdgesrmError(f"llama_decode failed (status {status}): {recent_errors() or 'unknown error'}")

    def logits(self, tokens: list[int], *, first: int = 0) -> np.ndarray:
        """``decode(tokens)``, then the logits after positions ``first`` .. ``len(tokens) - 1``:
        a float32 copy of shape [len(tokens) - first, n_vocab]."""
        self.decode(tokens)
        first = min(max(first, 0), len(tokens))
        out = np.ctypeslib.as_array(self._llama.llama_get_logits(self._ctx), shape=(len(tokens), self.n_vocab))
        return out[first:].copy()

    def chunks(self, tokens: list[int], *, chunk: int | None = None) -> Iterator[list[int]]:
        """``tokens`` (the text's, without BOS) cut into chunks of ``chunk`` (default ``n_ctx``)
        tokens, the last partial one left out. When the model adds a BOS it goes before the text
        and is the first token of every chunk, in place of the text's token there: the same
        chunks as llama.cpp's imatrix and perplexity tools."""
        size = chunk or self.n_ctx
        if self.add_bos:
            tokens = [self.bos, *tokens]
        for start in range(0, len(tokens) - size + 1, size):
            piece = tokens[start:start + size]
            if self.add_bos:
                piece = [self.bos] + piece[1:]
            yield piece

    def close(self) -> None:
        llama = self._llama
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
