"""Answer equality: edgesrm's ``answers_match`` against Hugging Face's Math-Verify.

Pairs are built from gold answers: GSM8K test (the number after ``####``) and MATH-500 (LaTeX
answers). Each gold is paired with rewritings that are equal by construction (the forms models
write: separators, Unicode signs and digits, fractions, scientific notation, magnitude words,
choices, reordered sets, rewritten roots...) and with near misses that are unequal by
construction (off by one, sign lost, root or unit of i dropped, reciprocal, interval bracket...).
For every pair the benchmark records ``answers_match``, Math-Verify's ``verify`` and edgesrm's
``grade`` (``answers_match`` where edgesrm is sure, Math-Verify otherwise), and lists every pair
where ``answers_match`` and Math-Verify disagree with the side that is right (the construction's
label).

Math-Verify is called as ``verify(parse(wrap(gold)), parse(wrap(answer)))``, where ``wrap``
puts a string in ``$...$`` (LaTeX mode, as Math-Verify's README parses gold answers) unless it
already holds an unescaped ``$`` or ``\\boxed``; the ``math_verify_raw`` column parses the strings as they are.

    python benchmarks/answers.py          # rows in benchmarks/results/answers/pairs.jsonl
    EDGESRM_DATA=/data python benchmarks/answers.py --gsm8k 40 --math 250

The data is looked up in ``$EDGESRM_DATA``, else in ``shared/data`` beside the checkout
(``gsm8k/test.jsonl``, ``math500/test.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

from edgesrm.answers import answers_match, grade

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "answers"
FULLWIDTH = str.maketrans("0123456789-", "０１２３４５６７８９－")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def data_dir() -> Path:
    root = Path(os.environ["EDGESRM_DATA"]) if os.environ.get("EDGESRM_DATA") else ROOT.parent / "shared" / "data"
    missing = [p for p in (root / "gsm8k" / "test.jsonl", root / "math500" / "test.jsonl") if not p.is_file()]
    if missing:
        sys.exit(f"error: the benchmark needs {', '.join(map(str, missing))}; put GSM8K and MATH-500 under "
                 f"shared/data beside the checkout or set EDGESRM_DATA to the folder that holds gsm8k/ and math500/")
    return root


# ---------------------------------------------------------------------------------------------
# Pairs: (form, answer, equal) for one gold


def grouped(n: int, sep: str) -> str:
    text = f"{abs(n):,}".replace(",", sep)
    return ("-" if n < 0 else "") + text


def gsm8k_pairs(gold: str) -> list[tuple[str, str, bool]]:
    """GSM8K golds are integers (a few negative): every way of writing one, and near misses."""
    n = int(gold.replace(",", ""))
    a, pairs = abs(n), []
    neg = "-" if n < 0 else ""

    def add(form, answer, equal=True):
        pairs.append((form, answer, equal))

    add("plain", str(n))
    if a >= 1000:
        add("comma", grouped(n, ","))
        add("space", grouped(n, " "))
        add("thin space U+2009", grouped(n, "\u2009"))
        add("narrow nbsp U+202F", grouped(n, "\u202f"))
        add("latex \\,", grouped(n, "\\,"))
        add("latex {,}", grouped(n, "{,}"))
        add("latex ,\\!", grouped(n, ",\\!"))
        add("apostrophe", grouped(n, "'"))
    if a >= 1_000_000:
        add("european 1.000.000", grouped(n, "."))
    add("dollar", f"{neg}${a}")
    add("latex dollar", f"{neg}\\${grouped(a, ',')}")
    add("unit words", f"{n} dollars")
    add("decimal zeros", f"{n}.00")
    add("boxed", f"\\boxed{{{n}}}")
    add("\\frac", f"\\frac{{{2 * n}}}{{2}}")
    add("slash fraction", f"{2 * n}/2")
    if a >= 100 and a % 10 == 0:
        digits = str(a)
        power, rest = len(digits) - 1, digits[1:].rstrip("0")
        mantissa = digits[0] + ("." + rest if rest else "")
        add("e notation", f"{neg}{mantissa}e{power}")
        add("× 10^", f"{neg}{mantissa}×10^{power}")
        add("\\times 10^{}", f"{neg}{mantissa} \\times 10^{{{power}}}")
    if a >= 1000 and a % 100 == 0:
        add("thousand", f"{neg}{decimal(Fraction(a, 1000))} thousand")
    if a >= 1_000_000 and a % 100_000 == 0:
        add("million", f"{neg}{decimal(Fraction(a, 1_000_000))} million")
    add("fullwidth digits", str(n).translate(FULLWIDTH))
    add("arabic-indic digits", neg + str(a).translate(ARABIC_INDIC))
    add("assignment", f"x = {n}")
    add("sentence", f"The total is {n} dollars.")
    add("arithmetic", f"{n - 3} + 3 = {n}")
    if n < 0:
        add("U+2212 minus", f"\u2212{a}")
        add("fullwidth minus", f"\uff0d{a}")
    # near misses
    add("plus one", str(n + 1), False)
    add("minus one", str(n - 1), False)
    add("and a half", f"{n}.5", False)
    if n > 0:
        add("U+2212 sign flip", f"\u2212{n}", False)
        add("fullwidth sign flip", f"\uff0d{str(n).translate(FULLWIDTH)}", False)
    elif n < 0:
        add("sign lost", str(a), False)
    if n != 0:  # 0 is its own tenfold, negation and multiple
        add("extra zero", str(n * 10), False)
        add("times root", f"{n}\\sqrt{{2}}", False)
    if round(a ** 0.5) ** 2 != a:
        add("root of it", f"\\sqrt{{{n}}}", False)
    add("wrong magnitude", f"{n} thousand" if n else "1 thousand", False)
    return pairs


_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")
_DECIMAL = re.compile(r"-?\d*\.\d+")
_COEF_ROOT = re.compile(r"(\d+)\s*\\sqrt\{?(\d+)\}?")
_FRAC_ROOT = re.compile(r"\\frac\{(\d*)\\sqrt\{(\d+)\}\}\{(\d+)\}")
_CHOICE = re.compile(r"\\text\{\(([A-E])\)\}")
_WORD = re.compile(r"\\text\{([A-Za-z]+)\}")


def exact_value(gold: str) -> Fraction | None:
    """The value of a gold that is plainly a number (integer, decimal, \\frac{a}{b}), else None."""
    g = gold.strip()
    if _INT.fullmatch(g) or _DECIMAL.fullmatch(g):
        return Fraction(g)
    m = _FRAC.fullmatch(g)
    if m:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) else value
    return None


def decimal(value: Fraction) -> str | None:
    """A terminating decimal for value, or None."""
    for places in range(0, 7):
        scaled = value * 10**places
        if scaled.denominator == 1:
            text = f"{abs(scaled.numerator):0{places + 1}d}"
            body = text if not places else text[:-places] + "." + text[-places:]
            return ("-" if value < 0 else "") + body
    return None


def math_pairs(gold: str, other_words: list[str]) -> list[tuple[str, str, bool]]:
    pairs = []

    def add(form, answer, equal=True):
        if answer != gold:
            pairs.append((form, answer, equal))

    add("boxed", f"\\boxed{{{gold}}}")
    value = exact_value(gold)
    if value is not None:
        if value.denominator == 1:
            pairs.extend(p for p in gsm8k_pairs(str(value.numerator)) if p[0] in
                         {"comma", "dollar", "boxed", "\\frac", "e notation", "fullwidth digits", "plus one",
                          "U+2212 sign flip", "times root", "sign lost", "arabic-indic digits"})
        else:
            d = decimal(value)
            if d is not None:
                add("as decimal", d)
            add("slash fraction", f"{value.numerator}/{value.denominator}")
            if 0 < value.numerator < 10 and value.denominator < 10:
                add("\\frac12 unbraced", f"\\frac{value.numerator}{value.denominator}")
            add("reciprocal", f"\\frac{{{value.denominator}}}{{{value.numerator}}}", False)
            add("value plus one", f"\\frac{{{value.numerator + value.denominator}}}{{{value.denominator}}}", False)
            add("sign flip", f"\u2212\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"
                if value > 0 else f"\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}", False)
    if "\\frac" in gold:
        add("\\dfrac", gold.replace("\\frac", "\\dfrac"))
    m = _FRAC_ROOT.fullmatch(gold)
    if m:  # \frac{3\sqrt{3}}{4} -> \frac{3}{4}\sqrt{3}
        add("coefficient out of \\frac", f"\\frac{{{m.group(1) or 1}}}{{{m.group(3)}}}\\sqrt{{{m.group(2)}}}")
        add("root dropped", f"\\frac{{{m.group(1) or 1}}}{{{m.group(3)}}}", False)
    m = _COEF_ROOT.fullmatch(gold)
    if m:  # 3\sqrt{13} -> \sqrt{117}
        k, r = int(m.group(1)), int(m.group(2))
        add("root of the square", f"\\sqrt{{{k * k * r}}}")
        add("coefficient only", str(k), False)
        add("root only", f"\\sqrt{{{r}}}", False)
    if re.fullmatch(r"\\sqrt\{?\d+\}?", gold):
        n = int(re.sub(r"\D", "", gold))
        if n < 10:  # \sqrt51 is \sqrt{5}1 in LaTeX: only a one-digit radicand goes unbraced
            add("root unbraced" if "{" in gold else "root braced", f"\\sqrt{n}" if "{" in gold else f"\\sqrt{{{n}}}")
        add("radicand only", str(n), False)
    m = _CHOICE.fullmatch(gold)
    if m:
        letter = m.group(1)
        add("choice letter", letter)
        add("choice (x)", f"({letter.lower()})")
        add("option X", f"option {letter}")
        add("other choice", f"\\text{{({'ABCDE'[('ABCDE'.index(letter) + 1) % 5]})}}", False)
    m = _WORD.fullmatch(gold)
    if m:
        add("bare word", m.group(1))
        add("capitalised", m.group(1).capitalize())
        other = next(w for w in other_words if w.lower() != m.group(1).lower())
        add("other word", f"\\text{{{other}}}", False)
    if (re.fullmatch(r"[^()\[\]{}]*,[^()\[\]{}]*", gold) and "\\!" not in gold and exact_value(gold) is None
            and not re.fullmatch(r"\d{1,3}(,\d{3})+", gold)):  # 58,500 is a number, not a set
        items = [x.strip() for x in gold.split(",")]
        add("set reordered", ", ".join(reversed(items)))
    if gold.startswith(("(", "[")) and gold.endswith((")", "]")) and "," in gold and "\\" not in gold:
        if gold.count(",") == 1:  # an interval or a pair: swap one bracket
            add("bracket swapped", ("[" if gold[0] == "(" else "(") + gold[1:], False)
    if gold.startswith("\\left(") and gold.endswith("\\right)"):
        add("\\left \\right dropped", "(" + gold[len("\\left(") : -len("\\right)")] + ")")
    elif gold.startswith("(") and gold.endswith(")"):
        add("\\left \\right added", "\\left(" + gold[1:-1] + "\\right)")
    if re.search(r"\d\s*i$", gold) and "\\" not in gold:
        add("i dropped", re.sub(r"\s*i$", "", gold), False)
    if re.fullmatch(r"\d+ ?\\pi", gold):
        add("\\pi dropped", re.sub(r"\s*\\pi", "", gold), False)
    if re.fullmatch(r"\d+_\{?\d+\}?", gold):
        add("base dropped", re.sub(r"_\{?\d+\}?", "", gold), False)
    if gold.endswith("^\\circ"):
        add("degrees dropped", gold[: -len("^\\circ")])
        add("degree sign", gold[: -len("^\\circ")] + "°")
    if re.search(r"[+\-=]", gold) and " " not in gold and "\\" not in gold and value is None:
        add("spaced", re.sub(r"(?<=\w)([+\-=])", r" \1 ", gold))
    return pairs


# ---------------------------------------------------------------------------------------------
# Math-Verify


def wrap(text: str) -> str:
    return text if re.search(r"(?<!\\)\$", text) or "\\boxed" in text else f"${text}$"


def mv_equal(gold: str, answer: str, raw: bool = False) -> bool:
    from math_verify import parse, verify

    g, a = (gold, answer) if raw else (wrap(gold), wrap(answer))
    return bool(verify(parse(g), parse(a)))


def answers_match_at(commit: str):
    """answers_match as edgesrm/answers.py was at ``commit`` (read with git), or None."""
    import subprocess
    import types

    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:edgesrm/answers.py"], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"(no edgesrm/answers.py at {commit}: the 'before' column is skipped)", file=sys.stderr)
        return None
    module = types.ModuleType("answers_before")
    exec(compile(source, f"{commit}:edgesrm/answers.py", "exec"), module.__dict__)
    return module.answers_match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gsm8k", type=int, default=40, help="GSM8K test golds to use (default 40)")
    parser.add_argument("--math", type=int, default=250, help="MATH-500 golds to use (default 250)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--before", default="03b16c7",
                        help="also score answers_match as of this git commit (default: before issue 14; '' to skip)")
    args = parser.parse_args()
    try:
        import math_verify  # noqa: F401
    except ImportError:
        sys.exit("error: this benchmark compares with Math-Verify: pip install 'edgesrm[eval]'")
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    root = data_dir()
    rng = random.Random(args.seed)

    gsm_golds = [json.loads(line)["answer"].split("####")[-1].strip()
                 for line in (root / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    big = sorted({g for g in gsm_golds if abs(int(g.replace(",", ""))) >= 1000})
    small = sorted({g for g in gsm_golds if 0 <= int(g.replace(",", "")) < 1000})
    negative = sorted({g for g in gsm_golds if g.startswith("-")})
    half = args.gsm8k // 2
    chosen_gsm = (negative + rng.sample(big, min(half, len(big)))
                  + rng.sample(small, max(args.gsm8k - half - len(negative), 0)))

    math_golds = [json.loads(line)["answer"] for line in
                  (root / "math500" / "test.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    non_integer = [g for g in math_golds if not _INT.fullmatch(g.strip())]
    integer = [g for g in math_golds if _INT.fullmatch(g.strip())]
    chosen_math = (non_integer + rng.sample(integer, len(integer)))[: args.math]
    words = [m.group(1) for g in math_golds if (m := _WORD.fullmatch(g))]

    cases = [("gsm8k", g, *p) for g in chosen_gsm for p in gsm8k_pairs(g)]
    cases += [("math500", g, *p) for g in dict.fromkeys(chosen_math) for p in math_pairs(g, words)]
    cases = list({(c[0], c[1], c[3]): c for c in cases}.values())  # one pair per gold and answer
    before = answers_match_at(args.before) if args.before else None
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    with open(OUT / "pairs.jsonl", "w", encoding="utf-8") as f:
        for source, gold, form, answer, equal in cases:
            row = {"source": source, "gold": gold, "answer": answer, "form": form, "equal": equal,
                   "answers_match": answers_match(answer, gold), "math_verify": mv_equal(gold, answer),
                   "math_verify_raw": mv_equal(gold, answer, raw=True), "grade": grade(answer, gold)}
            if before is not None:
                row["answers_match_before"] = before(answer, gold)
            rows.append(row)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report(rows, time.perf_counter() - started)


def report(rows: list[dict], seconds: float) -> None:
    lines = [f"{len(rows)} pairs ({sum(r['source'] == 'gsm8k' for r in rows)} GSM8K, "
             f"{sum(r['source'] == 'math500' for r in rows)} MATH-500; {sum(r['equal'] for r in rows)} equal "
             f"by construction, {sum(not r['equal'] for r in rows)} unequal), {seconds:.0f} s", ""]
    lines += ["| | all | GSM8K | MATH-500 |", "|---|---|---|---|"]

    def pct(key, pred, source=None):
        sel = [r for r in rows if source is None or r["source"] == source]
        hits = sum(pred(r) for r in sel)
        return f"{100 * hits / len(sel):.1f}% ({hits}/{len(sel)})"

    checks = [("answers_match agrees with Math-Verify", lambda r: r["answers_match"] == r["math_verify"]),
              ("answers_match agrees with Math-Verify (raw strings)",
               lambda r: r["answers_match"] == r["math_verify_raw"]),
              ("answers_match right (construction)", lambda r: r["answers_match"] == r["equal"]),
              ("Math-Verify right", lambda r: r["math_verify"] == r["equal"]),
              ("Math-Verify (raw strings) right", lambda r: r["math_verify_raw"] == r["equal"]),
              ("grade (eval's rule) right", lambda r: r["grade"] == r["equal"])]
    if "answers_match_before" in rows[0]:
        checks.append(("answers_match before issue 14 right", lambda r: r["answers_match_before"] == r["equal"]))
    for name, pred in checks:
        lines.append(f"| {name} | {pct(name, pred)} | {pct(name, pred, 'gsm8k')} | {pct(name, pred, 'math500')} |")
    disagree = [r for r in rows if r["answers_match"] != r["math_verify"]]
    right = Counter("answers_match" if r["answers_match"] == r["equal"] else "Math-Verify" for r in disagree)
    lines += ["", f"{len(disagree)} disagreements between answers_match and Math-Verify: answers_match right in "
              f"{right['answers_match']}, Math-Verify right in {right['Math-Verify']}.", "",
              "| form | pairs | right | example (gold / answer) |", "|---|---|---|---|"]
    by_form = defaultdict(list)
    for r in disagree:
        who = "answers_match" if r["answers_match"] == r["equal"] else "Math-Verify"
        by_form[(r["source"], r["form"], who)].append(r)
    for (source, form, who), group in sorted(by_form.items(), key=lambda kv: (kv[0][2], -len(kv[1]))):
        ex = group[0]
        lines.append(f"| {source}: {form} ({'equal' if ex['equal'] else 'unequal'}) | {len(group)} | {who} | "
                     f"`{ex['gold']}` / `{ex['answer']}` |")
    wrong = [r for r in rows if r["grade"] != r["equal"]]
    lines += ["", f"grade wrong on {len(wrong)} pairs:"] + [
        f"- {r['source']}: {r['form']}: `{r['gold']}` / `{r['answer']}` (equal: {r['equal']})" for r in wrong]
    text = "\n".join(lines)
    (OUT / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
