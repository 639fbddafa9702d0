"""Answer extraction, normalisation and voting."""

import pytest

from edgesrm.answers import answers_match, extract_answer, normalize, vote


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
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


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
    ],
)
def test_normalize(answer, expected):
    assert normalize(answer) == expected


def test_answers_match_numbers_written_differently():
    assert answers_match("$18.00", "18")
    assert answers_match("1,234", "1234")
    assert answers_match("1/2", "0.5")
    assert not answers_match("17", "18")
    assert not answers_match(None, "18")


def test_vote_majority_and_weighted():
    winner, tally = vote(["18", "17", "18", None])
    assert winner == "18" and tally == {"18": 2.0, "17": 1.0}
    winner, _ = vote(["18", "17", "18"], weights=[0.1, 0.9, 0.1])
    assert winner == "17"
    assert vote([None, None]) == (None, {})
    assert vote(["a", "b"])[0] == "a"  # ties go to the first seen
