"""Answer extraction, number parsing and math equivalence (math_verify in a worker process)."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliberate.tasks import grading
from deliberate.tasks.grading import (
    canonical_number,
    extract_answer,
    extract_last_number,
    math_equal,
    normalize_answer,
    normalize_latex,
    numbers_equal,
    parse_number,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- extraction ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("3+4=7\nAnswer: 7", "7"),
        ("Answer: 1\nwait\nAnswer: 2", "2"),
        ("so\n#### 1,000", "1,000"),
        ("The answer is 18 dollars.", "18 dollars"),
        ("Thus the final answer is $42$.", "42"),
        ("**Answer:** 5", "5"),
        ("x \\boxed{\\frac{1}{2}} then \\boxed{\\frac{a^{2}}{b}}", "\\frac{a^{2}}{b}"),
        ("Answer: 3\nso the answer is $\\boxed{4}$.", "4"),  # boxed beats answer lines
        ("the answer is 3\n#### 5", "5"),  # the last answer line wins
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces inside the box
        ("\\boxed 7 is it", "7"),
        ("nothing here", None),
        ("\\boxed{unbalanced", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_last_number():
    assert extract_last_number("3 apples and 1,234.5 pears") == "1,234.5"
    assert extract_last_number("it is -7/8 or so") == "-7/8"
    assert extract_last_number("no digits") is None


# --- numbers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "s,value",
    [
        ("1,000", Fraction(1000)), ("$1,000.50", Fraction(2001, 2)), ("-$5", Fraction(-5)), ("50%", Fraction(50)),
        ("10\\%", Fraction(10)), ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{1}{2}", Fraction(-1, 2)), (".5", Fraction(1, 2)), ("2.", Fraction(2)), ("18 dollars.", Fraction(18)),
        ("−3", Fraction(-3)), ("7.", Fraction(7)),
        ("1,2", None), ("1/0", None), ("abc", None), ("", None), ("1e5", None), ("9" * 5000, None),
    ],
)
def test_parse_number(s, value):
    assert parse_number(s) == value


def test_units_are_optional_and_strict_mode_rejects_words():
    assert parse_number("3x") == 3 and parse_number("3x", units=False) is None


def test_numbers_equal_and_canonical_forms():
    assert numbers_equal("1,000", "1000.0") and numbers_equal("0.5", "1/2") and numbers_equal(0.1 + 0.2, "0.3")
    assert not numbers_equal("1000", "1001") and not numbers_equal("x", "1") and not numbers_equal(None, "1")
    assert canonical_number("1,000") == canonical_number("1000.0") == "1000"
    assert canonical_number("0.50") == "1/2"
    assert normalize_answer("1,000") == normalize_answer("1000.00") == "1000"
    assert normalize_answer(" a  b ") == "ab"
    assert normalize_latex("\\dfrac{1}{2}") == normalize_latex("0.5")
    assert normalize_latex("\\left( 3, \\frac{\\pi}{2} \\right)") == normalize_latex("(3,\\frac{\\pi}{2})")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_extraction_never_raises(text):
    for fn in (extract_answer, extract_last_number, parse_number, canonical_number, normalize_answer, normalize_latex):
        fn(text)
    parse_number(text, units=False)
    numbers_equal(text, "1")


# --- math_equal ------------------------------------------------------------------------------
def test_math_equal_basic():
    assert math_equal("\\frac12", "0.5")
    assert math_equal("x+1", "1+x")
    assert math_equal("\\left(3,\\frac{\\pi}{2}\\right)", "(3, \\pi/2)")
    assert not math_equal("2", "3")
    assert not math_equal("x+2", "1+x")
    assert not math_equal(None, "1") and not math_equal("", "1")


def test_math_equal_from_another_thread():
    out = []
    th = threading.Thread(target=lambda: out.append((math_equal("\\sqrt{4}", "2"), math_equal("\\sqrt{5}", "2"))))
    th.start()
    th.join(60)
    assert out == [(True, False)]


def _pool_job(pair):
    return math_equal(*pair)


def test_math_equal_from_a_daemonic_pool_worker():
    # pool workers are daemonic (they may not start multiprocessing children); the checker uses a subprocess
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.map(_pool_job, [("\\sqrt{4}", "2"), ("\\sqrt{5}", "2")]) == [True, False]


def test_math_equal_times_out_kills_and_recovers():
    assert math_equal("x+1", "1+x")  # the worker is up
    before = grading._checker().restarts
    t0 = time.monotonic()
    # expanding a 100000th power hangs sympy; the 0.5 s budget is below math_verify's own 1 s minimum,
    # so it is our wall-clock timeout that must fire (kill + restart)
    assert math_equal("(x+1)^{100000}", "7", timeout=0.5) is False
    assert time.monotonic() - t0 < 0.5 + 2.0
    assert grading._checker().restarts == before + 1
    assert math_equal("x+1", "1+x")  # a fresh worker answers


def test_shutdown_then_reuse():
    grading.shutdown()
    assert math_equal("2x", "x*2")
    grading.shutdown()
    grading.shutdown()  # idempotent


# --- real data: MATH-500 reference solutions vs reference answers ----------------------------
def test_math500_boxed_solution_agrees_with_answer():
    path = DATA / "math500" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) == 500
    preds = [extract_answer(r["solution"]) for r in rows]
    agree = sum(math_equal(p, r["answer"]) for p, r in zip(preds, rows)) / len(rows)
    # the same pairs through math_verify alone (no fast path), so the worker itself is measured
    checker = grading._checker()
    agree_mv = sum(checker.check(p, r["answer"]) for p, r in zip(preds, rows)) / len(rows)
    # negative control: each solution's answer against the next problem's answer
    false_pos = sum(math_equal(preds[(i + 1) % 500], r["answer"]) for i, r in enumerate(rows)) / len(rows)
    print(f"MATH-500 agreement: math_equal {agree:.3f}, math_verify only {agree_mv:.3f}, shifted {false_pos:.3f}")
    assert agree >= 0.98 and agree_mv >= 0.98
    assert false_pos <= 0.02
