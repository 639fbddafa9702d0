"""edgesrm: run small reasoning models on the edge, with llama.cpp.

    import edgesrm
    rt = edgesrm.load()                 # the embedded SmolLM2-135M-Instruct
    result = rt.ask("What is 12 * 7?")
    print(result.reasoning, result.answer)

The names below are imported when first used (PEP 562), so that ``edgesrm pull`` or
``edgesrm list`` do not load llama.cpp, numpy and the strategies they never use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import EdgesrmError

__version__ = "0.1.0"
__all__ = ["load", "Runtime", "ChatSession", "Result", "Budget", "EdgesrmError", "__version__"]

_LAZY = {"load": ".runtime", "Runtime": ".runtime", "ChatSession": ".session", "Result": ".strategies",
         "Budget": ".budget"}

if TYPE_CHECKING:
    from .budget import Budget
    from .runtime import Runtime, load
    from .session import ChatSession
    from .strategies import Result


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgesrm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
