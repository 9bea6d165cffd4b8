"""``arith``: multi-step arithmetic word problems (GSM8K-like structure), generated from a seed.

A problem is a short story whose quantity changes ``ops`` times (add, take away, multiply, split,
buy packs = multiply then add). The gold rationale is one equation per line, then ``Answer: N``::

    Q: Mia has 7 coins. She buys 3 packs of 4. She gives 5 to Leo. How many coins now?
    A:
    3*4=12
    7+12=19
    19-5=14
    Answer: 14

Difficulty knobs: ``min_ops``/``max_ops`` (number of equations, drawn uniformly per problem) and
``max_operand`` (size of the numbers in the story). Every step is checkable against the gold chain
(:meth:`ArithTask.step_correct`), which later measures PRMs against ground truth.

Splits: a question belongs to ``test`` iff a hash of its text falls in the lowest 10% bucket, so
train and test never share a question whatever the seeds or sizes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, distinct_draws, register_task
from deliberate.types import Problem

NAMES = [("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Sam", "He"), ("Zoe", "She"), ("Max", "He"),
         ("Ivy", "She"), ("Ben", "He"), ("Eva", "She"), ("Tom", "He")]
ITEMS = ["apples", "coins", "cards", "books", "shells", "stamps", "marbles", "pens"]
_EQ = re.compile(r"^\s*(-?\d{1,1000})\s*([+\-*/])\s*(-?\d{1,1000})\s*=\s*(-?\d{1,1000})\s*$")
_ANSWER = re.compile(r"Answer:\s*(-?\d{1,1000})(?!\d)")  # longer is no answer (int() stops at 4300 digits)
MAX_VALUE = 999


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    return None



@register_task("arith")
class ArithTask(Task):
    """Multi-step arithmetic word problems with one checkable equation per line."""

    name = "arith"
    stop = ("\n\n",)
    max_tokens = 96

    def __init__(self, min_ops: int = 1, max_ops: int = 4, max_operand: int = 20):
        for name, v in (("min_ops", min_ops), ("max_ops", max_ops), ("max_operand", max_operand)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise DeliberateError(f"arith: option {name} must be an integer (got {v!r})")
        if not (1 <= min_ops <= max_ops <= 12):
            raise DeliberateError(f"arith: need 1 <= min_ops <= max_ops <= 12 (got {min_ops}, {max_ops})")
        if not (2 <= max_operand <= 200):
            raise DeliberateError(f"arith: max_operand must be in [2, 200] (got {max_operand})")
        self.min_ops, self.max_ops, self.max_operand = min_ops, max_ops, max_operand

    # --- generation -----------------------------------------------------------------------
    def _make(self, rng: random.Random) -> tuple[str, list[tuple[int, str, int, int]]]:
        name, pron = rng.choice(NAMES)
        other = rng.choice([n for n, _ in NAMES if n != name])
        item = rng.choice(ITEMS)
        M = self.max_operand
        cur = rng.randint(2, M)
        sents = [f"{name} has {cur} {item}."]
        steps: list[tuple[int, str, int, int]] = []
        target = rng.randint(self.min_ops, self.max_ops)
        while len(steps) < target:
            kinds = ["add", "sub", "mul", "div"] + (["packs"] if target - len(steps) >= 2 else [])
            kind = rng.choice(kinds)
            if kind == "add":
                b = rng.randint(1, M)
                if cur + b > MAX_VALUE:
                    continue
                sents.append(f"{pron} finds {b} more.")
                steps.append((cur, "+", b, cur + b))
            elif kind == "sub":
                if cur < 2:
                    continue
                b = rng.randint(1, min(M, cur - 1))
                sents.append(f"{pron} gives {b} to {other}.")
                steps.append((cur, "-", b, cur - b))
            elif kind == "mul":
                k = rng.randint(2, 4)
                if cur * k > MAX_VALUE:
                    continue
                sents.append(f"{pron} gets {k} times as many.")
                steps.append((cur, "*", k, cur * k))
            elif kind == "div":
                ks = [k for k in (2, 3, 4, 5) if cur % k == 0 and cur // k >= 1]
                if not ks:
                    continue
                k = rng.choice(ks)
                sents.append(f"{pron} keeps one of {k} equal piles.")
                steps.append((cur, "/", k, cur // k))
            else:  # packs: b*c then cur + b*c
                b, c = rng.randint(2, 5), rng.randint(2, M)
                if cur + b * c > MAX_VALUE:
                    continue
                sents.append(f"{pron} buys {b} packs of {c}.")
                steps.append((b, "*", c, b * c))
                steps.append((cur, "+", b * c, cur + b * c))
            cur = steps[-1][3]
        sents.append(f"How many {item} now?")
        return " ".join(sents), steps

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if n is None:
            n = 500 if split == "test" else 5000
        rng = random.Random(f"arith:{seed}:{split}:{self.min_ops}:{self.max_ops}:{self.max_operand}")
        drawn = distinct_draws(split, n, lambda: self._make(rng), what="arith", max_tries=200 * n + 10000)
        return [Problem(id=f"arith-{split}-{seed}-{i}", question=q, answer=str(steps[-1][3]),
                        metadata={"steps": [f"{a}{op}{b}={c}" for a, op, b, c in steps], "ops": len(steps)})
                for i, (q, steps) in enumerate(drawn)]

    # --- formatting -----------------------------------------------------------------------
    def instruction(self, problem: Problem) -> str:
        return (f"{problem.question}\nSolve it step by step, writing one calculation per line like 3*4=12, "
                f"then finish with a line 'Answer: N'.")

    # --- verification ---------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        found = _ANSWER.findall(text)
        return str(int(found[-1])) if found else None

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return answer is not None and answer.strip() == problem.answer

    def step_correct(self, problem: Problem, steps: Sequence[str]) -> list[bool]:
        """Prefix correctness: step i is correct iff it and every earlier step are.

        An equation step is correct when its arithmetic holds and its result equals the gold chain's
        value at that position; the ``Answer:`` line is correct when the answer is.
        """
        gold = [int(s.rsplit("=", 1)[1]) for s in problem.metadata["steps"]]
        out, ok = [], True
        for i, line in enumerate(steps):
            m = _EQ.match(line)
            if m:
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                good = _apply(a, op, b) == c and i < len(gold) and c == gold[i]
            else:
                a_m = _ANSWER.search(line)
                good = bool(a_m) and str(int(a_m[1])) == problem.answer and i == len(gold)
            ok = ok and good
            out.append(ok)
        return out
