"""How much quantization changed a model: KL divergence, top-1 agreement and perplexity of its
next-token distributions against a reference (an f16/bf16 GGUF, or the most precise file at
hand), over the same text, as llama.cpp's ``llama-perplexity --kl-divergence`` measures it.

Both models decode the same chunks of ``n_ctx`` tokens (``engine.scoring.Scorer``); the
positions of each chunk's second half are scored, so that every scored token has at least half
a chunk of context. Per position: KL(reference || model) in nats over the whole vocabulary
(computed exactly in float64; llama.cpp stores the reference's log-probabilities in 16 bits and
skips terms below e^-16), whether the two most likely tokens agree, and each model's negative
log-likelihood of the text's next token.

By default the text is reasoning: the reference model's chains of thought on GSM8K *test*
questions (held out from the imatrix's train questions), generated once and cached per
reference file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import EdgesrmError

CHUNK = 512
ROWS = 32  # positions compared at once (memory: 32 x vocabulary x 8 bytes per array)


@dataclass(frozen=True)
class Quality:
    """What the comparison found, over ``tokens`` scored positions."""

    model: str
    reference: str
    tokens: int
    kl_mean: float  # nats per token
    kl_p99: float
    kl_max: float
    top1: float  # share of positions where both models' most likely token is the same
    ppl: float  # the model's perplexity on the text
    ppl_reference: float
    gsm8k: float | None = None  # accuracy on a GSM8K test slice (gsm8k_accuracy), when measured
    gsm8k_reference: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        return [f"KL divergence vs {self.reference}: mean {self.kl_mean:.4f}, p99 {self.kl_p99:.4f}, "
                f"max {self.kl_max:.3f} nats ({self.tokens:,} tokens)",
                f"top-1 agreement: {100 * self.top1:.2f}%",
                f"perplexity: {self.ppl:.3f} (reference {self.ppl_reference:.3f}, "
                f"ratio {self.ppl / self.ppl_reference:.4f})"] + (
                [] if self.gsm8k is None else
                [f"GSM8K accuracy: {100 * self.gsm8k:.1f}% (reference {100 * self.gsm8k_reference:.1f}%)"])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: [positions, vocab]."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(model: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per position: KL(reference || model), top-1 agreement, model NLL and reference NLL of
    ``targets`` (the next tokens). ``model``/``reference``: logits [positions, vocab]."""
    q, p = log_softmax(model), log_softmax(reference)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    same = model.argmax(axis=-1) == reference.argmax(axis=-1)
    rows = np.arange(len(targets))
    return np.maximum(kl, 0.0), same, -q[rows, targets], -p[rows, targets]


def compare(model: str | Path, reference: str | Path, text: str, *, n_ctx: int = CHUNK, threads: int | None = None,
            max_chunks: int | None = None, on_chunk: Callable[[int, int], None] | None = None) -> Quality:
    """Compare ``model`` with ``reference`` (paths or store names) on ``text``: ``compare_many``
    with one model."""
    return compare_many([model], reference, text, n_ctx=n_ctx, threads=threads, max_chunks=max_chunks,
                        on_chunk=on_chunk)[0]


def check_text(reference: str | Path, text: str, *, n_ctx: int = CHUNK, threads: int | None = None) -> int:
    """The number of whole chunks of ``n_ctx`` tokens ``text`` makes with ``reference``'s
    tokenizer, checked before long work that ends in a comparison. Raises ``EdgesrmError``
    when it is shorter than one chunk."""
    from .engine.scoring import Scorer
    from .models import resolve_model

    with Scorer(resolve_model(str(reference)), n_ctx=n_ctx, threads=threads) as ref:
        tokens = ref.tokenize(text)
        chunks = sum(1 for _ in ref.chunks(tokens))
    if not chunks:
        raise EdgesrmError(f"the text is {len(tokens)} tokens, shorter than one chunk of {n_ctx} "
                           "(give more traces or a longer text)")
    return chunks


def compare_many(models: Sequence[str | Path], reference: str | Path, text: str, *, n_ctx: int = CHUNK,
                 threads: int | None = None, max_chunks: int | None = None,
                 on_chunk: Callable[[int, int], None] | None = None) -> list[Quality]:
    """Compare each of ``models`` with ``reference`` (paths or store names) on ``text``, one
    ``Quality`` per model in order. The reference decodes the text once: the logits of its scored
    positions (chunks x n_ctx/2 x n_vocab float32; about 150 MiB per chunk for a 152k
    vocabulary) wait in a temporary file, and one model at a time is loaded after it.
    ``on_chunk(done, total)`` after each chunk decoded (total: chunks x (1 + models)).
    Raises ``EdgesrmError`` when a model does not share the reference's vocabulary or tokenizer,
    or the text is shorter than a chunk."""
    from .convert.writer import remove_stale
    from .engine.scoring import Scorer
    from .models import resolve_model

    ref_path = resolve_model(str(reference))
    model_paths = [resolve_model(str(m)) for m in models]
    remove_stale(Path(tempfile.gettempdir()), r"edgesrm-logits-(\d+)-.*")  # what a killed comparison left
    with tempfile.TemporaryDirectory(prefix=f"edgesrm-logits-{os.getpid()}-") as tmp:
        with Scorer(ref_path, n_ctx=n_ctx, threads=threads) as ref:
            tokens = ref.tokenize(text)
            chunks = list(ref.chunks(tokens))[:max_chunks]
            if not chunks:
                raise EdgesrmError(f"the text is {len(tokens)} tokens, shorter than one chunk of {ref.n_ctx}")
            first = ref.n_ctx // 2
            total = len(chunks) * (1 + len(model_paths))
            need = len(chunks) * (ref.n_ctx - first - 1) * ref.n_vocab * 4
            free = shutil.disk_usage(tmp).free
            if need > free - 256 * 2**20:
                raise EdgesrmError(f"the reference's logits for {len(chunks)} chunks take {need / 2**20:,.0f} MiB and "
                                   f"{tmp} has {free / 2**20:,.0f} MiB free: compare fewer chunks (quality "
                                   "--chunks) or point TMPDIR at a larger disk")
            scored = np.lib.format.open_memmap(Path(tmp) / "reference.npy", mode="w+", dtype=np.float32,
                                               shape=(len(chunks), ref.n_ctx - first - 1, ref.n_vocab))
            for i, chunk in enumerate(chunks):
                scored[i] = ref.logits(chunk, first=first)[:-1]
                if on_chunk is not None:
                    on_chunk(i + 1, total)
            n_vocab, n_ctx = ref.n_vocab, ref.n_ctx
        results = []
        for k, model_path in enumerate(model_paths):
            with Scorer(model_path, n_ctx=n_ctx, threads=threads) as m:
                if m.n_vocab != n_vocab:
                    raise EdgesrmError(f"{model_path.name} ({m.n_vocab:,} tokens) and {ref_path.name} ({n_vocab:,}) "
                                       "do not share a vocabulary: compare quantizations of the same model")
                if m.tokenize(text) != tokens:
                    raise EdgesrmError(f"{model_path.name} and {ref_path.name} tokenize the text differently: "
                                       "compare quantizations of the same model")
                parts = []
                for i, chunk in enumerate(chunks):
                    targets = np.array(chunk[first + 1:])
                    mine = m.logits(chunk, first=first)[:-1]
                    for row in range(0, len(targets), ROWS):  # float64 over the whole vocabulary: a few rows at a time
                        rows = slice(row, row + ROWS)
                        parts.append(compare_logits(mine[rows], scored[i, rows], targets[rows]))
                    if on_chunk is not None:
                        on_chunk((k + 1) * len(chunks) + i + 1, total)
            kl, same, nll, nll_ref = (np.concatenate(x) for x in zip(*parts))
            results.append(Quality(model=model_path.name, reference=ref_path.name, tokens=int(kl.size),
                                   kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                                   kl_max=float(kl.max()), top1=float(same.mean()),
                                   ppl=math.exp(float(nll.mean())), ppl_reference=math.exp(float(nll_ref.mean()))))
        del scored  # the memory map closes before its directory goes
    return results


def gsm8k_accuracy(model: str | Path, questions: int, *, strategy: str = "cot", max_tokens: int = 384,
                   threads: int | None = None) -> float:
    """``model``'s accuracy (0 to 1) with ``strategy`` on the first ``questions`` GSM8K test
    questions, as ``edgesrm eval`` measures it (seeded per question, so reproducible)."""
    from .eval import evaluate, find_dataset, load_items
    from .runtime import load

    items = load_items(find_dataset("gsm8k"), questions)
    with load(model, threads=threads) as rt, tempfile.TemporaryDirectory(prefix="edgesrm-quality-") as tmp:
        return evaluate(rt, items, strategy, Path(tmp) / "rows.jsonl", max_tokens=max_tokens).accuracy


def test_questions(limit: int) -> list[str]:
    from .eval import find_dataset, load_items

    return [item.question for item in load_items(find_dataset("gsm8k"), limit)]


def reasoning_text(reference: str | Path, traces: int, *, max_tokens: int = 384, threads: int | None = None,
                   on_trace: Callable[[], None] | None = None) -> str:
    """The reference model's chains of thought on the first ``traces`` GSM8K test questions,
    joined; cached per reference file (``~/.cache/edgesrm/traces``)."""
    from .imatrix import reasoning_traces_for
    from .models import model_store, resolve_model, write_cache_file

    ref_path = resolve_model(str(reference))
    stat = ref_path.stat()
    key = hashlib.sha256(f"{ref_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{traces}|{max_tokens}".encode())
    cache = model_store().parent / "traces" / f"{key.hexdigest()[:24]}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))["text"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    texts = reasoning_traces_for(ref_path, test_questions(traces), max_tokens=max_tokens, threads=threads,
                                 on_trace=on_trace)
    text = "\n\n".join(texts)
    write_cache_file(cache, json.dumps({"reference": str(ref_path), "traces": traces, "text": text}))
    return text
