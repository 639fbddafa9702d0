"""Final answers: found in a reply, normalised so that equal answers compare equal, voted on.

Where a reply states its answer, in order of trust: ``\\boxed{...}``, GSM8K's ``#### x``,
a ``Final answer:`` line, "the answer is x", then (for free text) its last number.
Normalisation makes "1,000", "$1000.00" and "1000 dollars" the same answer, and "(b)" the
same as "B".
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})(?:\s*/\s*\d+)?")
_MARKERS = [
    re.compile(r"####\s*(.+)"),
    re.compile(r"final\s+answer\s*(?:is)?\s*[:：]?\s*(.+)", re.IGNORECASE),
    re.compile(r"the\s+(?:correct\s+)?answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE),
    re.compile(r"^\s*answer\s*[:：]\s*(.+)", re.IGNORECASE | re.MULTILINE),
]
_CHOICE_RE = re.compile(r"^(?:\(([A-Ea-e])\)|([A-Ea-e])(?:[.):](?:\s|$)|$))")
_FRAC_LATEX_RE = re.compile(r"\\d?frac\{(-?\d+)\}\{(-?\d+)\}")


def extract_answer(text: str) -> str | None:
    """The answer a reply states, as written (not yet normalised), or None."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in _MARKERS:
        matches = pattern.findall(text)
        if matches:
            answer = matches[-1].strip().strip("*").strip()
            if answer:
                return answer.splitlines()[0].strip()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


def normalize(answer: str | None) -> str | None:
    """A canonical form: numbers as plain decimals ("1,000.50" -> "1000.5"), choices as "B",
    anything else lower-cased without surrounding punctuation."""
    if answer is None:
        return None
    text = answer.strip()
    text = _FRAC_LATEX_RE.sub(r"\1/\2", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "")
    text = re.sub(r"\\(?:text|mathrm|textbf)\{([^}]*)\}", r"\1", text)
    choice = _CHOICE_RE.match(text)
    if choice:
        return (choice.group(1) or choice.group(2)).upper()
    number = _NUMBER_RE.search(text)
    if number:
        value = _to_number(number.group(0))
        if value is not None:
            return _format_number(value)
    cleaned = re.sub(r"\s+", " ", text).strip(" .,;:!*\"'`").lower()
    return cleaned or None


def answers_match(predicted: str | None, gold: str | None) -> bool:
    a, b = normalize(predicted), normalize(gold)
    if a is None or b is None:
        return False
    if a == b:
        return True
    x, y = _to_number(a), _to_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def vote(answers: Iterable[str | None], weights: Iterable[float] | None = None) -> tuple[str | None, dict[str, float]]:
    """Majority (or weighted) vote over normalised answers; None answers do not vote.

    Returns the winner and the tally, largest first; ties go to the answer seen first.
    """
    answers = list(answers)
    weights = list(weights) if weights is not None else [1.0] * len(answers)
    tally: dict[str, float] = defaultdict(float)
    for answer, weight in zip(answers, weights):
        if answer is not None:
            tally[answer] += weight
    ordered = dict(sorted(tally.items(), key=lambda kv: -kv[1]))  # stable: first seen wins ties
    return (next(iter(ordered)) if ordered else None), ordered


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _to_number(text: str) -> float | None:
    text = text.replace(",", "").replace(" ", "")
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(Fraction(int(num), int(den)))
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")
