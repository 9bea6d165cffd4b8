"""A verifier of your own, in one file: a calculator that recomputes every equation in the steps.

    DELIBERATE_PLUGINS=examples/custom_verifier.py deliberate sweep --task arith \
        --model runs/quickstart/sft/model --verifier calculator \
        --strategies majority,best_of_n,weighted,beam --budgets 4,16 --out runs/calculator
    ... --verifier calculator --verifier-arg wrong=0.2      # a slip lowers a prefix's score to 0.2, not 0

It needs no training and no gold answer. A step ``14+57=71`` is recomputed; a step prefix scores 1.0
while every equation in it holds and ``wrong`` from the first one that does not; an ``Answer: N`` line
must repeat the last equation's result. It catches arithmetic slips, not a wrong plan (adding where
the question multiplies): on ``arith`` the gap between it and the ``oracle`` verifier is the planning
errors. Any task whose steps are equations works (``arith``, ``countdown``, ``times`` of my_tasks.py).
"""

import ast
import operator
import re
from fractions import Fraction

from deliberate.rewards.base import Verifier, register_verifier

EQUATION = re.compile(r"([-+*/()\d\s.]+)=\s*(-?\d+(?:\.\d+)?)")
ANSWER = re.compile(r"Answer:\s*(-?\d+(?:\.\d+)?)")
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str) -> Fraction | None:
    """The exact value of an arithmetic expression of numbers, + - * / and brackets; None for anything
    else (no ``eval``: the text comes from a model)."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))  # exact: 0.1 + 0.2 = 0.3 here
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


class Calculator(Verifier):
    """Per step prefix: 1.0 while every equation so far is arithmetically right, then ``wrong``."""

    name = "calculator"

    def __init__(self, wrong: float = 0.0):
        super().__init__()
        self.wrong = wrong

    def scores(self, steps):
        ok, last, out = True, None, []
        for step in steps:
            equation, answer = EQUATION.fullmatch(step.strip()), ANSWER.fullmatch(step.strip())
            if equation:
                right = Fraction(equation.group(2))
                ok = ok and evaluate(equation.group(1)) == right
                last = right
            elif answer and last is not None:
                ok = ok and Fraction(answer.group(1)) == last
            out.append(1.0 if ok else self.wrong)  # any other line (words, a cut-off step) changes nothing
        return out

    def score_batch(self, items):
        self.stats.calls += 1
        self.stats.sequences += len(items)
        return [self.scores(steps) for _problem, steps in items]

    def describe(self):
        return {"name": self.name, "wrong": self.wrong}


@register_verifier("calculator")
def calculator(arg, task=None, seed=0, wrong: float = 0.0):
    """Recomputes each step's equation: 1 while all hold, `wrong` after a slip (no gold answer used)."""
    if arg:
        raise ValueError(f"calculator takes no argument after ':' (got {arg!r}); use --verifier-arg wrong=...")
    wrong = float(wrong)  # `--verifier-arg wrong=0` arrives as an int
    if not 0.0 <= wrong <= 1.0:
        raise ValueError(f"wrong must be in [0, 1] (got {wrong})")
    return Calculator(wrong)
