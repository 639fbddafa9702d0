"""The llama.cpp engine: many sequences per decode step over one shared prompt."""

from .backend import BackendReport, backend_report, set_verbose
from .engine import CONTEXT, DROPPED, EOS, LENGTH, STOP, Engine, EngineConfig, Generation, Sequence, Timings
from .sampling import GREEDY, SamplingParams
from .scheduler import Cancelled, QueueFull, Scheduler, ShuttingDown

__all__ = [
    "BackendReport", "backend_report", "set_verbose",
    "Engine", "EngineConfig", "Generation", "Sequence", "Timings",
    "SamplingParams", "GREEDY",
    "EOS", "STOP", "LENGTH", "CONTEXT", "DROPPED",
]
