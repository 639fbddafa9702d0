"""The Python API for apps that embed edgesrm: ``load`` a model, ``ask`` it a question."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .chat import ChatFormat
from .engine import Engine, EngineConfig, SamplingParams, set_verbose
from .errors import EdgesrmError

StreamCallback = Callable[[str, str], None]  # (kind: "reasoning" | "answer", text)


@dataclass
class AskResult:
    """One answered question, with what it cost."""

    question: str
    answer: str
    reasoning: str
    text: str  # the whole reply as generated
    finish_reason: str  # eos, stop, length, context
    prompt_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float
    model: str
    seed: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 2)}


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
        max_tokens: int = 512,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        seed: int | None = None,
        system: str | None = None,
        on_text: StreamCallback | None = None,
    ) -> AskResult:
        """Answer ``question`` after reasoning about it.

        ``on_text(kind, text)`` streams the reply as it is generated, ``kind`` being
        ``"reasoning"`` or ``"answer"``.
        """
        if not question.strip():
            raise EdgesrmError("the question is empty")
        started = time.perf_counter()
        if seed is None:
            seed = random.randrange(2**31)  # reported in the result, so any answer can be replayed
        prompt = self.chat.reasoning_prompt(question, system)
        splitter = self.chat.splitter(prompt)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)

        def stream(_seq, delta: str) -> None:
            for kind, piece in splitter.feed(delta):
                on_text(kind, piece)

        generation = self.engine.start(prompt)
        try:
            seq = generation.add(sampling, max_tokens=max_tokens, on_text=stream if on_text else None)
            generation.run()
        finally:
            generation.close()
        if on_text:
            for kind, piece in splitter.finish():
                on_text(kind, piece)
        split = splitter.split(seq.text)
        return AskResult(
            question=question,
            answer=split.answer,
            reasoning=split.reasoning,
            text=seq.text,
            finish_reason=seq.finish_reason or "",
            prompt_tokens=generation.timings.prompt_tokens,
            completion_tokens=seq.n_sampled,
            prefill_s=generation.timings.prefill_s,
            decode_s=generation.timings.decode_s,
            total_s=time.perf_counter() - started,
            model=self.engine.model_path.name,
            seed=seed,
        )

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    model: str | Path | None = None,
    *,
    n_ctx: int = 4096,
    threads: int | None = None,
    gpu_layers: int | None = None,
    kv_type: str = "f16",
    max_sequences: int = 16,
    verbose: bool = False,
) -> Runtime:
    """Load a GGUF model (``None``: the embedded SmolLM2-135M-Instruct) and return a Runtime."""
    set_verbose(verbose)
    config = EngineConfig(
        n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type, max_sequences=max_sequences
    )
    return Runtime(Engine(model, config))
