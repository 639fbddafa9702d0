"""What a GGUF file holds, read from its header without loading the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .chat import ChatFormat
from .errors import EdgesrmError
from .models import check_complete, file_quantization, read_header, resolve_model


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
    # What the chat template accepts (ChatFormat.capabilities), None without a template.
    system_role: bool | None = None
    alternating_roles: bool | None = None
    reasoning_in_history: bool | None = None
    template_error: str | None = None  # the template does not parse or render

    def to_dict(self) -> dict:
        return asdict(self)


def model_info(model: str | Path | None) -> ModelInfo:
    """Summarise a GGUF file (``None``: the embedded default model)."""
    path = resolve_model(model)
    header = read_header(path)
    check_complete(path, header)
    meta = header.metadata
    arch = str(meta.get("general.architecture", "unknown"))
    quant = file_quantization(header)
    template = meta.get("tokenizer.chat_template")
    fmt = ChatFormat(template if isinstance(template, str) else None)
    caps, error = {}, None
    if fmt.has_template:
        try:
            fmt.render([{"role": "user", "content": "hi"}])
            caps = asdict(fmt.capabilities)
        except EdgesrmError as exc:
            error = str(exc)
    return ModelInfo(
        path=str(path),
        name=str(meta.get("general.name", path.stem)),
        architecture=arch,
        parameters=sum(t.n_elements for t in header.tensors),
        quantization=quant,
        file_bytes=path.stat().st_size,
        context_length=meta.get(f"{arch}.context_length"),
        vocab_size=int(meta.get("tokenizer.ggml.tokens", 0)),
        chat_template=isinstance(template, str),
        thinking=fmt.thinking,
        template_error=error,
        **caps,
    )
