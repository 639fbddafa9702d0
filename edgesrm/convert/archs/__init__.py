"""The supported model families, keyed by config.json ``architectures``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import EdgesrmError
from .base import OUTTYPES, Decoder
from .gemma3 import Gemma3, Gemma3ConditionalGeneration
from .llama import Llama
from .qwen2 import Qwen2
from .qwen3 import Qwen3

FAMILIES: dict[str, type[Decoder]] = {
    name: family for family in (Llama, Qwen2, Qwen3, Gemma3, Gemma3ConditionalGeneration) for name in family.hf_architectures
}


def family_for(config: Mapping[str, Any], directory: Path) -> Decoder:
    """The family that converts this config, or an error that lists the supported ones."""
    names = config.get("architectures") or []
    if isinstance(names, str):
        names = [names]
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name](config, directory)
    found = ", ".join(map(str, names)) or "none listed"
    raise EdgesrmError(f"unsupported architecture ({found}) in {directory / 'config.json'}; "
                       f"edgesrm converts {', '.join(FAMILIES)}")


__all__ = ["FAMILIES", "OUTTYPES", "Decoder", "family_for"]
