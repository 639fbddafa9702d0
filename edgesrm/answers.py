"""Final answers: found in a reply, normalised so that equal answers compare equal, voted on, graded.

**Extraction** (``extract_answer``). A reply states its answer with ``\\boxed{...}``, GSM8K's
``#### x``, a ``Final answer:`` line, "the (correct) answer is x", "the correct option is x" or an
``Answer:`` line; with none of those, its last number is taken. The last answer a reply states is
its answer: "The answer is 12. Actually, the correct answer is 14." answers 14.

**Normalisation** (``normalize``) writes every form of one answer as one string; the vote groups
answers by it.

- Numbers are evaluated exactly and written as plain decimals ("-5", "0.5", "1500",
  "11111111100"): integers exactly, other values rounded to 6 decimals (6 significant digits
  below 1), so 1/3, 0.333333 and 0.3333333 are all "0.333333". Understood: thousands separators
  of every style (``1,000``, ``1 000``, ``1\\,000``, ``1{,}000``, ``11,\\!111``, ``1'000``, thin
  and narrow no-break spaces, ``1.000.000`` when there are two or more dot groups), Unicode
  minus and plus signs and every Unicode decimal digit (fullwidth, Arabic-Indic...), fractions
  (``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``, ``\\frac3{4}``, mixed ``1\\frac{4}{5}`` and ``1 1/2``),
  scientific notation (``1.5e3``, ``1.5×10^3``, ``1.5 \\times 10^{3}``), integer powers
  (``2^{10}``), square roots with a rational result (``\\sqrt{16}``), arithmetic (``16 - 3 - 4 =
  9`` is its last value), currency, percent ("75%" is 75), degrees, magnitude words (``3
  million``, ``2.5 thousand``), units and trailing words ("10 apples", "5.4 \\text{ cents}"),
  a leading assignment ("x = 5"), and, in a sentence, its first number ("Janet makes $18").
  "dozen" is left as a word (it is a count's unit as often as a multiplier).
- A number followed by anything that is not a unit or a word (``3\\sqrt{13}``, ``2k``,
  ``6 - 5i``, ``52_8``) is not a number: it stays an expression.
- Choices: ``(b)``, ``B)``, ``B.``, ``option B``, ``\\text{(B)}`` and a bare letter A-E are "B".
- A bare list of numbers is sorted: "1,-2" and "-2, 1" are "-2, 1".
- Words are lower-cased ("\\text{Evelyn}" is "evelyn"); any other expression keeps its LaTeX
  with ``$``, ``\\left``/``\\right``, spacing commands, ``\\text`` wrappers and needless spaces
  removed and ``\\dfrac``, ``\\sqrt2``, ``x^{2}`` written one way.

**Equality** (``answers_match``) is equality of the normalised strings: exactly the vote's
grouping, dependency-free and fast.

**Grading** (``grade``, what ``edgesrm eval`` scores with) follows ``answers_match`` where edgesrm
is confident and asks Hugging Face's Math-Verify where it is not:

1. the normalised strings are equal: correct;
2. both are numbers, base-b numerals (``52_8``), choices, words or lists of numbers (edgesrm
   decides these, and is right where Math-Verify is not: U+2212 minus signs, fullwidth digits,
   ``1 000``, ``1.5e3``, ``3 million``, choice letters, ``52_8`` against 52): wrong;
3. otherwise (an expression, interval, set, matrix, equation... on either side, e.g.
   ``\\frac{\\sqrt{3}}{2}`` against ``\\frac{1}{2}\\sqrt{3}``): ``math_verify.verify`` of the two
   normalised answers, each parsed as ``$...$``. Math-Verify (and sympy) is imported only here,
   and only then; without it installed, such answers are wrong (the rule of ``answers_match``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction

from .errors import EdgesrmError

__all__ = ["answers_match", "extract_answer", "grade", "normalize", "vote"]

# ---------------------------------------------------------------------------------------------
# Extraction


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_MARKER_RE = re.compile(
    r"####"
    r"|\bfinal\s+answer\b(?:\s+is\b)?"
    r"|\b(?:correct\s+|right\s+|final\s+)?(?:answer|option|choice)\s+(?:is|would\s+be|will\s+be|should\s+be)\b"
    r"|^[ \t>#*_]*answer\b(?=[ \t*_]*[:：])",
    re.IGNORECASE | re.MULTILINE,
)
_AFTER_MARKER_RE = re.compile(r"[\s*_:：=]*")  # "Final answer: 22", "final answer = 22"
_NOT_AN_ANSWER_START = frozenset(").,;!?]}")
_JUNK_WORDS = frozenset(
    "correct incorrect right wrong not based that this because as consistent reasonable clear "
    "clearly obvious obviously indeed still also likely probably definitely in on given shown "
    "above below following unclear unknown same different".split()
)
_NUMBER_BODY = (
    r"\d{1,3}(?:(?:,\\!\s?|,|\\,|\{,\}|[ \u2009\u202f\u00a0'’])\d{3})+(?!\d)(?:\.\d+)?"
    r"|\d{1,3}(?:\.\d{3}){2,}(?![\d.])"
    r"|\d+(?:\.\d+)?"
    r"|\.\d+"
)
_LAST_NUMBER_RE = re.compile(
    r"(?<![\w.\\^_])(?:"
    r"\\[dt]?frac\s*(?:\{[^{}]{0,60}\}|\d)\s*(?:\{[^{}]{0,60}\}|\d)"
    r"|(?:\d+\s*)?\\sqrt\s*(?:\{[^{}]{0,60}\}|\d)"
    rf"|[-−－+＋]?(?:{_NUMBER_BODY})"
    r"(?:\s*/\s*\d+(?![\d.]))?"
    r"(?:[eE][-+]?\d+(?!\w)|\s*(?:×|\\times|\*|·|\\cdot)\s*10\s*\^\s*\{?[-−+]?\d+\}?|\^\{?\d+\}?)?"
    r"(?:\s+(?:thousand|million|billion|trillion)\b)?"
    r")"
)


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    """The answer a reply states, as written (not yet normalised), or None.

    The last statement wins: the later of the last complete ``\\boxed{...}`` and the last answer
    marker (``####``, ``Final answer:``, "the answer is", ``Answer:``, "the correct option is"),
    whose answer is the rest of its line. Without either, the reply's last number (a fraction,
    root, power, scientific notation, thousands separators including single spaces: "1 000"),
    unless ``last_number`` is False.
    Runs in time linear in the length of ``text``. Raises ``EdgesrmError`` if ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise EdgesrmError(f"extract_answer takes text (a str), got {type(text).__name__}")
    if not text:
        return None
    boxed_at, boxed = _last_boxed(text)
    marker_at, marker = _last_marker(text)
    if boxed is not None and boxed_at > marker_at:
        return boxed
    if marker is not None:
        return marker
    if not last_number:
        return None
    found = None
    for found in _LAST_NUMBER_RE.finditer(text):
        pass
    return found.group(0).strip() if found else None


def _last_boxed(text: str) -> tuple[int, str | None]:
    """Position and contents of the last complete, non-empty ``\\boxed{...}``."""
    starts = [m for m in _BOXED_RE.finditer(text)]
    if not starts:
        return -1, None
    closing: dict[int, int] = {}  # position of "{" -> position of its "}"
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text, starts[0].end() - 1):
        if m.group(0) == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for m in reversed(starts):
        end = closing.get(m.end() - 1)
        if end is not None and text[m.end() : end].strip():
            return m.start(), text[m.end() : end].strip()
    return -1, None


def _last_marker(text: str) -> tuple[int, str | None]:
    """Position and answer of the last answer marker followed by a plausible answer."""
    for m in reversed(list(_MARKER_RE.finditer(text))):
        start = _AFTER_MARKER_RE.match(text, m.end()).end()
        head = text[start : start + 200].split("\n", 1)[0].strip().strip("*").strip()
        if head and _plausible(head):  # judged on its start: linear time however many markers
            end = text.find("\n", start)
            return m.start(), text[start : end if end >= 0 else len(text)].strip().strip("*").strip()
    return -1, None


def _plausible(answer: str) -> bool:
    """An answer, not a remark ("the answer is correct", "the answer is based on...") nor the
    rest of a sentence that names the marker ("... (final answer) = 22", "... is the final answer.")."""
    if answer[0] in _NOT_AN_ANSWER_START and not answer[1:2].isdigit():  # ".5" is an answer
        return False
    words = answer.split(maxsplit=9)
    if words[0].lower().strip(".,:;!*") in _JUNK_WORDS:
        return False
    return len(words) <= 8 or any(c.isdigit() for c in answer)


# ---------------------------------------------------------------------------------------------
# Normalisation


class _Fold(dict):
    """str.translate table: Unicode digits, signs and spaces to ASCII (computed once per char)."""

    _FIXED = {
        "\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-",
        "\ufe62": "+", "\uff0b": "+", "\u2019": "'", "\u2032": "'", "\uff07": "'",
        "\u00a0": " ", "\u2007": " ", "\u2008": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ",
        "\u3000": " ", "\u200b": "", "\u2060": "", "\ufeff": "", "\u00b7": "·", "\u22c5": "·",
        "\u2217": "*",
    }

    def __missing__(self, code: int) -> str | int:
        ch = chr(code)
        if ch in self._FIXED:
            value: str | int = self._FIXED[ch]
        elif 0xFF01 <= code <= 0xFF5E:  # fullwidth ASCII
            value = chr(code - 0xFEE0)
        else:
            digit = unicodedata.decimal(ch, None) if code > 127 else None
            value = str(digit) if digit is not None else code
        self[code] = value
        return value


_FOLD = _Fold()
_SUPERSCRIPT_RE = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")

_A = re.ASCII
_DOLLAR_RE = re.compile(r"\\\$|\$|\\[()\[\]]|[€£¥₹₩]")
_THIN_RE = re.compile(r",\\!\s*")
_SPACING_RE = re.compile(r"(?<!\\)\\(?:[,;:> ]|q?quad(?![a-zA-Z]))|~")  # a row break (two backslashes) then a space is not spacing
_SIZING_RE = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?|\\(?:display|text)style(?![a-zA-Z])|\\!")
_UNWRAP = frozenset(
    "text textbf textit textrm textnormal textup mathrm mathbf mathit mathsf mathbb mbox hbox "
    "boxed fbox displaystyle".split()
)
_COMMAND_BRACE_RE = re.compile(r"\\([a-zA-Z]+)\s*\{|[{}]")
_FRAC_NAME_RE = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degrees?(?![a-zA-Z])|°")
_SPACES_RE = re.compile(r"\s+")
_EDGES = " .,;:!?*`\"'"
_LEADING_EDGE_RE = re.compile(r"(?:[ ,;:!?*`\"']|\.(?!\d))*")

_CHOICE_RES = (
    re.compile(r"(?:option|choice)\s*:?\s*[(\[]?([A-J])[)\]]?(?=$|[\s.,;:!?])", re.IGNORECASE | _A),
    re.compile(r"\(([A-J])\)|\[([A-J])\]|([A-J])[.):](?=\s|$)", re.IGNORECASE | _A),
    re.compile(r"([A-E])$", re.IGNORECASE | _A),
)

_ASSIGN_RE = re.compile(r"^[A-Za-z](?:_\{?\w{1,3}\}?)?\s*(?:=(?!=)|\\in(?![a-zA-Z]))\s*(?=\S)", _A)
_NUM_RE = re.compile(
    r"(?:\d{1,3}(?:\.\d{3}){2,}(?![\d.,])"
    r"|(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:'\d{3})+(?!\d)|\d{1,3}(?: \d{3})+(?!\d)|\d+)(?:\.\d+)?"
    r"|\.\d+)"
    r"(?:[eE]([-+]?\d+)(?![\w.]))?",
    _A,
)
_MUL_RE = re.compile(  # group 1: times ("x" only in 1.5 x 10^3), group 2: divided by
    r"\s*(?:(\*|×|·|\\cdot(?![a-zA-Z])|\\times(?![a-zA-Z])|x(?=\s*10\s*\^))|(/|÷|\\div(?![a-zA-Z])))"
)
_MIXED_RE = re.compile(r" (\d+)\s*/\s*(\d+)(?![\d.])", _A)
_INT_RE = re.compile(r"[-+]?\d+", _A)
_MAGNITUDE_RE = re.compile(r"\s*(thousand|million|billion|trillion)(?![a-zA-Z])", re.IGNORECASE)
_MAGNITUDES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_TAIL_RE = re.compile(
    r"\s*(?:"
    r"[.;:!?)\]]*\s*$"  # end
    r"|[.,;:!?]\s+(?![-+]?\.?\d)"  # end of a clause: "12, which is..."
    r"|[(/]\s*[^\W\d_]{2}"  # "12 (twelve)", "5/hour"
    r"|(?<=\s)(?!(?:pi|sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp|mod|cdot|times|infty)\b)[^\W\d_]{2}"
    r"|(?:cm|mm|km|kg|mg|lbs?|oz|ft|mph|ml|hrs?|mins?|secs?|yds?|am|pm)(?![^\W\d_])"
    r")",
    re.IGNORECASE,
)
_PROSE_RE = re.compile(r"[^\W\d_]{2}")
_PROSE_NUMBER_RE = re.compile(r"(?:(?<=[^\W\d_]{2} )|(?<=[^\W\d_]{2}: ))(?:[-+]?\.?\d|\\frac)")
_MAX_BITS = 3000  # numbers beyond ~10^900 are not answers; keeps arithmetic bounded
_MAX_DEPTH = 60
_MAX_STEPS = 400  # operations in one answer; more is a sum someone pasted, not an answer


class _NotANumber(Exception):
    pass


def normalize(answer: str | None) -> str | None:
    """The canonical form of an answer (see the module's docstring), or None for no answer.

    Equal numbers give equal strings ("1,000.50" and "$1000.5" are "1000.5"), choices are one
    upper-case letter ("(b)" is "B"), words are lower-cased. ``normalize(normalize(x)) ==
    normalize(x)``. Never raises; time is linear in the answer's length.
    """
    if answer is None:
        return None
    text = str(answer)
    for _ in range(5):  # to a fixed point, so that normalize(normalize(x)) == normalize(x)
        result = _normalize_once(text)
        if result is None or result == text:
            return result
        text = result
    return None  # never seen: a form that keeps changing is no answer


def _normalize_once(answer: str) -> str | None:
    text = _clean(answer)
    if not text:
        return None
    choice = _choice(text)
    if choice:
        return choice
    value = _value(text)
    if value is not None:
        return _format_number(value)
    listed = _number_list(text)
    if listed is not None:
        return listed
    canonical = _canonical_text(text)
    return _radical(canonical) or canonical or None


_ROOT_MAX = 10**10  # radicands factored by trial division: up to 10^5 divisions
_RADICAL_RES = (  # (sign, coefficient, radicand, denominator) from the canonical text's forms
    (re.compile(r"(-?)(\d*)\\sqrt\{(\d+)\}"), lambda m: (m[1], m[2], m[3], "1")),  # 3\sqrt{13}
    (re.compile(r"(-?)\\frac\{(\d*)\\sqrt\{(\d+)\}\}\{(\d+)\}"), lambda m: (m[1], m[2], m[3], m[4])),
    (re.compile(r"(-?)\\frac\{(\d+)\}\{(\d+)\}\\sqrt\{(\d+)\}"), lambda m: (m[1], m[2], m[4], m[3])),
)


def _radical(text: str) -> str | None:
    """A rational multiple of a square root written one way, its radicand square-free:
    ``\\sqrt{117}`` and ``3\\sqrt{13}`` are ``3\\sqrt{13}``; ``\\frac{3}{4}\\sqrt{3}`` is
    ``\\frac{3\\sqrt{3}}{4}``; a root that is rational is that number. None for anything else."""
    for pattern, parts in _RADICAL_RES:
        match = pattern.fullmatch(text)
        if match:
            sign, coefficient, radicand, denominator = parts(match)
            break
    else:
        return None
    n, den = int(radicand), int(denominator)
    if not 0 < n <= _ROOT_MAX or den == 0:
        return None
    outside, i = 1, 2
    while i * i <= n:
        while n % (i * i) == 0:
            n //= i * i
            outside *= i
        i += 1
    value = Fraction(int(coefficient or 1) * outside, den) * (-1 if sign else 1)
    if n == 1:
        return _format_number(value)
    if value == 0:
        return "0"
    head = "-" if value < 0 else ""
    p, q = abs(value.numerator), value.denominator
    root = ("" if p == 1 else str(p)) + f"\\sqrt{{{n}}}"
    return head + (root if q == 1 else f"\\frac{{{root}}}{{{q}}}")


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Whether two answers are the same once normalised (the vote's notion of equal).

    Symmetric, dependency-free; None or an empty answer matches nothing.
    """
    a = normalize(predicted)
    return a is not None and a == normalize(gold)


def grade(predicted: str | None, gold: str | None) -> bool:
    """Whether ``predicted`` is a correct answer for ``gold``: what ``edgesrm eval`` scores.

    ``answers_match`` where edgesrm is confident (numbers, base-b numerals, choices, words or
    lists of numbers on both sides); otherwise Math-Verify's verdict on the two normalised answers (symbolic LaTeX:
    roots, expressions, intervals, sets, matrices). Math-Verify is imported here, lazily; if it
    is not installed, or fails or times out (5 s, only enforced in the main thread), the answer
    counts as wrong. Never raises.
    """
    a, b = normalize(predicted), normalize(gold)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if _SETTLED_RE.fullmatch(a) and _SETTLED_RE.fullmatch(b):
        return False
    return _math_verify_equal(b, a)


def vote(answers: Iterable[str | None], weights: Iterable[float] | None = None) -> tuple[str | None, dict[str, float]]:
    """Majority (or weighted) vote over normalised answers; None answers do not vote.

    Returns the winner and the tally, largest first; ties go to the answer seen first. Raises
    ``EdgesrmError`` when ``weights`` are not one finite, non-negative number per answer.
    """
    answers = list(answers)
    weights = list(weights) if weights is not None else [1.0] * len(answers)
    if len(weights) != len(answers) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights
    ):
        raise EdgesrmError("vote weights must be one finite, non-negative number per answer")
    tally: dict[str, float] = defaultdict(float)
    for answer, weight in zip(answers, weights):
        if answer is not None:
            tally[answer] += weight
    ordered = dict(sorted(tally.items(), key=lambda kv: -kv[1]))  # stable: first seen wins ties
    return (next(iter(ordered)) if ordered else None), ordered


# What normalize writes for numbers (base-b numerals like 52_8 too), choices, words and lists of
# numbers: edgesrm's own ground.
_DECIMAL = r"-?\d+(?:\.\d+)?"
_SETTLED_RE = re.compile(
    rf"{_DECIMAL}(?:, {_DECIMAL})*|[0-9A-Za-z]+_[0-9]+|[A-J]|[^\W\d_]+(?:[ '\-][^\W\d_]+)*"
)


def _math_verify_equal(gold: str, predicted: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    import threading

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        predicted_parsed = parse(f"${predicted}$", parsing_timeout=timeout)
        return bool(gold_parsed and predicted_parsed and verify(gold_parsed, predicted_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a grader that cannot decide says "wrong", it never stops an eval
        return False


def _clean(text: str) -> str:
    """Unicode folded to ASCII digits and signs; LaTeX delimiters, wrappers and spacing removed."""
    if not text.isascii():
        text = _SUPERSCRIPT_RE.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", text)
        text = text.translate(_FOLD)
    if "\\" in text or "$" in text or "{" in text or "~" in text:
        text = _DOLLAR_RE.sub("", text)
        text = _THIN_RE.sub(",", text)
        text = text.replace("{,}", ",").replace("\\%", "%")
        text = _SIZING_RE.sub("", text)
        text = _SPACING_RE.sub(" ", text)
        text = _unwrap(text)
        text = _FRAC_NAME_RE.sub(r"\\frac", text)
        text = _DEGREES_RE.sub("", text)
    else:
        text = _DOLLAR_RE.sub("", text).replace("°", "")
    text = text.replace("**", "").replace("`", "").replace("≈", "")
    return _strip_edges(_SPACES_RE.sub(" ", text))


def _strip_edges(text: str) -> str:
    """Surrounding spaces, quotes and punctuation, but not the point of ".5"."""
    text = text.rstrip(_EDGES)
    return text[_LEADING_EDGE_RE.match(text).end() :]


def _unwrap(text: str) -> str:
    """``\\text{x}``, ``\\boxed{x}``... -> ``x`` (nested too), in one pass."""
    out: list[str] = []
    stack: list[bool] = []
    last = 0
    for m in _COMMAND_BRACE_RE.finditer(text):
        name = m.group(1)
        if name is not None:
            drop = name in _UNWRAP
            if drop:
                out.append(text[last : m.start()])
                last = m.end()
            stack.append(drop)
        elif m.group(0) == "{":
            stack.append(False)
        elif stack and stack.pop():
            out.append(text[last : m.start()])
            last = m.end()
    out.append(text[last:])
    return "".join(out)


def _choice(text: str) -> str | None:
    for pattern in _CHOICE_RES:
        m = pattern.match(text)
        if m:
            return next(g for g in m.groups() if g).upper()
    return None


def _value(text: str) -> Fraction | None:
    """The number an answer states, exactly, or None if it is not (only) a number."""
    assigned = _ASSIGN_RE.match(text)
    value = _number_at(text, assigned.end() if assigned else 0)
    if value is None and _PROSE_RE.match(text):  # a sentence: its first number
        first = _PROSE_NUMBER_RE.search(text)
        if first:
            value = _number_at(text, first.start())
    return value


def _number_at(text: str, start: int) -> Fraction | None:
    """The value of the arithmetic at ``text[start:]``, if only a unit or words follow it."""
    parser = _Parser(text, start)
    try:
        value = parser.expression()
        while text.startswith("=", parser.skip_spaces()) and not text.startswith("==", parser.i):
            parser.i += 1  # "16 - 3 - 4 = 9": the last value
            value = parser.expression()
        if text.startswith("%", parser.skip_spaces()):
            parser.i += 1  # "75%" is 75 (GSM8K's convention; Math-Verify accepts 75 and 0.75)
        magnitude = _MAGNITUDE_RE.match(text, parser.i)
        if magnitude:
            value = _bounded(value * _MAGNITUDES[magnitude.group(1).lower()])
            parser.i = magnitude.end()
    except (_NotANumber, ArithmeticError, ValueError, RecursionError):
        return None
    return value if _TAIL_RE.match(text, parser.i) else None


def _bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > _MAX_BITS or value.denominator.bit_length() > _MAX_BITS:
        raise _NotANumber
    return value


class _Parser:
    """Recursive descent over + - * / × ÷ \\cdot \\times ^ \\frac \\sqrt ( ) { } and numbers."""

    def __init__(self, text: str, start: int) -> None:
        self.text, self.i, self.depth, self.steps = text, start, 0, 0

    def skip_spaces(self) -> int:
        while self.i < len(self.text) and self.text[self.i] == " ":
            self.i += 1
        return self.i

    def expression(self) -> Fraction:
        value = self.term()
        while True:
            save = self.skip_spaces()
            if self.text.startswith(("+", "-"), self.i):
                self.i += 1
                right = self.term()
                value = _bounded(value + right if self.text[save] == "+" else value - right)
            else:
                self.i = save
                return value

    def term(self) -> Fraction:
        value = self.factor()
        while True:
            m = _MUL_RE.match(self.text, self.i)
            if not m:
                return value
            self.i = m.end()
            right = self.factor()
            if m.group(1):
                value = _bounded(value * right)
            elif right == 0:
                raise _NotANumber
            else:
                value = _bounded(value / right)

    def factor(self) -> Fraction:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _NotANumber
        self.skip_spaces()
        if self.text.startswith(("-", "+"), self.i):
            sign = self.text[self.i]
            self.i += 1
            self._enter()
            value = self.factor()
            self.depth -= 1
            return -value if sign == "-" else value
        base = self.atom()
        save = self.skip_spaces()
        if not self.text.startswith("^", self.i):
            self.i = save
            return base
        self.i += 1
        return _power(base, self.exponent())

    def exponent(self) -> Fraction:
        self.skip_spaces()
        if self.text.startswith(("{", "("), self.i):
            return self.group()
        m = _INT_RE.match(self.text, self.i)
        if not m:
            raise _NotANumber
        self.i = m.end()
        return Fraction(int(m.group(0)))

    def group(self) -> Fraction:
        close = {"(": ")", "[": "]", "{": "}"}[self.text[self.i]]
        self.i += 1
        self._enter()
        value = self.expression()
        self.depth -= 1
        if not self.text.startswith(close, self.skip_spaces()):
            raise _NotANumber
        self.i += 1
        return value

    def argument(self) -> Fraction:
        """An argument of \\frac or \\sqrt: ``{...}`` or a single digit."""
        self.skip_spaces()
        if self.text.startswith("{", self.i):
            return self.group()
        if self.i < len(self.text) and self.text[self.i].isdigit():
            self.i += 1
            return Fraction(int(self.text[self.i - 1]))
        raise _NotANumber

    def atom(self) -> Fraction:
        self.skip_spaces()
        text = self.text
        if text.startswith(("(", "[", "{"), self.i):
            return self.group()
        if text.startswith("\\frac", self.i):
            self.i += 5
            numerator, denominator = self.argument(), self.argument()
            if denominator == 0:
                raise _NotANumber
            return _bounded(numerator / denominator)
        if text.startswith("\\sqrt", self.i):
            self.i += 5
            return _sqrt(self.argument())
        m = _NUM_RE.match(text, self.i)
        if not m:
            raise _NotANumber
        self.i = m.end()
        literal = m.group(0)
        if m.group(1) is not None and abs(int(m.group(1))) > 400:
            raise _NotANumber
        if _EUROPEAN_RE.fullmatch(literal):
            literal = literal.replace(".", "")
        value = Fraction(literal.replace(",", "").replace("'", "").replace(" ", ""))
        if literal.isdigit():  # a mixed number: 1\frac{4}{5}, 1 1/2
            save = self.i
            if text.startswith("\\frac", self.skip_spaces()):
                return _bounded(value + self.atom())
            self.i = save
            mixed = _MIXED_RE.match(text, self.i)
            if mixed and int(mixed.group(1)) < int(mixed.group(2)):
                self.i = mixed.end()
                return value + Fraction(int(mixed.group(1)), int(mixed.group(2)))
        return _bounded(value)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _NotANumber


_EUROPEAN_RE = re.compile(r"\d{1,3}(?:\.\d{3}){2,}", _A)


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or (base == 0 and exponent < 0):
        raise _NotANumber
    size = max(base.numerator.bit_length(), base.denominator.bit_length(), 1)
    if abs(exponent.numerator) > 10_000 or (abs(base) != 1 and size * abs(exponent.numerator) > _MAX_BITS):
        raise _NotANumber
    return _bounded(base ** exponent.numerator)


def _sqrt(value: Fraction) -> Fraction:
    """The square root when it is rational (\\sqrt{16}, \\sqrt{\\frac{1}{4}}); otherwise not a number."""
    if value < 0:
        raise _NotANumber
    import math

    num, den = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if num * num != value.numerator or den * den != value.denominator:
        raise _NotANumber
    return Fraction(num, den)


def _format_number(value: Fraction) -> str:
    """Plain decimal: integers exactly; 6 decimals at or above 1, 6 significant digits below."""
    if value.denominator == 1:
        return str(value.numerator)
    magnitude = abs(value)
    places = 6
    if magnitude < 1:
        # leading zeros after the point: 10^-(zeros+1) <= magnitude < 10^-zeros
        zeros = max(len(str(magnitude.denominator)) - len(str(magnitude.numerator)) - 1, 0)
        while magnitude * 10 ** (zeros + 1) < 1:
            zeros += 1
        places += zeros
    scaled = round(magnitude * 10**places)
    if scaled == 0:
        return "0"
    digits = str(scaled).rjust(places + 1, "0")
    whole, fraction = digits[:-places], digits[-places:].rstrip("0")
    return ("-" if value < 0 else "") + whole + ("." + fraction if fraction else "")


def _number_list(text: str) -> str | None:
    """A bare list of numbers ("1,-2", "3, 5, 7"), sorted: its order carries no meaning."""
    if "," not in text or text.count(",") >= 100 or any(c in text for c in "()[]{}\\"):
        return None
    values = []
    for item in text.split(","):
        item = item.strip()
        parser = _Parser(item, 0)
        try:
            value = parser.expression()
        except (_NotANumber, ArithmeticError, ValueError, RecursionError):
            return None
        if not item or parser.skip_spaces() != len(item):
            return None
        values.append(value)
    return ", ".join(_format_number(v) for v in sorted(values))


_SQRT_DIGIT_RE = re.compile(r"\\sqrt\s*(\d)")
_FRAC_DIGITS_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_DIGIT_BRACE_RE = re.compile(r"\\frac\s*(\d)\s*\{")
_FRAC_BRACE_DIGIT_RE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SCRIPT_RE = re.compile(r"([\^_])\{([^{}])\}")
_NEEDLESS_SPACE_RE = re.compile(r" (?!\w)|(?<!\w) ")
_WORDS_RE = re.compile(r"[^\W\d_]+(?:[ '\-][^\W\d_]+)*")


def _canonical_text(text: str) -> str:
    """An expression or words, written one way."""
    assigned = _ASSIGN_RE.match(text)
    if assigned:
        text = text[assigned.end() :]
    if "\\" in text:
        text = _SQRT_DIGIT_RE.sub(r"\\sqrt{\1}", text)
        text = _FRAC_DIGITS_RE.sub(r"\\frac{\1}{\2}", text)
        text = _FRAC_DIGIT_BRACE_RE.sub(r"\\frac{\1}{", text)
        text = _FRAC_BRACE_DIGIT_RE.sub(r"\\frac\1{\2}", text)
    text = _SCRIPT_RE.sub(r"\1\2", text)
    text = _NEEDLESS_SPACE_RE.sub("", text)
    if _WORDS_RE.fullmatch(text) and _PROSE_RE.search(text):
        text = text.lower()
    return _strip_edges(text)
