"""Answer extraction and equivalence shared by every task.

- :func:`extract_answer` finds the final answer a completion states (its ``\\boxed{}`` answer, else
  the last ``Answer: X`` / ``#### X`` / ``The answer is X`` line); :func:`extract_last_number` is an
  opt-in fallback; :func:`extract_number_answer` (numeric tasks) takes the last number of the span.
- Answer-hacking rules: several *different* boxed answers are a hedge and give no answer
  (:func:`final_boxed`); a trailing list of three or more numbers is no answer for the last-number
  fallback; :func:`math_equal` rejects answers over :data:`MAX_ANSWER_CHARS`, unbalanced braces and
  equations whose numeric sides differ from the gold ("3 = 4" is not 4). Extraction runs in linear
  time on any input (no backtracking regexes, one pass over braces): see tests/test_fuzz_checkers.py
  and scripts/fuzz_checkers.py.
- :func:`parse_number` / :func:`numbers_equal` / :func:`canonical_number` compare numeric answers
  ("1,000", "$1000.00", "1000 dollars" are the same number).
- :func:`math_equal` compares LaTeX answers: a fast string/number path, then ``math_verify`` run in
  a small pool of persistent worker *processes* with a wall-clock timeout (``tasks/mathverify.py``).
"""

from __future__ import annotations

import atexit
import re
import threading
import time
from fractions import Fraction

from deliberate.tasks.mathverify import MathChecker

# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
# Greedy ``(.+)`` then a strip in Python: a lazy ``(.+?)\s*$`` backtracks quadratically on long lines.
_LINE_RES = (
    re.compile(r"(?im)^[ \t>*_#-]*(?:final\s+)?answer\s*[:：]\**\s*(\S.*)$"),
    re.compile(r"(?m)^[ \t]*####\s*(\S.*)$"),
    re.compile(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\s*(?:[:：]\s*)?(\S.*)$", re.MULTILINE),  # not \s*:?\s*
)
NUMBER_RE = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+−]?\.\d+")

#: Answers longer than this (characters) are wrong without further checks: no real final answer is
#: this long, and sympy / math_verify on megabytes of LaTeX only burns the timeout.
MAX_ANSWER_CHARS = 1000


def _closing_braces(text: str) -> dict[int, int]:
    """``{open index: matching close index}`` for every balanced ``{`` in ``text``, in one pass
    (escaped ``\\{`` / ``\\}`` skipped), so finding all boxes is linear, not quadratic."""
    match, stack, j, n = {}, [], 0, len(text)
    while j < n:
        c = text[j]
        if c == "\\" and j + 1 < n:
            j += 2
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            match[stack.pop()] = j
        j += 1
    return match


_BOX_TOKEN = re.compile(r"[^\s$]+")
_NONSPACE = re.compile(r"\S")


def _box_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the contents of every ``\\boxed{...}`` (balanced braces) and ``\\boxed X``
    in ``text``, in order; positions only, so nested boxes cost no copies."""
    out = []
    close: dict[int, int] | None = None
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            if close is None:
                close = _closing_braces(text)
            j = close.get(i)
            if j is not None:
                out.append((i + 1, j))
        elif m.group(0).endswith((" ", "\t")):  # "\boxed 5": one token
            tok = _BOX_TOKEN.match(text, i)
            if tok:
                out.append((i, tok.end()))
    return out


def final_boxed(text: str) -> tuple[bool, str | None]:
    """``(has_boxes, answer)``: the answer a completion boxes, under the *hedging rule*.

    A completion that boxes one answer (possibly several times) answers it: the last box. A
    completion that boxes two or more *different* answers (different after :func:`normalize_latex`,
    e.g. ``\\boxed{3} or \\boxed{4}``) is hedging and has no answer (``(True, None)``), so it is
    graded wrong even when one of its boxes is right; so is a box holding another non-empty box
    (``\\boxed{\\boxed{3}}``: its contents differ from the inner box's). Empty boxes are ignored.
    Linear time: nesting is decided from positions before any contents are copied.
    """
    # a box's leading whitespace is scanned once: nested boxes start at different runs of it
    spans = [(a, b) for a, b in _box_spans(text) if _NONSPACE.search(text, a, b)]
    if not spans:
        return False, None
    reach = -1
    for a, b in spans:  # in order of start: a start inside an earlier box is a box within a box
        if a < reach:
            return True, None
        reach = max(reach, b)
    boxed = [text[a:b].strip() for a, b in spans]
    if len({normalize_latex(b) for b in set(boxed)}) > 1:  # each distinct box normalised once
        return True, None
    return True, boxed[-1]


def _clean_answer(s: str) -> str:
    s = re.sub(r"^\*+|\*+$", "", s.strip()).strip()  # markdown bold
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and s.count("$") == 2:
        s = s[1:-1].strip()
    elif s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    s = s.rstrip(".").strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and s.count("$") == 2:
        s = s[1:-1].strip()
    return s


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None.

    Priority: the ``\\boxed{...}`` answer (nested braces fine; several *different* boxed answers
    are a hedge and give None, see :func:`final_boxed`); else the last line of the form
    ``Answer: X``, ``#### X``, ``... the answer is X`` or ``... the final answer is X`` (the last one
    wins: a model may correct itself on a later line). Surrounding ``$``, markdown bold and a
    trailing period are removed.

    >>> extract_answer("so 3+4=7\\nAnswer: 7")
    '7'
    >>> extract_answer("The answer is $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("\\\\boxed{3} or maybe \\\\boxed{4}") is None
    True
    """
    if not isinstance(text, str) or not text:
        return None
    has_boxes, boxed = final_boxed(text)
    if has_boxes:
        return boxed
    best: tuple[int, str] | None = None
    for rx in _LINE_RES:
        for m in rx.finditer(text):
            if best is None or m.start(1) >= best[0]:
                best = (m.start(1), m.group(1))
    if best is None:
        return None
    ans = _clean_answer(best[1])
    return ans or None


_LIST_SEP = re.compile(r"(?:\s*(?:[,;|&]|\bor\b|\band\b))*\s*", re.IGNORECASE)


def extract_last_number(text: str, list_len: int = 3) -> str | None:
    """The last number written in ``text`` ("1,234.5", "-3", "3/4"), or None.

    Opt-in fallback for real models that do not end with an answer line (lm-eval-harness's
    "flexible extract"); synthetic tasks never use it, so a trained model must state its answer.
    Guard against listing candidates: when the last number ends a list of ``list_len`` or more numbers
    separated only by commas, semicolons, "or"/"and" or spaces ("... 40, 41, 42"), there is no
    answer (None), so a completion that enumerates guesses is not graded on its last guess.
    """
    if not isinstance(text, str):
        return None
    found = list(NUMBER_RE.finditer(text))
    if not found:
        return None
    tail = found[-list_len:]
    if len(tail) == list_len and all(_LIST_SEP.fullmatch(text, a.end(), b.start()) for a, b in zip(tail, tail[1:])):
        return None
    return found[-1].group(0).replace(" ", "").replace("−", "-")


def extract_number_answer(text: str, last_number_fallback: bool = True) -> str | None:
    """A numeric task's answer, canonical: the :func:`extract_answer` span when it is a number, else its
    last number (lm-eval's flexible-extract inside the span: "The answer is 30 - 11 = 19" gives 19; "3 or
    4" none); with ``last_number_fallback``, the text's last number when there is no span with a number."""
    span = extract_answer(text)
    if span is not None and NUMBER_RE.search(span):
        return canonical_number(span) or canonical_number(extract_last_number(span, list_len=2))
    return canonical_number(extract_last_number(text)) if last_number_fallback else None


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------

_STRICT_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_FRAC_LATEX = re.compile(r"^([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_MAX_DIGITS = 4000  # Python refuses int(str) beyond 4300 digits; longer strings are not answers


def _plain_number(s: str) -> Fraction | None:
    if len(s) > _MAX_DIGITS or not _STRICT_NUM.fullmatch(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


_UNITS_RE = re.compile(r"(?<=[\d.])\s*(?:\\[a-z]+\{)?[A-Za-z][A-Za-z .'’/]*\}?$")
_UNIT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .'’/")
_SPACE_RE = re.compile(r"\s")


def _strip_units(t: str) -> str:
    """``t`` without trailing unit words ("18 dollars", "5 \\text{cm}"), in linear time.

    :data:`_UNITS_RE` alone is quadratic: searched from every digit, it scans to the end of the
    text each time ("1" + ". a" * 12000 + "!" took 11 s). A match can only start in the text's tail
    of unit characters (plus the whitespace or ``\\cmd{`` just before it), so the search starts there
    and every start it tries either fails at once or matches.
    """
    end = len(t) - 1 if t.endswith("}") else len(t)
    k = end
    while k > 0 and t[k - 1] in _UNIT_CHARS:
        k -= 1
    if k > 0 and t[k - 1] == "{":  # "\\text{" right before the unit words
        i = k - 1
        while i > 0 and "a" <= t[i - 1] <= "z":
            i -= 1
        if i > 0 and i < k - 1 and t[i - 1] == "\\":
            k = i - 1
    while k > 0 and _SPACE_RE.match(t, k - 1):
        k -= 1
    m = _UNITS_RE.search(t, k)
    return t[: m.start()] if m else t


def parse_number(s: str | None, units: bool = True) -> Fraction | None:
    """Parse a numeric answer exactly, or return None.

    Accepts thousands commas ("1,000" but not "1,2"), a leading ``$`` / ``\\$``, a trailing ``%``,
    a trailing period, decimals (".5", "2."), negatives (also the unicode minus), fractions
    ("3/4", "\\frac{3}{4}") and, when ``units`` is true, trailing words ("18 dollars", "5 cm").
    "50%" parses as 50 (answers are compared in the unit the question uses).

    >>> parse_number("$1,000.50")
    Fraction(2001, 2)
    >>> parse_number("3/4 cups")
    Fraction(3, 4)
    """
    if not isinstance(s, str):
        return None
    t = s.strip().replace("−", "-").replace("\\!", "").replace("{,}", ",")
    if units:
        t = _strip_units(t)
    t = re.sub(r"\\?%$", "", t.strip()).strip()
    t = t.rstrip(".") if t.endswith(".") and not re.fullmatch(r"[-+]?\d+\.", t) else t
    neg = ""
    if t[:1] in "+-" and t[1:2] in ("$", "\\"):
        neg, t = t[0], t[1:]
    t = re.sub(r"^\\?\$\s*", "", t)
    t = neg + t.replace(" ", "") if re.fullmatch(r"[-+\d,.\s/]+", t) else neg + t
    if not t:
        return None
    m = _FRAC_LATEX.match(t)
    if m:
        num, den = _plain_number(m.group(2).strip()), _plain_number(m.group(3).strip())
        if num is None or den is None or den == 0:
            return None
        return -num / den if m.group(1) == "-" else num / den
    if "/" in t:
        parts = t.split("/")
        if len(parts) != 2:
            return None
        num, den = _plain_number(parts[0]), _plain_number(parts[1])
        if num is None or den is None or den == 0:
            return None
        return num / den
    return _plain_number(t)


def numbers_equal(a: str | float | Fraction | None, b: str | float | Fraction | None, rel_tol: float = 1e-6) -> bool:
    """Whether two numeric answers are the same number: exactly when either is an integer (1450001
    is not 1450000, nor is 1450000.5), else exact or within ``rel_tol`` relatively (0.3333333 is 1/3)."""

    def as_frac(x):
        if isinstance(x, Fraction):
            return x
        if isinstance(x, bool) or x is None:
            return None
        if isinstance(x, (int, float)):
            try:
                return Fraction(x)
            except (ValueError, OverflowError):
                return None
        return parse_number(x)

    fa, fb = as_frac(a), as_frac(b)
    if fa is None or fb is None:
        return False
    if fa == fb:
        return True
    if fa.denominator == 1 or fb.denominator == 1:  # a tolerance is for rounded decimals, not counts
        return False
    return abs(fa - fb) <= Fraction(rel_tol) * max(abs(fa), abs(fb))


def canonical_number(s: str | None, units: bool = True) -> str | None:
    """A canonical string for a numeric answer ("1,000" and "1000.0" -> "1000"; "0.5" -> "1/2")."""
    f = parse_number(s, units=units)
    if f is None:
        return None
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def normalize_answer(s: str | None) -> str | None:
    """Majority-vote key: the canonical number when ``s`` is numeric, else ``s`` without spaces."""
    if s is None:
        return None
    c = canonical_number(s)
    return c if c is not None else re.sub(r"\s+", "", s) or None


def normalize_latex(s: str | None) -> str | None:
    """Majority-vote key for LaTeX answers: a light, conservative normalisation (no math engine)."""
    if s is None:
        return None
    t = s.strip()
    t = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:)", "", t)
    t = re.sub(r"\\[dt]frac", r"\\frac", t)
    t = re.sub(r"\^\s*\{?\\circ\}?|\\text\{\s*\}", "", t)
    t = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"\s+", "", t).rstrip(".")
    c = canonical_number(t, units=False)
    return c if c is not None else (t or None)


# --------------------------------------------------------------------------------------------
# math equivalence through math_verify in a worker process
# --------------------------------------------------------------------------------------------


def _strict_number(s: str) -> Fraction | None:
    """A number with no words around it (so "2x" is not 2), for the fast path of math_equal."""
    t = s.strip().strip("$").strip()
    if re.search(r"[A-Za-z]", re.sub(r"\\[dt]?frac", "", t)):
        return None
    return parse_number(t, units=False)


def _fast_equal(pred: str, gold: str) -> bool | None:
    """True/False when a cheap check decides, None when math_verify must."""
    p, g = re.sub(r"\s+", "", pred), re.sub(r"\s+", "", gold)
    if p == g:
        return True
    fp, fg = _strict_number(pred), _strict_number(gold)
    if fp is not None and fg is not None:
        return fp == fg
    return None


_CHECKER: MathChecker | None = None
_CHECKER_LOCK = threading.Lock()


def _checker() -> MathChecker:
    global _CHECKER
    with _CHECKER_LOCK:
        if _CHECKER is None:
            _CHECKER = MathChecker()
        return _CHECKER


def shutdown() -> None:
    """Stop the module-level math_verify worker (also registered with atexit)."""
    global _CHECKER
    with _CHECKER_LOCK:
        if _CHECKER is not None:
            _CHECKER.shutdown()
        _CHECKER = None


atexit.register(shutdown)


def math_equal(pred: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """Whether answer ``pred`` equals ``gold`` mathematically (LaTeX or plain).

    Exact string or number equality decides at once; otherwise ``math_verify`` decides in the
    worker process, and a call that runs past ``timeout`` seconds returns False (the worker is
    killed and restarted). Safe from any thread and from worker processes; concurrent callers use up
    to ``MathChecker.max_workers`` workers in parallel. The timeout covers the check itself: a call
    that must start a worker (the first of a process, or the first after a timeout) also waits about
    a second for it to import sympy, and a caller may wait for a free worker when all are busy.

    Guards against answers that fool string or sympy checks: a ``pred`` longer than
    :data:`MAX_ANSWER_CHARS` (and twice the gold) is False without parsing; in an equation
    ``a = b = c`` (or ``\\to``, ``\\equiv``, ``\\implies`` ...) every side without a variable must equal
    ``gold`` on its own (so ``3 = 4`` is not 4); in ``a \\lor b`` (``\\vee``, ``\\\\`` ...) every item
    must; in ``a \\cup b`` every plain number must; a connective that ``gold`` itself contains is left
    to math_verify. Several different boxed answers never reach here (:func:`extract_answer` gives
    None). No check starts after ``timeout``, whichever path the answer takes.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if not pred.strip() or not gold.strip():
        return False
    if len(pred) > max(MAX_ANSWER_CHARS, 2 * len(gold)):  # absurdly long: never sent to sympy
        return False
    if _BOX_RE.search(pred):  # raw text rather than an extracted answer: grade what it boxes
        pred = final_boxed(pred)[1] or ""
        if not pred:
            return False
    if not _balanced(pred):  # "4} or \\text{3" would close the wrapping \\boxed{} early
        return False
    fast = _fast_equal(pred, gold)
    if fast is not None:
        return fast
    return _equal(pred, gold, time.monotonic() + timeout)


# math_verify reads "3 \\to 4", "3 \\equiv 4", "3 \\lor 4" or "3 \\cup 4" as its last item, 4.
_CMD_END = r"(?![A-Za-z])"
_RELATIONS = re.compile(
    r"=|\\(?:to|gets|[Rr]ightarrow|[Ll]eftarrow|[Ll]ongrightarrow|[Ll]ongleftarrow|[Ll]eftrightarrow"
    r"|[Ll]ongleftrightarrow|implies|impliedby|iff|mapsto|longmapsto|equiv|approx|sim|simeq|cong|doteq"
    r"|mid|therefore|because)" + _CMD_END
    + "|[\u2190-\u21ff\u27f5-\u27ff\u2261\u2248\u223c\u2243\u2245\u2223\u2234\u2235]")  # arrows, ≡ ≈ ∼ ≃ ≅ ∣ ∴ ∵
_HEDGES = re.compile(r"\\(?:lor|vee|land|wedge)" + _CMD_END + r"|\\\\|[\u2228\u2227]")
_SET_OPS = re.compile(r"\\(?:cup|cap|setminus)" + _CMD_END + "|[\u222a\u2229\u2216]")


def _split_on(rx: re.Pattern, pred: str, gold: str) -> list[str] | None:
    """``pred`` cut at each match of ``rx`` that ``gold`` does not also contain; None when none."""
    cuts = [m for m in rx.finditer(pred) if m.group(0) not in gold]
    if not cuts:
        return None
    parts, last = [], 0
    for m in cuts:
        parts.append(pred[last : m.start()])
        last = m.end()
    return parts + [pred[last:]]


def _variable_free(side: str) -> bool:
    return not side.strip() or not _LETTER.search(_LATEX_CMD.sub("", side))


def _equal(pred: str, gold: str, deadline: float) -> bool:
    """:func:`math_equal` past its guards: connectives first, then math_verify, all by ``deadline``."""
    if time.monotonic() >= deadline:
        return False
    # A disjunction or list ("3 \\lor 4", "3 \\\\ 4") is right only when every item is.
    items = _split_on(_HEDGES, pred, gold)
    if items is not None:
        return all(item.strip() and _equal(item, gold, deadline) for item in items)
    # A relation "3 = 4", "3 \\to 4", "3 \\equiv 4": every side without a variable must equal gold
    # itself ("x = 4" and "x \\to 4" stay right); a set expression: every side that is a plain number.
    for rx, checked in ((_RELATIONS, _variable_free), (_SET_OPS, lambda side: _strict_number(side) is not None)):
        sides = _split_on(rx, pred, gold) or []
        for side in sides[:-1]:
            if checked(side) and not _check(side, gold, deadline):
                return False
    return _check(pred, gold, deadline)


def _balanced(s: str) -> bool:
    """Whether the unescaped ``{`` / ``}`` of ``s`` are balanced."""
    depth, j = 0, 0
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return False
        j += 1
    return depth == 0
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_LETTER = re.compile(r"[A-Za-z]")


def _check(pred: str, gold: str, deadline: float) -> bool:
    if not pred.strip():
        return False
    fast = _fast_equal(pred, gold)
    if fast is not None:
        return fast
    if time.monotonic() >= deadline:  # out of time: no check starts, so the call ends by its timeout
        return False
    try:
        return _checker().check(pred, gold, timeout=max(0.01, deadline - time.monotonic()))
    except RuntimeError:
        return False
