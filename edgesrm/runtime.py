"""The Python API for apps that embed edgesrm: ``load`` a model, ``ask`` it a question."""

from __future__ import annotations

import random
from pathlib import Path

from .budget import Budget, Deadline, plan_memory
from .chat import ChatFormat
from .engine import Engine, EngineConfig, SamplingParams, set_verbose
from .errors import EdgesrmError
from .models import resolve_model
from .strategies import Result, Task, auto, run_strategy
from .strategies.base import StreamCallback

DEFAULT_CTX = 4096


class Runtime:
    """A loaded model ready to answer; create it with ``edgesrm.load``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.chat = ChatFormat(
            template=engine.meta("tokenizer.chat_template"),
            bos_token=engine.detokenize_special(engine.bos_token),
            eos_token=engine.detokenize_special(engine.eos_token),
        )

    @property
    def model_path(self) -> Path:
        return self.engine.model_path

    def ask(
        self,
        question: str,
        *,
        strategy: str = "cot",
        n: int = 8,
        budget: Budget | None = None,
        max_tokens: int = 512,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        seed: int | None = None,
        system: str | None = None,
        early_stop: bool = True,
        weighted: bool = False,
        waits: int = 1,
        on_text: StreamCallback | None = None,
    ) -> Result:
        """Answer ``question`` with a reasoning ``strategy`` (see ``edgesrm.strategies``).

        ``n`` is the number of paths for ``sc``; ``budget`` caps tokens (all paths
        together) and wall-clock time (an answer is returned before the deadline);
        ``on_text(kind, text)`` streams single-path strategies as they generate, ``kind``
        being ``"reasoning"`` or ``"answer"``.
        """
        budget = budget or Budget()
        if strategy == "auto" and (budget.deadline_s is not None or budget.max_tokens is not None):
            auto.prepare(self.engine, n)  # speed measured once, before the clock starts
        deadline = Deadline(budget.deadline_s)  # the clock starts now, before the prompt
        if not question.strip():
            raise EdgesrmError("the question is empty")
        if n < 1:
            raise EdgesrmError(f"the number of paths must be at least 1, got {n}")
        if max_tokens < 1:
            raise EdgesrmError(f"max_tokens must be at least 1, got {max_tokens}")
        if seed is None:
            seed = random.randrange(2**31)  # reported in the result, so any answer can be replayed
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        task = Task(
            engine=self.engine, chat=self.chat, question=question, sampling=sampling, budget=budget, n=n,
            max_tokens=max_tokens, system=system, on_text=on_text, deadline=deadline, early_stop=early_stop,
            weighted=weighted, waits=waits,
        )
        return run_strategy(strategy, task)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    model: str | Path | None = None,
    *,
    n_ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    gpu_layers: int | None = None,
    kv_type: str = "f16",
    max_sequences: int = 16,
    memory_mb: float | None = None,
    verbose: bool = False,
) -> Runtime:
    """Load a GGUF model (``None``: the embedded SmolLM2-135M-Instruct) and return a Runtime.

    With ``memory_mb``, the context size, KV cache type, batch and number of parallel
    sequences are chosen (before loading) so that the estimated peak fits.
    """
    set_verbose(verbose)
    path = resolve_model(model)
    n_batch = 512
    if memory_mb is not None:
        plan = plan_memory(path, memory_mb, n_ctx=n_ctx, n_seqs=max_sequences, kv_type=kv_type)
        n_ctx, kv_type, max_sequences, n_batch = plan.n_ctx, plan.kv_type, plan.n_seqs, plan.n_batch
    config = EngineConfig(n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type,
                          max_sequences=max_sequences, n_batch=n_batch)
    return Runtime(Engine(path, config))
