"""edgesrm: run small reasoning models on the edge, with llama.cpp.

    import edgesrm
    rt = edgesrm.load()                 # the embedded SmolLM2-135M-Instruct
    result = rt.ask("What is 12 * 7?")
    print(result.reasoning, result.answer)
"""

from .errors import EdgesrmError
from .runtime import AskResult, Runtime, load

__version__ = "0.1.0"
__all__ = ["load", "Runtime", "AskResult", "EdgesrmError", "__version__"]
