"""A lazy safetensors reader: headers are parsed up front, tensor bytes are read on demand.

We read with plain ``readinto`` into small buffers rather than memory-mapping: pages of a
mapped file count towards the process's resident memory once touched, so streaming a model
through a mapping would make peak memory grow with model size. Here a converter holds one
slice of one tensor at a time.

The format: 8 bytes of little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), then the tensor bytes. Every claim of the header is checked against the file, so
a truncated download or a damaged header is one clear error, not a crash mid-conversion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgesrmError

# dtypes we can convert, with their width in bytes.
FLOAT_DTYPES: dict[str, int] = {"F32": 4, "F16": 2, "BF16": 2}
# dtypes we can recognise (to check the header's sizes) but not convert.
OTHER_DTYPES: dict[str, int] = {
    "F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}
MAX_HEADER_BYTES = 100 * 2**20  # the reference implementation's own limit

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are; nothing is read until ``read_rows``."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first byte in the file
    nbytes: int

    @property
    def rows(self) -> int:
        """Length of the first axis (1-D tensors: their length; scalars: 1)."""
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def check_convertible(self) -> None:
        if self.dtype not in FLOAT_DTYPES:
            raise EdgesrmError(
                f"tensor {self.name} in {self.path.name} has dtype {self.dtype}, which edgesrm cannot convert "
                f"(supported: {', '.join(FLOAT_DTYPES)}); dequantize the checkpoint first"
            )

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in the stored dtype (``np.uint16`` for BF16), flat."""
        width = FLOAT_DTYPES[self.dtype]
        per_row = self.row_elements * width
        count = (stop - start) * self.row_elements
        storage = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[self.dtype]
        out = np.empty(count, dtype=storage)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * per_row)
            got = f.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise EdgesrmError(f"{self.path} was truncated while reading tensor {self.name}")
        return out

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32, shaped ``(stop - start, *shape[1:])``."""
        return to_float32(self.read_raw(start, stop), self.dtype).reshape((stop - start, *self.shape[1:]))


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored values to float32; bfloat16 is the top half of a float32, so this is exact."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check one safetensors file's header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise EdgesrmError(f"{path} is not a safetensors file: it is only {size} bytes long")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise EdgesrmError(
                    f"{path} is truncated or not a safetensors file "
                    f"(its header claims {header_len:,} bytes; the file has {size:,})"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgesrmError(f"{path} is corrupt: its safetensors header is not valid JSON ({exc})") from None

    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorRef] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_ref(path, name, entry, data_start)
    end = max((t.offset + t.nbytes - data_start for t in tensors.values()), default=0)
    if end > data_size:
        raise EdgesrmError(
            f"{path} is truncated: its header describes {end:,} bytes of tensor data but the file holds {data_size:,}"
        )
    return tensors


def _tensor_ref(path: Path, name: str, entry: object, data_start: int) -> TensorRef:
    def corrupt(why: str) -> EdgesrmError:
        return EdgesrmError(f"{path} is corrupt: tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise corrupt("has no dtype/shape/offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    width = FLOAT_DTYPES.get(dtype) or OTHER_DTYPES.get(dtype)  # type: ignore[arg-type]
    if width is None:
        raise corrupt(f"has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise corrupt(f"has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise corrupt(f"has invalid data offsets {offsets!r}")
    nbytes = offsets[1] - offsets[0]
    expected = math.prod(shape) * width
    if dtype in ("F4", "F6_E2M3", "F6_E3M2"):  # packed sub-byte types: size not checked
        expected = nbytes
    if nbytes != expected:
        raise corrupt(f"spans {nbytes:,} bytes but its shape {shape} and dtype {dtype} need {expected:,}")
    return TensorRef(name, path, dtype, tuple(shape), data_start + offsets[0], nbytes)


def open_checkpoint(directory: Path) -> dict[str, TensorRef]:
    """Every tensor of a checkpoint directory: one file, or shards listed in the index."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise EdgesrmError(f"{index} is corrupt: it has no valid weight_map") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise EdgesrmError(f"{directory} is missing weight shard(s) listed in {INDEX_FILE}: {', '.join(missing)}")
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            hint = ""
            if any(directory.glob("*.bin")) or any(directory.glob("*.pt*")):
                hint = " (it has PyTorch .bin weights: save the model with safe_serialization=True first)"
            raise EdgesrmError(f"no weights in {directory}: expected {SINGLE_FILE} or {INDEX_FILE}{hint}")
        weight_map = None

    tensors: dict[str, TensorRef] = {}
    for file in files:
        for name, ref in read_header(directory / file).items():
            if weight_map is not None and weight_map.get(name) != file:
                continue  # listed elsewhere (or not at all): the index decides
            if name in tensors:
                raise EdgesrmError(f"tensor {name} appears in both {tensors[name].path.name} and {file}")
            tensors[name] = ref
    if weight_map is not None:
        absent = [n for n, f in weight_map.items() if n not in tensors]
        if absent:
            raise EdgesrmError(f"{INDEX_FILE} lists {absent[0]} in {weight_map[absent[0]]}, but that file does not hold it")
    return tensors
