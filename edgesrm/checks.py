"""Checks of numeric arguments, and the limits they are checked against.

Every number a user gives edgesrm (CLI options, ``edgesrm.load``, ``Runtime.ask``,
``Budget``, ``SamplingParams``, ``EngineConfig``) goes through ``check_int`` or
``check_number`` before it reaches llama.cpp: a value of the wrong type (``True`` is not
an integer here, ``2.0`` is not one either), not finite (``nan``, ``inf``) or out of range
is one ``EdgesrmError`` naming the argument and what it allows.

The upper limits are where a larger value would crash llama.cpp or allocate absurdly.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from .errors import EdgesrmError

MIN_CTX = 16
# 262,144 tokens: twice the longest context of the small models edgesrm runs; past it the KV
# cache alone is many GB (llama.cpp's n_ctx is 32-bit: 10**12 would wrap around).
MAX_CTX = 1 << 18
MAX_TOKENS = MAX_CTX  # tokens per path: a path never outgrows the context
MAX_SEQUENCES = 255  # llama.cpp holds at most 256 sequences; one is the shared prompt's
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS (more aborts the process)
INT32_MAX = 2**31 - 1  # what llama.cpp's int32 parameters hold
MAX_SEED = 2**32 - 2  # 2**32 - 1 is llama.cpp's "random seed"


def check_int(name: str, value: object, low: int, high: int, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer in ``[low, high]`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high:
        return int(value)
    raise EdgesrmError(f"{name} must be an integer from {low:,} to {high:,}, got {show(value)}")


def check_number(
    name: str, value: object, low: float | None = None, high: float | None = None, *, low_open: bool = False,
    high_open: bool = False, optional: bool = False, unit: str = "",
) -> float | None:
    """``value`` as a ``float`` if it is a finite real number within the bounds given."""
    if value is None and optional:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if (
            math.isfinite(number)
            and (low is None or (number > low if low_open else number >= low))
            and (high is None or (number < high if high_open else number <= high))
        ):
            return number
    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        allowed = "a finite number"
    raise EdgesrmError(f"{name} must be {allowed}{unit}, got {show(value)}")


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path`` (``~`` expanded). Raises ``EdgesrmError`` (one line) when it
    cannot be read or is not UTF-8."""
    path = Path(path).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgesrmError(f"cannot read {path} as UTF-8 text: {exc}") from None


def show(value: object) -> str:
    """``value`` as an error message quotes it (short)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
