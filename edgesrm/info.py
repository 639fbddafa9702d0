"""What a GGUF file holds, read from its header without loading the weights."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass
from pathlib import Path

from .chat import ChatFormat
from .models import read_gguf, resolve_model


@dataclass(frozen=True)
class ModelInfo:
    path: str
    name: str
    architecture: str
    parameters: int
    quantization: str
    file_bytes: int
    context_length: int | None
    vocab_size: int
    chat_template: bool
    thinking: bool

    def to_dict(self) -> dict:
        return asdict(self)


def model_info(model: str | Path | None) -> ModelInfo:
    """Summarise a GGUF file (``None``: the embedded default model)."""
    import gguf

    path = resolve_model(model)
    reader = read_gguf(path)

    def field(key: str, default=None):
        f = reader.get_field(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture", "unknown")
    file_type = field("general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = None
    if quant is None:  # older files: name the most common tensor type
        quant = collections.Counter(t.tensor_type.name for t in reader.tensors).most_common(1)[0][0]
    tokens = reader.get_field("tokenizer.ggml.tokens")
    template = field("tokenizer.chat_template")
    return ModelInfo(
        path=str(path),
        name=field("general.name", path.stem),
        architecture=arch,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        quantization=quant,
        file_bytes=path.stat().st_size,
        context_length=field(f"{arch}.context_length"),
        vocab_size=len(tokens.data) if tokens is not None else 0,
        chat_template=template is not None,
        thinking=ChatFormat(template).thinking,
    )
