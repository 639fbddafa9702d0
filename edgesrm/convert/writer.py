"""Writing a GGUF safely and in bounded memory.

- gguf-py's ``GGUFWriter`` writes the header, metadata and tensor directory; the tensor data
  is then streamed by us, a slice of rows at a time (read -> float32 -> transform -> encode ->
  write), so peak memory is a few slices whatever the model's size.
- Output goes to a hidden temporary file beside OUT and is renamed over it only at the end:
  an interrupted or failed run leaves nothing at OUT, and an existing OUT is kept unless
  ``force``. Free disk space is checked before anything is written.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gguf
import numpy as np

from ..errors import EdgesrmError

SLICE_ELEMENTS = 4 * 2**20  # rows are converted in slices of about this many values (16 MiB as f32)
F16_MAX = 65504.0
DISK_MARGIN = 64 * 2**20

F32, F16, BF16, Q8_0 = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                        gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.Q8_0)
STORAGE_TYPES = {"F32": F32, "F16": F16, "BF16": BF16}

Warn = Callable[[str], None]


class Source(Protocol):
    """Rows of a 1-D or 2-D tensor, read on demand (a safetensors ``TensorRef`` or an array)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def read_raw(self, start: int, stop: int) -> np.ndarray: ...
    def read_rows(self, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ArraySource:
    """A tensor computed by the converter (Llama 3's rope frequencies)."""

    name: str
    array: np.ndarray

    @property
    def dtype(self) -> str:
        return "F32"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=np.float32).reshape(-1)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=np.float32)


Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OutTensor:
    """One GGUF tensor: where its rows come from, how they change, how they are stored."""

    name: str
    source: Source
    shape: tuple[int, ...]  # numpy order; shape[0] <= source rows (extra source rows are dropped)
    qtype: gguf.GGMLQuantizationType
    transform: Transform | None = None  # applied to float32 slices of whole row blocks
    row_block: int = 1  # slices start and end on multiples of this many rows

    @property
    def nbytes(self) -> int:
        return math.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype))


def encode(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, qtype)  # BF16 (rounded to nearest even), Q8_0


def check_destination(out: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Fail before any work if OUT cannot or must not be written: also when it is one of
    ``inputs`` (with or without ``force``: the input would be destroyed)."""
    for source in inputs:
        if out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise EdgesrmError(f"the output {out} is the input {source}: choose another output file")
    if out.is_dir():
        raise EdgesrmError(f"{out} is a directory; give the output file name, e.g. {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise EdgesrmError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.exists() and not force:
        raise EdgesrmError(f"{out} already exists; pass force=True to overwrite it",
                           cli=f"{out} already exists; pass --force to overwrite it")
    if not os.access(out.parent, os.W_OK):
        raise EdgesrmError(f"cannot write {out}: directory {out.parent} is not writable")


def check_free_space(directory: Path, need: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < need + DISK_MARGIN:
        raise EdgesrmError(f"not enough disk space in {directory}: the output needs about "
                           f"{_size(need)} and {_size(free)} is free")


def remove_stale(directory: Path, pattern: str, *, min_age_s: float = 600.0) -> None:
    """Remove what edgesrm processes killed without a chance to clean up (SIGKILL, the OOM killer)
    left in ``directory``: the files and directories whose name matches ``pattern`` (a regular
    expression whose first group is the pid that made them) when no process has that pid now and
    nothing in them changed for ``min_age_s`` seconds (a process of another PID namespace, e.g. a
    container sharing the directory, may still be writing)."""
    import time

    import psutil

    regex = re.compile(pattern)
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return
    for entry in entries:
        match = regex.fullmatch(entry.name)
        if match is None or psutil.pid_exists(int(match.group(1))):
            continue
        try:
            changed = max([entry.stat().st_mtime] + ([e.stat().st_mtime for e in entry.iterdir()]
                                                     if entry.is_dir() else []))
        except OSError:
            continue
        if time.time() - changed < min_age_s:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextmanager
def atomic_output(out: Path, *, force: bool, need_bytes: int) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` if the block succeeds. The
    temporary name carries the pid, so that one a killed process left is removed here."""
    check_destination(out, force)
    remove_stale(out.parent, rf"\.{re.escape(out.name)}\.(\d+)\.partial")
    check_free_space(out.parent, need_bytes)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        if out.exists() and not force:  # appeared while we worked
            raise EdgesrmError(f"{out} appeared during the conversion; it was left alone (force=True overwrites it)",
                               cli=f"{out} appeared during the conversion; it was left alone (--force overwrites it)")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(path: Path, writer: gguf.GGUFWriter, tensors: list[OutTensor], *, progress: bool = True,
               warn: Warn | None = None) -> None:
    """Write ``writer``'s metadata and ``tensors`` (streamed) to ``path``."""
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    total = sum(t.nbytes for t in tensors)
    warn = warn or _stderr_warning
    bar = _progress(total, len(tensors), progress)
    try:
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        out = writer.fout[0]
        writer.write_padding(out, out.tell())
        for i, tensor in enumerate(tensors):
            if bar is not None:
                bar.set_description(f"tensor {i + 1}/{len(tensors)}", refresh=False)
            written = _write_tensor(out, tensor, warn, bar)
            assert written == tensor.nbytes, (tensor.name, written, tensor.nbytes)
            writer.write_padding(out, written)
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise EdgesrmError(f"writing {path.name} failed: {exc.strerror or exc}") from None
    finally:
        writer.close()
        if bar is not None:
            bar.close()


def _write_tensor(out, tensor: OutTensor, warn: Warn, bar) -> int:
    src = tensor.source
    rows = tensor.shape[0] if tensor.shape else 1
    per_row = math.prod(tensor.shape[1:]) if len(tensor.shape) > 1 else 1
    step = max(1, SLICE_ELEMENTS // max(per_row, 1) // tensor.row_block) * tensor.row_block
    passthrough = tensor.transform is None and STORAGE_TYPES.get(src.dtype) == tensor.qtype
    nonfinite = overflow = False
    written = 0
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        if passthrough:  # same type in and out: copy the bytes, only look for NaN/Inf
            data = src.read_raw(start, stop)
            nonfinite = nonfinite or _has_nonfinite(data, src.dtype)
        else:
            x = src.read_rows(start, stop)
            if tensor.transform is not None:
                x = tensor.transform(x)
            lo, hi = float(x.min()), float(x.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                nonfinite = True
            elif tensor.qtype == F16 and max(-lo, hi) > F16_MAX:
                overflow = True
            data = encode(x, tensor.qtype)
        out.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        written += data.nbytes
        if bar is not None:
            bar.update(data.nbytes)
    if nonfinite:
        warn(f"tensor {src.name} contains NaN or Inf values; the converted model may produce garbage")
    if overflow:
        warn(f"tensor {src.name} has values beyond the float16 range (±65504) that became Inf; "
             "convert with --outtype bf16 or f32 instead")
    return written


def _has_nonfinite(raw: np.ndarray, dtype: str) -> bool:
    if dtype == "BF16":  # exponent bits all ones: Inf or NaN
        return bool(((raw & 0x7F80) == 0x7F80).any())
    return not bool(np.isfinite(raw).all())


def _progress(total: int, n_tensors: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: only draw on a terminal, so logs and pipes stay clean.
    return tqdm(total=total, desc=f"tensor 0/{n_tensors}", unit="B", unit_scale=True, unit_divisor=1024,
                disable=None, file=sys.stderr, leave=True, dynamic_ncols=True)


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
