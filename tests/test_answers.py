"""Answer extraction, normalisation, voting and grading, on the forms models write answers in."""

import builtins
import sys

import pytest

from edgesrm.answers import answers_match, extract_answer, grade, normalize, vote


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so x = 3 + 4 = 7, and \\boxed{7} is it", "7"),
        ("nested \\boxed{\\frac{1}{2}} ok", "\\frac{1}{2}"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("Step 1: 5 + 5 = 10\nFinal answer: 10 apples", "10 apples"),
        ("**Final Answer:** $1,250", "$1,250"),
        ("Thus, the answer is 42.", "42."),
        ("Answer: (C)", "(C)"),
        ("He has 5 apples, then buys 3 more, so 8 apples.", "8"),
        ("it costs -3.5 degrees", "-3.5"),
        ("no numbers at all", None),
        ("", None),
        # the last answer a reply states is its answer
        ("The answer is 12. Actually, the correct answer is 14.", "14."),
        ("\\boxed{12}. Wait, that is wrong: \\boxed{14}", "14"),
        ("The answer is 12.\nFinal answer: \\boxed{14}", "14"),
        ("Final answer: 12\nLet me double-check... the answer is 14", "14"),
        # remarks after the answer are not answers
        ("\\boxed{14}\n\nThe answer is correct because 2 * 7 = 14 checks out", "14"),
        ("Final answer: 18\nThe answer is based on the data above.", "18"),
        ("Final answer:\n\n42", "42"),
        ("The correct option is (B).", "(B)."),
        ("Final answer: −5", "−5"),
        ("\\boxed{unclosed 7", "7"),
        # the last number, written in full
        ("so the probability is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("that is 3\\sqrt{13} units", "3\\sqrt{13}"),
        ("in total 1.5 \\times 10^{3} grams", "1.5 \\times 10^{3}"),
        ("about 3 million people", "3 million"),
        ("it costs ４２ yen", "４２"),
        ("the temperature fell to −5 degrees", "−5"),
        ("they sold 1,000,000 cans", "1,000,000"),
        ("the total is 1 000 dollars", "1 000"),
        ("3-5 hours", "5"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_without_the_last_number():
    assert extract_answer("x^5 - x^4 + 1", last_number=False) is None
    assert extract_answer("so \\boxed{5}", last_number=False) == "5"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("1,000", "1000"),
        ("$1,000.00", "1000"),
        ("1000 dollars", "1000"),
        ("-5", "-5"),
        ("0.50", "0.5"),
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{-1}{2}", "-0.5"),
        ("75%", "75"),
        ("(b)", "B"),
        ("C.", "C"),
        ("B) 12 apples", "B"),
        ("  Paris. ", "paris"),
        ("\\text{Paris}", "paris"),
        (None, None),
        ("", None),
        # signs and digits of every script
        ("−5", "-5"),
        ("－５", "-5"),
        ("＋５", "5"),
        ("٤٢", "42"),
        ("४२", "42"),
        # fractions, roots, powers
        ("\\frac12", "0.5"),
        ("\\frac1{2}", "0.5"),
        ("\\tfrac{1}2", "0.5"),
        ("\\frac 59", "0.555556"),
        ("1\\frac{4}{5}", "1.8"),
        ("137 \\frac{1}{2}", "137.5"),
        ("1 1/2", "1.5"),
        ("-\\frac{1}{2}", "-0.5"),
        ("2^{10}", "1024"),
        ("\\sqrt{16}", "4"),
        ("\\sqrt{2}", "\\sqrt{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("1/3", "0.333333"),
        ("0.3333333", "0.333333"),
        (".0000672", "0.0000672"),
        # thousands separators
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
        ("1 000", "1000"),
        ("1\\,000", "1000"),
        ("1{,}000", "1000"),
        ("1.000.000", "1000000"),
        ("1\u2009000", "1000"),
        ("1\u202f000", "1000"),
        ("1'000", "1000"),
        ("\\$32,\\!348", "32348"),
        # scientific notation, magnitude words
        ("1.5e3", "1500"),
        ("1.5×10^3", "1500"),
        ("1.5 \\times 10^{3}", "1500"),
        ("1.5·10³", "1500"),
        ("3 million", "3000000"),
        ("2.5 thousand", "2500"),
        ("1 billion", "1000000000"),
        # units, degrees, assignments, arithmetic, sentences
        ("90^\\circ", "90"),
        ("30°", "30"),
        ("5.4 \\text{ cents}", "5.4"),
        ("864 \\mbox{ inches}^2", "864"),
        ("12 cm", "12"),
        ("x = 5", "5"),
        ("16 - 3 - 4 = 9 eggs", "9"),
        ("Janet makes $18 every day", "18"),
        ("18, which is the total", "18"),
        # choices
        ("option C", "C"),
        ("Option (c).", "C"),
        ("\\text{(C)}", "C"),
        ("(f)", "F"),
        ("b", "B"),
        # not numbers: a number followed by more mathematics
        ("3\\sqrt{13}", "3\\sqrt{13}"),
        ("2k", "2k"),
        ("6 - 5i", "6-5i"),
        ("52_8", "52_8"),
        ("1.5M", "1.5M"),
        # lists, intervals, expressions, words
        ("1,-2", "-2, 1"),
        ("3, 5, 7", "3, 5, 7"),
        ("1,5", "1, 5"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("x \\in [-2,7]", "[-2,7]"),
        ("y = 2x + 3", "2x+3"),
        ("\\cot x", "\\cot x"),
        ("\\text{Evelyn}", "evelyn"),
        ("3 dozen", "3"),
        ("e", "E"),
        ("i", "i"),
    ],
)
def test_normalize(answer, expected):
    assert normalize(answer) == expected


@pytest.mark.parametrize(
    "a, b",
    [
        ("$18.00", "18"),
        ("1,234", "1234"),
        ("1/2", "0.5"),
        ("Final answer: −5".removeprefix("Final answer: "), "-5"),
        ("\\frac12", "0.5"),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
        ("1.5e3", "1500"),
        ("1.5 \\times 10^{3}", "1500"),
        ("(b)", "B"),
        ("\\text{(C)}", "option C"),
        ("1,-2", "-2, 1"),
        ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"),
        ("1/3", "0.333333"),
    ],
)
def test_answers_match_equal_forms(a, b):
    assert answers_match(a, b) and answers_match(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        ("17", "18"),
        ("−5", "5"),  # the sign is not lost
        ("3\\sqrt{13}", "3"),
        ("\\sqrt{2}", "2"),
        ("1/3", "0.3333"),
        ("0.0000672", "0.0000671"),
        ("A", "B"),
        ("1,5", "15"),
        (None, "18"),
        ("", ""),
    ],
)
def test_answers_match_unequal(a, b):
    assert not answers_match(a, b) and not answers_match(b, a)


def test_vote_majority_and_weighted():
    winner, tally = vote(["18", "17", "18", None])
    assert winner == "18" and tally == {"18": 2.0, "17": 1.0}
    winner, _ = vote(["18", "17", "18"], weights=[0.1, 0.9, 0.1])
    assert winner == "17"
    assert vote([None, None]) == (None, {})
    assert vote(["a", "b"])[0] == "a"  # ties go to the first seen


def test_a_minus_sign_cannot_lose_the_vote():
    replies = ["Final answer: −5", "Final answer: -5", "The answer is 5", "Final answer: －5"]
    winner, tally = vote(normalize(extract_answer(r)) for r in replies)
    assert winner == "-5" and tally == {"-5": 3.0, "5": 1.0}


def test_grade_follows_answers_match_where_edgesrm_is_sure():
    assert grade("−5", "-5") and grade("1.5e3", "1500") and grade("(b)", "B") and grade("3 million", "3000000")
    assert not grade("5", "-5") and not grade("A", "B") and not grade("17", "18") and not grade(None, "1")


def test_grade_asks_math_verify_about_expressions():
    pytest.importorskip("math_verify")
    assert grade("\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt{3}}{2}")
    assert grade("\\sqrt{117}", "3\\sqrt{13}")
    assert grade("(-\\infty, 0]", "(-\\infty,0]")
    assert not grade("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{2}")
    assert not grade("3", "3\\sqrt{13}")
    assert "sympy" in sys.modules  # imported by grading, not before (see the next test)


def test_without_math_verify_grading_is_edgesrm_rule(monkeypatch):
    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name.startswith("math_verify"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    assert grade("−5", "-5")
    assert grade("\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt{3}}{2}")  # roots: edgesrm's own rule
    assert not grade("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}")  # needs Math-Verify
    assert grade("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}")


def test_answers_do_not_import_sympy():
    import subprocess

    code = ("import sys, edgesrm.answers as a; a.answers_match('x', 'y'); a.vote(['1']); "
            "assert 'sympy' not in sys.modules and 'math_verify' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("a, b", [
    (r"3\sqrt{13}", r"\sqrt{117}"), (r"\frac{3\sqrt{3}}{4}", r"\frac{3}{4}\sqrt{3}"), (r"\frac34\sqrt3", r"\frac{3\sqrt3}{4}"),
    (r"\frac{1}{2}\sqrt{3}", r"\dfrac{\sqrt{3}}{2}"), (r"\sqrt{8}", r"2\sqrt{2}"), (r"-\sqrt{12}", r"-2\sqrt{3}"),
    (r"\frac{2\sqrt{9}}{3}", "2"),
])
def test_square_roots_are_one_vote_and_one_grade(a, b):
    # the vote (normalize) and eval's grading agree: equal roots are one answer for both
    assert normalize(a) == normalize(b) and answers_match(a, b) and grade(a, b)


@pytest.mark.parametrize("a, b", [(r"3\sqrt{13}", r"\sqrt{13}"), (r"2\sqrt{2}", r"2\sqrt{3}"), (r"\sqrt{8}", "2")])
def test_different_roots_stay_different(a, b):
    assert not answers_match(a, b)


@pytest.mark.parametrize("reply, answer", [
    # A path of `ask -s sc -n 16 --seed 2` on the sheep question voted for ")=22 sheep": its answer
    # line (what follows the "Final answer:" edgesrm forced) named the marker again.
    ("17 sheep (initial) + 5 sheep (final answer) = 22 sheep.", "22"),
    ("Final answer: 5 + 17 = 22 is the final answer.", "22"),
    ("Final answer: 22 (this is my final answer)", "22"),
    ("So the final answer = 22", "22"),
    ("Final answer: .5", "0.5"),
])
def test_a_marker_named_inside_the_answer_line_does_not_replace_it(reply, answer):
    assert normalize(extract_answer(reply)) == answer
