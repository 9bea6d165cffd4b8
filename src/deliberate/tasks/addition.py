"""``addition``: n-digit addition with a digit-by-digit scratchpad (the STaR paper's toy task).

The rationale adds one column per line, from the right, with the carry in as the third term and
the answer digits written so far after the comma; the last line states the answer::

    Q: 97+45
    A:
    7+5+0=12, 2
    9+4+1=14, 142
    Answer: 142

Options: ``digits`` is an int or a ``"min-max"`` range (default ``"1-5"``); each problem draws its
digit count uniformly from the range and both operands have exactly that many digits. ``extract``:
``answer`` (default) grades the last ``Answer: N`` line only, as the tiny model is trained to write;
``last_number`` falls back to the last number written when there is no such line, for real models
that answer in their own words ("540 + 718 = 1258.").
Splits: a question belongs to ``test`` iff a hash of its text falls in the lowest 10% bucket, so
train and test never share a question whatever the seeds or sizes; within a split questions are
distinct. Every scratchpad line is checkable (:meth:`AdditionTask.step_correct`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, distinct_draws, register_task
from deliberate.tasks.grading import canonical_number, extract_last_number
from deliberate.types import Problem

_ANSWER = re.compile(r"Answer:\s*(-?\d{1,1000})(?!\d)")  # longer is no answer (int() stops at 4300 digits)
MAX_DIGITS = 30
EXTRACT = ("answer", "last_number")



def parse_digits(digits: int | str) -> tuple[int, int]:
    """``5`` -> (5, 5); ``"1-5"`` -> (1, 5). Raises DeliberateError on anything else."""
    try:
        if isinstance(digits, bool):
            raise ValueError
        if isinstance(digits, int):
            lo = hi = digits
        else:
            parts = str(digits).strip().split("-")
            if len(parts) not in (1, 2):
                raise ValueError
            lo, hi = int(parts[0]), int(parts[-1])
    except ValueError:
        raise DeliberateError(f"addition: digits must be an int or 'min-max' (got {digits!r})") from None
    if not (1 <= lo <= hi <= MAX_DIGITS):
        raise DeliberateError(f"addition: need 1 <= min digits <= max digits <= {MAX_DIGITS} (got {digits!r})")
    return lo, hi


def scratchpad(a: int, b: int) -> list[str]:
    """The gold scratchpad lines for ``a + b`` (non-negative integers)."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, written, lines = 0, "", []
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        c_in = carry
        s = x + y + c_in
        written = str(s % 10) + written
        carry = s // 10
        shown = (str(carry) if carry else "") + written if i == max(len(xs), len(ys)) - 1 else written
        lines.append(f"{x}+{y}+{c_in}={s}, {shown}")
    return lines


@register_task("addition")
class AdditionTask(Task):
    """n-digit addition with a column-by-column scratchpad (STaR)."""

    name = "addition"
    stop = ("\n\n",)

    def __init__(self, digits: int | str = "1-5", extract: str = "answer"):
        self.min_digits, self.max_digits = parse_digits(digits)
        if extract not in EXTRACT:
            raise DeliberateError(f"addition: extract must be one of {', '.join(EXTRACT)} (got {extract!r})")
        self.extract = extract
        d = self.max_digits
        self.max_tokens = d * (12 + d) + d + 16  # d lines "9+9+1=19, <partial>" + answer line

    def _space(self) -> int:
        return sum((10 if d == 1 else 9 * 10 ** (d - 1)) ** 2 for d in range(self.min_digits, self.max_digits + 1))

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if n is None:
            n = 500 if split == "test" else 5000
        if n > self._space():
            raise DeliberateError(
                f"addition: asked for {n} {split} problems but only {self._space()} questions exist with "
                f"{self.min_digits}-{self.max_digits} digits"
            )
        rng = random.Random(f"addition:{seed}:{split}:{self.min_digits}:{self.max_digits}")

        def draw():
            d = rng.randint(self.min_digits, self.max_digits)
            lo = 0 if d == 1 else 10 ** (d - 1)
            a, b = rng.randint(lo, 10**d - 1), rng.randint(lo, 10**d - 1)
            return f"{a}+{b}", (a, b, d)

        drawn = distinct_draws(split, n, draw, what="addition", max_tries=200 * n + 10000)
        return [Problem(id=f"addition-{split}-{seed}-{i}", question=q, answer=str(a + b),
                        metadata={"a": a, "b": b, "digits": d, "steps": scratchpad(a, b)})
                for i, (q, (a, b, d)) in enumerate(drawn)]

    def instruction(self, problem: Problem) -> str:
        return (f"Compute {problem.question}. Add the digits column by column from the right, one column per "
                f"line like 7+5+0=12, 2 (the digits, the carry in, the sum, then the answer digits so far), "
                f"then finish with a line 'Answer: N'.")

    def extract_answer(self, text: str) -> str | None:
        found = _ANSWER.findall(text)
        if found:
            return str(int(found[-1]))
        if self.extract == "last_number":
            n = extract_last_number(text)
            return canonical_number(n, units=False) if n is not None else None
        return None

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        if answer is None:
            return False
        return canonical_number(answer, units=False) == problem.answer

    def normalize(self, answer: str | None) -> str | None:
        return None if answer is None else (canonical_number(answer, units=False) or answer.strip())

    def step_correct(self, problem: Problem, steps: Sequence[str]) -> list[bool]:
        """Prefix correctness: step i is correct iff it equals the gold scratchpad line i (spaces
        ignored) and every earlier step is correct; the ``Answer:`` line must come right after the
        scratchpad and state the right sum."""
        gold = [re.sub(r"\s+", "", s) for s in problem.metadata["steps"]]
        out, ok = [], True
        for i, line in enumerate(steps):
            m = _ANSWER.search(line)
            if m and line.strip().startswith("Answer:"):
                good = i == len(gold) and str(int(m[1])) == problem.answer
            else:
                good = i < len(gold) and re.sub(r"\s+", "", line) == gold[i]
            ok = ok and good
            out.append(ok)
        return out
