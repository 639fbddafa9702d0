"""Importance matrices: how large each input column of every weight matrix runs, so that the
quantizer spends its precision where the activations are (llama.cpp's ``llama-imatrix``, from
Python).

While a calibration text is decoded (``engine.scoring.Scorer``, chunks of ``n_ctx`` tokens with
every position's logits), llama.cpp's evaluation callback sees every matrix multiplication. For
each one with a model weight (``MUL_MAT`` whose weight is a ``blk.*`` tensor and whose input has
at least 16 rows, and every ``MUL_MAT_ID``, the experts of mixture-of-experts models), the sum
of squared activations per input column and the number of rows are added up, per expert for
``MUL_MAT_ID``: what llama.cpp's imatrix tool collects.

The file is llama.cpp's imatrix GGUF (``general.type = imatrix``; per weight ``NAME.in_sum2``,
F32 [n_mat, columns], and ``NAME.counts``, F32 [n_mat, 1]; ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size``), so ``llama-quantize --imatrix`` reads it too;
``edgesrm quantize --imatrix`` passes each weight's mean (sum / count) to ``llama_model_quantize``.

By default the calibration text is the model's own reasoning: answers to GSM8K *train*
questions (``data/gsm8k/train-calibration.jsonl``, never the test split), generated with
edgesrm's batched engine, so that the matrix weighs what the model does when it reasons.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .checks import read_text_file
from .engine.backend import lib
from .engine.text import clean_text
from .errors import EdgesrmError

IN_SUM2, COUNTS = ".in_sum2", ".counts"
MIN_ROWS = 16  # llama.cpp's imatrix tool skips multiplications with fewer input rows
CHUNK = 512  # tokens per chunk, llama.cpp's default
GGML_TYPE_F32 = 0


class GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml that llama-cpp-python 0.3.36 vendors (ggml.h; 336 bytes
    on 64-bit machines). Only read, inside the evaluation callback."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * 10), ("view_src", ctypes.POINTER(GGMLTensor)), ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]


def _ggml():
    """libggml-base's functions the collector calls (loaded with llama.cpp, found by name)."""
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library  # .so, .dylib or .dll, as llama_cpp loads

    lib()
    base = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    for name, restype, argtypes in (
        ("ggml_op_name", ctypes.c_char_p, [ctypes.c_int]),
        ("ggml_backend_buffer_is_host", ctypes.c_bool, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
    ):
        fn = getattr(base, name)
        fn.restype, fn.argtypes = restype, argtypes
    return base


def _op_ids(ggml) -> tuple[int, int]:
    """The enum values of MUL_MAT and MUL_MAT_ID in this ggml (they move between versions)."""
    names = {}
    for op in range(256):
        name = ggml.ggml_op_name(op)
        if name in (b"MUL_MAT", b"MUL_MAT_ID"):
            names[name] = op
        if len(names) == 2:
            return names[b"MUL_MAT"], names[b"MUL_MAT_ID"]
    raise EdgesrmError("this llama.cpp has no MUL_MAT operation (an unexpected ggml version)")


def weight_name(raw: bytes) -> str:
    """A weight's name without a backend copy's decoration (``CUDA0#blk.0.attn_k.weight#0``):
    what follows the first ``#`` up to the next one, as llama.cpp's imatrix tool reads it."""
    name = raw.decode("utf-8", "replace")
    return name.split("#")[1] if "#" in name else name


@dataclass
class Imatrix:
    """Per weight: the sums of squared activations per input column, float64 [n_mat, columns]
    (n_mat: experts, 1 for a dense weight), and the rows counted, float64 [n_mat]."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    chunk_size: int = CHUNK

    def means(self) -> dict[str, np.ndarray]:
        """What ``llama_model_quantize`` takes: per weight, sum / count per expert, flattened
        float32 [n_mat * columns] (an expert never routed to gets ones, as llama-quantize does)."""
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name]
            if counts.size == 1:
                mean = sums / counts[0] if counts[0] > 0 else np.ones_like(sums)
            else:
                mean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 1.0)
            out[name] = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        return out


class Collector:
    """The evaluation callback that fills an ``Imatrix`` (``Scorer(eval_callback=collector)``).

    Errors inside the callback cannot cross into llama.cpp (a ctypes callback that raises returns
    False, which would silently cut the graph short): the first one is kept and re-raised by
    ``check``.
    """

    def __init__(self, *, process_output: bool = False) -> None:
        self.imatrix = Imatrix()
        self.process_output = process_output
        self._ggml = _ggml()
        self.mul_mat, self.mul_mat_id = _op_ids(self._ggml)
        self.error: BaseException | None = None

    def __call__(self, tensor: int, ask: bool, _user_data: int) -> bool:
        try:
            t = ctypes.cast(tensor, ctypes.POINTER(GGMLTensor)).contents
            if ask:
                return self._wanted(t)
            self._collect(t)
        except BaseException as exc:  # noqa: BLE001 (kept, re-raised by check())
            if self.error is None:
                self.error = exc
        return True

    def check(self) -> None:
        if isinstance(self.error, KeyboardInterrupt):  # Ctrl-C (or kill) while llama.cpp was in the callback
            raise self.error
        if self.error is not None:
            raise EdgesrmError(f"collecting the importance matrix failed: {self.error}") from self.error

    def _wanted(self, t: GGMLTensor) -> bool:
        if t.op == self.mul_mat_id:
            return True
        if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
            return False
        src1 = t.src[1].contents
        if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
            return False
        name = weight_name(t.src[0].contents.name)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _array(self, t: GGMLTensor, dtype) -> np.ndarray:
        """The tensor's data as a numpy array of shape [ne3, ne2, ne1, ne0]: a view of llama.cpp's
        buffer (a host copy for a GPU buffer), valid only until the callback returns."""
        shape = tuple(int(t.ne[i]) for i in (3, 2, 1, 0))
        strides = tuple(int(t.nb[i]) for i in (3, 2, 1, 0))
        span = sum((n - 1) * s for n, s in zip(shape, strides)) + np.dtype(dtype).itemsize
        if self._ggml.ggml_backend_buffer_is_host(t.buffer):
            raw = (ctypes.c_char * span).from_address(t.data)
        else:  # a GPU buffer: copied to the host first
            raw = (ctypes.c_char * max(span, self._ggml.ggml_nbytes(ctypes.addressof(t))))()
            self._ggml.ggml_backend_tensor_get(ctypes.addressof(t), raw, 0, self._ggml.ggml_nbytes(ctypes.addressof(t)))
        return np.ndarray(shape, dtype, buffer=raw, offset=0, strides=strides)

    def _collect(self, t: GGMLTensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = weight_name(src0.name)
        squares = np.square(self._array(src1, np.float32), dtype=np.float64)  # [ne3, ne2, ne1, ne0]
        cols = int(src1.ne[0])
        im = self.imatrix
        if t.op == self.mul_mat_id:
            ids = self._array(t.src[2].contents, np.int32)[0, 0]  # [n_tokens, n_expert_used]
            n_as = int(src0.ne[2])
            sums = im.sums.setdefault(name, np.zeros((n_as, cols)))
            counts = im.counts.setdefault(name, np.zeros(n_as))
            rows = squares[0]  # [n_tokens, n_expert_used or 1, cols]
            for slot in range(ids.shape[1]):
                experts = ids[:, slot]
                np.add.at(sums, experts, rows[:, slot % rows.shape[1], :])
                np.add.at(counts, experts, 1.0)
        else:
            n_mat = int(src0.ne[2] * src0.ne[3])
            sums = im.sums.setdefault(name, np.zeros((n_mat, cols)))
            counts = im.counts.setdefault(name, np.zeros(1))
            for i3 in range(squares.shape[0]):
                for i2 in range(squares.shape[1]):
                    mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                    sums[mat] += squares[i3, i2].sum(axis=0)
            counts += squares.shape[0] * squares.shape[1] * squares.shape[2] / n_mat
        if not np.isfinite(sums).all():
            raise EdgesrmError(f"non-finite activations in {name}")


# -- the file ------------------------------------------------------------------------------


def write(imatrix: Imatrix, path: Path, *, force: bool = True) -> None:
    """Write llama.cpp's imatrix GGUF (atomically: a temporary file renamed into place, after a
    free-space check). Raises ``EdgesrmError`` for an empty matrix, a file that cannot be
    written, or (``force=False``) a file that exists at ``path``."""
    import gguf

    from .convert.writer import atomic_output

    if not imatrix.sums:
        raise EdgesrmError("the importance matrix is empty: no matrix multiplication was seen")
    need = sum(4 * (s.size + c.size) + 256 for s, c in zip(imatrix.sums.values(), imatrix.counts.values())) + 2**20
    try:
        with atomic_output(Path(path), force=force, need_bytes=need) as tmp:
            writer = gguf.GGUFWriter(str(tmp), arch="", endianess=gguf.GGUFEndian.LITTLE)
            try:
                writer.add_type(gguf.GGUFType.IMATRIX)
                # empty datasets: llama.cpp refuses the file
                writer.add_array(gguf.Keys.IMatrix.DATASETS, [clean_text(str(d)) for d in imatrix.datasets] or ["unknown"])
                writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunks)
                writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
                for name in sorted(imatrix.sums):
                    sums, counts = imatrix.sums[name], imatrix.counts[name]
                    n_mat = counts.size
                    writer.add_tensor(name + IN_SUM2, sums.reshape(n_mat, -1).astype(np.float32))
                    writer.add_tensor(name + COUNTS, counts.reshape(n_mat, 1).astype(np.float32))
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file()
            finally:
                writer.close()
    except OSError as exc:
        raise EdgesrmError(f"cannot write {path}: {exc}") from None


def read(path: Path) -> Imatrix:
    """An imatrix GGUF written by edgesrm or by llama.cpp's imatrix tool, or the older
    ``imatrix.dat`` many published models still ship (``read_legacy``). Raises ``EdgesrmError``
    for a file that is neither."""
    import gguf

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise EdgesrmError(f"{path} is not a file")
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        return read_legacy(path)
    try:
        return _read_gguf(path, gguf.GGUFReader(str(path)))
    except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:  # a damaged file, as gguf-py finds it
        raise EdgesrmError(f"{path} is not a valid importance matrix GGUF: {exc}") from None


def _read_gguf(path: Path, reader) -> Imatrix:
    fields = reader.fields
    kind = fields.get("general.type")
    if kind is not None and kind.contents() != "imatrix":
        raise EdgesrmError(f"{path} is a GGUF but not an importance matrix (general.type = {kind.contents()!r})")
    tensors = {t.name: t for t in reader.tensors}
    im = Imatrix()
    for name, tensor in tensors.items():
        if not name.endswith(IN_SUM2):
            continue
        weight = name[: -len(IN_SUM2)]
        counts = tensors.get(weight + COUNTS)
        if counts is None:
            raise EdgesrmError(f"{path}: {name} has no {weight + COUNTS}")
        c = np.asarray(counts.data, dtype=np.float64).reshape(-1)
        sums = np.asarray(tensor.data, dtype=np.float64)
        if c.size == 0 or sums.size % c.size:
            raise EdgesrmError(f"{path}: {name} has {sums.size} values for {c.size} matrices")
        im.sums[weight] = sums.reshape(c.size, -1)
        im.counts[weight] = c
    if not im.sums:
        raise EdgesrmError(f"{path} is not an importance matrix: it holds no *.in_sum2 tensors "
                           "(make one with `edgesrm imatrix`)")
    for key, attr in (("imatrix.chunk_count", "chunks"), ("imatrix.chunk_size", "chunk_size")):
        if key in fields:
            value = fields[key].contents()
            if not isinstance(value, int):
                raise EdgesrmError(f"{path}: {key} is {value!r}, not a number")
            setattr(im, attr, value)
    if "imatrix.datasets" in fields:
        value = fields["imatrix.datasets"].contents()
        im.datasets = [value] if isinstance(value, str) else [str(v) for v in value]
    return im


def read_legacy(path: Path) -> Imatrix:
    """llama.cpp's older binary imatrix (``llama-imatrix --output-format dat``), little-endian:
    int32 entries; per entry int32 name length, the name, int32 ncall, int32 nval, float32
    [nval] = mean squared activation * ncall; then int32 chunks and the dataset (length, text).
    Per-expert counts are not in it: each weight reads back as sums [1, nval] with count ncall,
    whose mean is what llama-quantize takes from it. Raises ``EdgesrmError`` for another file."""
    import mmap

    def not_one(why: str) -> EdgesrmError:
        return EdgesrmError(f"{path} is not an importance matrix: neither an imatrix GGUF nor llama.cpp's older "
                            f"imatrix.dat ({why})")

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise not_one("it is empty")
            # Mapped, not read: a large file of another kind fails at its first bytes, unread.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror or exc}") from None
    with data:  # the values are copied out, so the map can close when parsing ends
        return _parse_legacy(data, not_one)


def _parse_legacy(data, not_one: Callable[[str], EdgesrmError]) -> Imatrix:
    import struct

    pos = 0

    def ints(n: int) -> tuple[int, ...]:
        nonlocal pos
        if pos + 4 * n > len(data):
            raise not_one("it ends early")
        pos += 4 * n
        return struct.unpack_from(f"<{n}i", data, pos - 4 * n)

    (entries,) = ints(1)
    if not 0 < entries <= 1_000_000:
        raise not_one(f"{entries} entries")
    im = Imatrix()
    for _ in range(entries):
        (length,) = ints(1)
        if not 0 < length <= 4096 or pos + length > len(data):
            raise not_one(f"a name of {length} bytes")
        try:
            name = data[pos:pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise not_one("a name that is not UTF-8") from None
        pos += length
        ncall, nval = ints(2)
        if ncall < 0 or nval <= 0:
            raise not_one(f"{name}: {nval} values, {ncall} calls")
        if nval > (len(data) - pos) // 4:
            raise not_one(f"it ends early, in {name}")
        if name in im.sums:
            raise not_one(f"{name} twice")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        im.sums[name] = values.reshape(1, nval)
        im.counts[name] = np.array([float(ncall)])
    if pos + 4 <= len(data):
        (im.chunks,) = ints(1)
    if pos + 4 <= len(data):
        (length,) = ints(1)
        if 0 < length <= len(data) - pos:
            im.datasets = [data[pos:pos + length].decode("utf-8", "replace")]
    return im


# -- calibration text ----------------------------------------------------------------------


def train_questions(limit: int) -> list[str]:
    """The first ``limit`` GSM8K train questions shipped for calibration (never the test split)."""
    text = resources.files("edgesrm").joinpath("data/gsm8k/train-calibration.jsonl").read_text(encoding="utf-8")
    questions = [json.loads(line)["question"] for line in text.splitlines() if line.strip()]
    return questions[:limit]


def reasoning_traces(runtime, questions: list[str], *, max_tokens: int = 384, seed: int = 0, parallel: int = 8,
                     on_trace: Callable[[], None] | None = None) -> list[str]:
    """The model's own chains of thought (``cot``, its default sampling) on ``questions``: each the
    question as the chat template renders it followed by the reply. ``parallel`` questions are
    decoded together in one batch (the runtime's scheduler); ``on_trace()`` after each one. An
    error in one trace, or Ctrl-C, stops the traces being decoded at their next step."""
    import threading
    from concurrent.futures import ThreadPoolExecutor, as_completed

    runtime.start_scheduler()
    cancel = threading.Event()  # set on Ctrl-C or an error: the answers being decoded stop too

    def one(i: int) -> str:
        result = runtime.ask(questions[i], strategy="cot", max_tokens=max_tokens, seed=seed + i, cancel=cancel)
        if on_trace is not None:
            on_trace()
        return runtime.chat.reasoning_prompt(questions[i], None).text + result.text

    pool = ThreadPoolExecutor(max(1, parallel))
    try:
        futures = [pool.submit(one, i) for i in range(len(questions))]
        for future in as_completed(futures):  # the first error (or Ctrl-C here) stops the rest
            future.result()
        return [future.result() for future in futures]
    finally:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)


def reasoning_traces_for(model_path: Path, questions: list[str], *, max_tokens: int = 384, threads: int | None = None,
                         on_trace: Callable[[], None] | None = None) -> list[str]:
    """``reasoning_traces`` with ``model_path`` loaded for it (8 questions at a time)."""
    from .runtime import load

    with load(model_path, threads=threads, n_ctx=8 * (max_tokens + 320), max_sequences=8) as runtime:
        return reasoning_traces(runtime, questions, max_tokens=max_tokens, on_trace=on_trace)


@contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """While the eval callback runs inside llama.cpp, a KeyboardInterrupt raised there is lost
    (ctypes prints it and returns). SIGINT and SIGTERM are recorded instead (the list gets the
    signal number) and acted on between chunks; the previous handlers come back afterwards."""
    import signal
    import threading

    signalled: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield signalled
        return
    previous = {sig: signal.signal(sig, lambda number, _frame: signalled.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signalled
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def collect(model_path: Path, texts: Iterable[str], *, datasets: list[str], n_ctx: int = CHUNK,
            threads: int | None = None, process_output: bool = False,
            on_chunk: Callable[[int, int], None] | None = None) -> Imatrix:
    """The importance matrix of ``model_path`` over ``texts`` (joined, cut into chunks of ``n_ctx``
    tokens; the last partial chunk is left out). ``on_chunk(done, total)`` after each chunk.
    Raises ``EdgesrmError`` when the text is shorter than one chunk."""
    from .engine.scoring import Scorer

    collector = Collector(process_output=process_output)
    # Deferred from before the model loads: llama.cpp's log callback runs during the load, and an
    # interrupt raised inside any ctypes callback is lost.
    with _signals_deferred() as signalled, \
            Scorer(model_path, n_ctx=n_ctx, threads=threads, eval_callback=collector) as scorer:
        tokens = scorer.tokenize("\n\n".join(texts))
        chunks = list(scorer.chunks(tokens))
        if not chunks:
            raise EdgesrmError(f"the calibration text is {len(tokens)} tokens, shorter than one chunk of "
                               f"{scorer.n_ctx}: give more text (or more traces)")
        for done, chunk in enumerate(chunks, 1):
            if signalled:
                raise KeyboardInterrupt  # Ctrl-C or kill: between chunks, never inside a callback
            scorer.decode(chunk)
            collector.check()
            collector.imatrix.chunks = done
            if on_chunk is not None:
                on_chunk(done, len(chunks))
        if signalled:
            raise KeyboardInterrupt
    im = collector.imatrix
    im.chunk_size, im.datasets = scorer.n_ctx, list(datasets)
    return im


def make(model: str | Path, out: str | Path, *, traces: int = 32, data: str | Path | None = None,
         n_ctx: int = CHUNK, threads: int | None = None, max_tokens: int = 384, force: bool = False,
         process_output: bool = False, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> Imatrix:
    """``edgesrm imatrix``: the importance matrix of ``model`` (a path or a store name) written to
    ``out``. Calibration text: ``data`` (a UTF-8 text file), else the model's reasoning traces on
    ``traces`` GSM8K train questions (up to ``max_tokens`` tokens each). ``log`` receives the plan
    (tokens, chunks, a time and memory estimate) before the work starts. Raises ``EdgesrmError``
    for bad input, before any work."""
    from .convert.writer import check_destination
    from .models import read_header, resolve_model

    model_path = resolve_model(str(model))
    out = Path(out).expanduser()
    check_destination(out, force, inputs=[model_path] + ([Path(data).expanduser()] if data is not None else []))
    if n_ctx < 2 * MIN_ROWS:
        raise EdgesrmError(f"chunks of {n_ctx} tokens are too short: use at least {2 * MIN_ROWS}")
    header = read_header(model_path)
    n_vocab = int(header.metadata.get("tokenizer.ggml.tokens", 0) or 0)
    size_mb = model_path.stat().st_size / 2**20
    # The weights, the logits of one chunk (llama.cpp keeps every position's), a chunk's activations.
    memory_mb = size_mb + n_ctx * max(n_vocab, 32000) * 4 * 2 / 2**20 + 200
    if data is not None:
        path = Path(data).expanduser()
        texts, datasets = [read_text_file(path)], [str(path)]
        log(f"calibration text: {path} ({len(texts[0]):,} characters); peak memory about {memory_mb:,.0f} MiB")
    else:
        if not isinstance(traces, int) or traces < 1:
            raise EdgesrmError(f"traces must be a whole number of at least 1, got {traces!r}")
        from . import speed
        from .engine import Engine, EngineConfig

        questions = train_questions(traces)
        if len(questions) < traces:
            raise EdgesrmError(f"only {len(questions)} calibration questions are shipped: ask for at most that many traces")
        with Engine(model_path, EngineConfig(n_threads=threads, max_sequences=8)) as engine:
            rate = speed.profile(engine, 8).speed(8)
        from .budget import ModelShape, estimate_memory

        # Writing the traces (8 sequences and their KV cache) may peak above collecting the matrix.
        writing = estimate_memory(ModelShape.of(model_path), n_ctx=8 * (max_tokens + 320), kv_type="f16", n_seqs=8,
                                  n_batch=512)
        memory_mb = max(memory_mb, writing.total_mb)
        minutes = traces * max_tokens * 0.7 / rate / 60
        chunks = max(1, round(traces * max_tokens * 0.9 / n_ctx))
        log(f"calibration text: {model_path.name}'s reasoning on {traces} GSM8K train question{'s' * (traces > 1)}, "
            f"8 at a time (about {'%.0f min' % minutes if minutes >= 1 else '%.0f s' % (60 * minutes)} at "
            f"{rate:.1f} tokens/s), then about {chunks} chunk{'s' * (chunks > 1)} of {n_ctx} tokens; peak memory "
            f"about {memory_mb:,.0f} MiB")
        bar = _bar(traces, "traces", progress)
        try:
            texts = reasoning_traces_for(model_path, questions, max_tokens=max_tokens, threads=threads,
                                         on_trace=lambda: bar and bar.update(1))
        finally:
            if bar:
                bar.close()
        datasets = [f"edgesrm reasoning traces: cot on GSM8K train rows 100-{99 + traces} ({model_path.name})"]
    bar = None

    def on_chunk(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = _bar(total, "chunks", progress)
        if bar:
            bar.update(1)

    try:
        im = collect(model_path, texts, datasets=datasets, n_ctx=n_ctx, threads=threads,
                     process_output=process_output, on_chunk=on_chunk)
    finally:
        if bar:
            bar.close()
    write(im, out, force=force)  # a file that appeared at ``out`` during the run is kept too
    return im


def _bar(total: int, unit: str, enabled: bool):
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit=f" {unit}", disable=None, file=sys.stderr, dynamic_ncols=True)  # a terminal only


def check_against(imatrix: Imatrix, model_path: Path) -> None:
    """Refuse an importance matrix made for another model: its weight names and column counts
    must be the model's (read from the GGUF header)."""
    from .models import read_header

    header = read_header(model_path)
    shapes = {t.name: t.shape for t in header.tensors} if getattr(header, "tensors", None) else None
    if shapes is None:
        return
    missing = [n for n in imatrix.sums if n not in shapes]
    if missing:
        raise EdgesrmError(f"the importance matrix does not belong to {model_path.name}: it has {len(missing)} "
                           f"weights the model lacks (e.g. {missing[0]})")
    for name, sums in imatrix.sums.items():
        counts = imatrix.counts[name]
        # Sums of squares over counted rows: never negative, and not all zero where rows were counted
        # (a matrix of zeros tells the quantizer no column matters: the output is ruined, silently).
        if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(counts))) or np.any(sums < 0) or np.any(counts < 0):
            raise EdgesrmError(f"the importance matrix is damaged: {name} holds negative or non-finite values")
        seen = counts.reshape(-1) > 0
        if seen.any() and not np.any(sums.reshape(counts.size, -1)[seen] > 0):
            raise EdgesrmError(f"the importance matrix is damaged: {name} is all zeros")
        cols = shapes[name][0]
        experts = shapes[name][2] if len(shapes[name]) > 2 else 1
        if sums.shape[0] == 1 and experts > 1 and sums.size == experts * cols:
            continue  # an older imatrix.dat keeps a mixture-of-experts weight's experts in one row
        if sums.shape[-1] != cols:
            raise EdgesrmError(f"the importance matrix does not belong to {model_path.name}: {name} has "
                               f"{sums.shape[-1]} columns in it and {cols} in the model")
