"""edgesrm: run small reasoning models on the edge, with llama.cpp.

    import edgesrm
    rt = edgesrm.load()                 # the embedded SmolLM2-135M-Instruct
    result = rt.ask("What is 12 * 7?")
    print(result.reasoning, result.answer)
"""

from .errors import EdgesrmError
from .budget import Budget
from .runtime import Runtime, load
from .session import ChatSession
from .strategies import Result

__version__ = "0.1.0"
__all__ = ["load", "Runtime", "ChatSession", "Result", "Budget", "EdgesrmError", "__version__"]
