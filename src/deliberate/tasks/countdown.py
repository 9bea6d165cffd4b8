"""``countdown``: reach a target from a few numbers with + - * / (the Stream-of-Search puzzle).

Rules (standard Countdown): each given number is used at most once, and every intermediate result
must be an integer (division only when exact, never by zero). The solver and the generator also
keep intermediate results non-negative (``a-b`` only with ``a >= b``); the checker does not require
that, since any expression is fine as long as its integer arithmetic holds.

The gold answer of a problem is its target, but many expressions reach it, so this task verifies
the *solution*: :meth:`CountdownTask.extract_answer` returns the expression on the last
``Answer:`` line (or in the last ``\\boxed{}``), and :meth:`CountdownTask.is_correct` parses it
safely, checks it uses only the problem's numbers (each at most once), that every intermediate
result is an integer, and that it evaluates to the target. The rationale is one step per line::

    Q: 3 7 25 50 -> 82
    A:
    50+25=75
    75+7=82
    Answer: 50+25+7

The search itself is exposed for Stream of Search: :func:`search` yields every visited
:class:`State` (DFS or BFS, optional child-ordering heuristic), :func:`solve` returns the steps of
the first solution DFS finds, and :func:`search_stream` writes a whole search (dead ends and
backtracking included) as training text. Generated problems are always solvable (the target is made by a
random walk down the same search tree). Splits: a question is ``test`` iff a hash of its text falls
in the lowest 10% bucket, so train and test never share a question.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, distinct_draws, register_task
from deliberate.tasks.grading import final_boxed
from deliberate.types import Problem

_ANSWER = re.compile(r"Answer:\s*(\S.*)$", re.MULTILINE)  # greedy + strip: linear on long lines
_STEP = re.compile(r"^\s*(\d{1,1000})\s*([+\-*/])\s*(\d{1,1000})\s*=\s*(\d{1,1000})\s*$")  # int() limit: 4300 digits
MAX_EXPR_CHARS = 200


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """A node of the Countdown search tree.

    ``numbers`` are the values still available, ``exprs`` the expression that made each one (a
    given number is its own expression), ``steps`` the path from the root (``"12+3=15"`` each).
    """

    numbers: tuple[int, ...]
    exprs: tuple[str, ...]
    steps: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.steps)

    def solved(self, target: int) -> bool:
        return target in self.numbers

    def expression(self, target: int) -> str | None:
        """The expression reaching ``target`` in this state, if any."""
        for v, e in zip(self.numbers, self.exprs):
            if v == target:
                return e
        return None


def _combine(a: int, b: int) -> list[tuple[str, int]]:
    """Results of one operation on ``a >= b`` that keep values non-negative integers."""
    out = [("+", a + b), ("-", a - b), ("*", a * b)]
    if b != 0 and a % b == 0:
        out.append(("/", a // b))
    return out


def _wrap(e: str, op: str, right: bool) -> str:
    """Parenthesise sub-expression ``e`` when placed as an operand of ``op``."""
    if not re.search(r"[+\-*/]", e):
        return e
    top = _top_ops(e)
    if op in "+":
        return e
    if op == "-":
        return f"({e})" if right and top & {"+", "-"} else e
    if op == "*":
        return f"({e})" if top & {"+", "-"} else e
    return f"({e})" if (top & {"+", "-"}) or (right and top & {"*", "/"}) else e  # "/"


def _top_ops(e: str) -> set[str]:
    depth, ops = 0, set()
    for c in e:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and c in "+-*/":
            ops.add(c)
    return ops


def children(state: State) -> list[State]:
    """Every state one operation away: pick two numbers (larger first), apply + - * /."""
    out = []
    nums = state.numbers
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            (a, ea), (b, eb) = (nums[i], state.exprs[i]), (nums[j], state.exprs[j])
            if a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            rest_n = tuple(v for k, v in enumerate(nums) if k not in (i, j))
            rest_e = tuple(v for k, v in enumerate(state.exprs) if k not in (i, j))
            for op, r in _combine(a, b):
                expr = f"{_wrap(ea, op, False)}{op}{_wrap(eb, op, True)}"
                out.append(State(rest_n + (r,), rest_e + (expr,), state.steps + (f"{a}{op}{b}={r}",)))
    return out


def search(
    numbers: Sequence[int],
    target: int,
    strategy: str = "dfs",
    heuristic: Callable[[State, int], float] | None = None,
) -> Iterator[State]:
    """Yield every state the search visits, in visit order, starting with the root.

    ``strategy`` is ``"dfs"`` or ``"bfs"``; ``heuristic(state, target)`` (lower first) orders each
    node's children, e.g. ``lambda s, t: min(abs(v - t) for v in s.numbers)``. The search stops
    after yielding a state that contains ``target`` (check ``state.solved(target)``); it does not
    deduplicate states, so the stream is exactly the tree walk (dead ends included). Callers may
    stop early by breaking out of the loop.
    """
    if strategy not in ("dfs", "bfs"):
        raise DeliberateError(f"unknown search strategy {strategy!r}; valid: dfs, bfs")
    nums = tuple(int(v) for v in numbers)
    root = State(nums, tuple(str(v) for v in nums))
    frontier: deque[State] = deque([root])
    while frontier:
        state = frontier.popleft() if strategy == "bfs" else frontier.pop()
        yield state
        if state.solved(target):
            return
        kids = children(state)
        if heuristic is not None:
            kids.sort(key=lambda s: heuristic(s, target))
        if strategy == "dfs":
            frontier.extend(reversed(kids))  # first child is visited first
        else:
            frontier.extend(kids)


def solve(numbers: Sequence[int], target: int, strategy: str = "dfs") -> list[str] | None:
    """Steps (``"12+3=15"``) of the first solution the search finds, or None if there is none."""
    for state in search(numbers, target, strategy):
        if state.solved(target):
            return list(state.steps)
    return None


def solve_state(numbers: Sequence[int], target: int, strategy: str = "dfs") -> State | None:
    """Like :func:`solve` but returns the solved :class:`State` (steps and final expression)."""
    for state in search(numbers, target, strategy):
        if state.solved(target):
            return state
    return None


def nearest(state: State, target: int) -> float:
    """Child-ordering heuristic: distance from the target of the state's closest number."""
    return min(abs(v - target) for v in state.numbers)


STREAM_STRATEGIES = ("dfs", "bfs")


def search_stream(numbers: Sequence[int], target: int, strategy: str = "dfs",
                  heuristic: Callable[[State, int], float] | None = nearest,
                  max_states: int | None = None) -> tuple[str, str] | None:
    """The search written out as text, for Stream of Search: ``(stream, path)`` or None.

    ``stream`` lists every state the search visits after the root, in visit order, one per line:
    the state's last operation, indented one space per level below the first, then ``(remaining
    numbers)`` for an inner state, ``x`` for a dead end (one number left, not the target) or ``!``
    for the state that reaches the target; then the ``Answer:`` line. ``path`` is the same search's
    solution only: the solved state's operations and the ``Answer:`` line (the "optimal path"
    condition of the Stream of Search paper, from the very same search)::

        12+7=19 (3 19)          12+7=19
         19+3=22 x              19*3=57
         19-3=16 x              Answer: (12+7)*3
         19*3=57 !
        Answer: (12+7)*3

    None when the search visits more than ``max_states`` states (root included) before solving, or
    finds no solution.
    """
    if strategy not in STREAM_STRATEGIES:
        raise DeliberateError(f"unknown search strategy {strategy!r}; valid: {', '.join(STREAM_STRATEGIES)}")
    lines = []
    for k, st in enumerate(search(numbers, target, strategy, heuristic)):
        if max_states is not None and k >= max_states:
            return None
        if st.depth == 0:
            continue
        solved = st.solved(target)
        mark = "!" if solved else "x" if len(st.numbers) == 1 else f"({' '.join(map(str, sorted(st.numbers)))})"
        lines.append(f"{' ' * (st.depth - 1)}{st.steps[-1]} {mark}")
        if solved:
            answer = f"Answer: {st.expression(target)}"
            return "\n".join(lines + [answer]), "\n".join(list(st.steps) + [answer])
    return None


# --------------------------------------------------------------------------------------------
# checking an expression
# --------------------------------------------------------------------------------------------

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate(expr: str) -> tuple[Fraction, list[int]] | None:
    """Value of an arithmetic expression and the integer literals it uses, or None when it is not
    a plain + - * / expression over non-negative integers with integer intermediate results."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    e = expr.replace("×", "*").replace("x", "*").replace("÷", "/").replace("−", "-").strip()
    try:
        tree = ast.parse(e, mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def ev(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if a is None or b is None:
                return None
            op = _OPS[type(node.op)]
            if op == "/":
                if b == 0 or (a / b).denominator != 1:
                    return None
                return a / b
            return a + b if op == "+" else a - b if op == "-" else a * b
        return None  # unary minus, names, calls, floats ...: not allowed

    value = ev(tree.body)
    return None if value is None else (value, used)


def check_expression(expr: str | None, numbers: Sequence[int], target: int) -> bool:
    """Whether ``expr`` (optionally ``"... = target"``) reaches ``target`` using each of ``numbers``
    at most once, with integer intermediate results."""
    if expr is None:
        return False
    lhs = expr
    if "=" in expr:
        lhs, rhs = expr.rsplit("=", 1)
        if rhs.strip() != str(target):
            return False
    res = evaluate(lhs)
    if res is None:
        return False
    value, used = res
    if value != target:
        return False
    avail = Counter(int(v) for v in numbers)
    return all(avail[k] >= c for k, c in Counter(used).items())


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------



@register_task("countdown")
class CountdownTask(Task):
    """Countdown: combine the numbers with + - * / to reach the target (each number at most once)."""

    name = "countdown"
    stop = ("\n\n",)

    def __init__(self, n_numbers: int = 4, min_number: int = 1, max_number: int = 99,
                 min_target: int = 10, max_target: int = 100):
        if not (2 <= n_numbers <= 6):
            raise DeliberateError(f"countdown: n_numbers must be in [2, 6] (got {n_numbers})")
        if not (1 <= min_number <= max_number):
            raise DeliberateError(f"countdown: need 1 <= min_number <= max_number (got {min_number}, {max_number})")
        if not (0 <= min_target <= max_target):
            raise DeliberateError(f"countdown: need 0 <= min_target <= max_target (got {min_target}, {max_target})")
        self.n_numbers, self.min_number, self.max_number = n_numbers, min_number, max_number
        self.min_target, self.max_target = min_target, max_target
        self.max_tokens = 24 * n_numbers + 48  # (n-1) step lines + answer line, with room

    def _make(self, rng: random.Random) -> tuple[list[int], int] | None:
        nums = [rng.randint(self.min_number, self.max_number) for _ in range(self.n_numbers)]
        state = State(tuple(nums), tuple(str(v) for v in nums))
        while len(state.numbers) > 1:  # random walk to a leaf: its value is reachable by construction
            state = rng.choice(children(state))
        target = state.numbers[0]
        if not (self.min_target <= target <= self.max_target) or target in nums:
            return None
        return nums, target

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if n is None:
            n = 500 if split == "test" else 5000
        rng = random.Random(f"countdown:{seed}:{split}:{self.n_numbers}:{self.min_number}:{self.max_number}:"
                            f"{self.min_target}:{self.max_target}")

        def draw():
            made = self._make(rng)
            return None if made is None else (f"{' '.join(map(str, made[0]))} -> {made[1]}", made)

        out = []
        for i, (q, (nums, target)) in enumerate(distinct_draws(split, n, draw, what="countdown",
                                                               max_tries=1000 * n + 10000)):
            sol = solve_state(nums, target)
            assert sol is not None, "generated problems are solvable by construction"
            out.append(Problem(
                id=f"countdown-{split}-{seed}-{i}", question=q, answer=str(target),
                metadata={"numbers": nums, "target": target, "steps": list(sol.steps),
                          "expression": sol.expression(target)},
            ))
        return out

    def instruction(self, problem: Problem) -> str:
        nums, target = problem.metadata["numbers"], problem.metadata["target"]
        return (f"Using the numbers {', '.join(map(str, nums))}, each at most once, and the operations + - * / "
                f"(integer results only), reach {target}. Write one operation per line like 12+3=15, then "
                f"finish with a line 'Answer: EXPRESSION' giving one expression that equals {target}.")

    def rationale(self, problem: Problem) -> str:
        return "\n".join(problem.metadata["steps"]) + f"\nAnswer: {problem.metadata['expression']}"

    def extract_answer(self, text: str) -> str | None:
        """The expression on the last ``Answer:`` line (or the boxed one, under the hedging rule of
        :func:`deliberate.tasks.grading.final_boxed`), spaces removed."""
        if not isinstance(text, str):
            return None
        has_boxes, boxed = final_boxed(text)  # several different boxed answers: a hedge, no answer
        found = _ANSWER.findall(text) if not has_boxes else []
        ans = boxed if has_boxes else found[-1] if found else None
        if ans is None or len(ans) > 10 * MAX_EXPR_CHARS:
            return None
        ans = re.sub(r"\s+", "", ans).rstrip(".").strip("$")
        return ans or None

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        """True iff ``answer`` is an expression that reaches the target under the rules (not the
        target itself: "82" alone is wrong unless 82 is one of the given numbers)."""
        return check_expression(answer, problem.metadata["numbers"], int(problem.metadata["target"]))

    def normalize(self, answer: str | None) -> str | None:
        """Vote key: the expression without spaces (different correct expressions vote apart)."""
        return None if answer is None else re.sub(r"\s+", "", answer) or None

    def step_correct(self, problem: Problem, steps: Sequence[str]) -> list[bool]:
        """Prefix correctness: a step ``a op b = r`` is correct when its arithmetic is exact and
        ``a`` and ``b`` are still available (given numbers or earlier results, each used once);
        the ``Answer:`` line is correct when its expression solves the problem. A step that is
        legal but leads nowhere counts as correct (the puzzle has no single gold path)."""
        pool = Counter(int(v) for v in problem.metadata["numbers"])
        out, ok = [], True
        for line in steps:
            m = _STEP.match(line)
            if m:
                a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
                res = evaluate(f"{a}{op}{b}")
                need = Counter([a, b])
                good = res is not None and res[0] == r and all(pool[k] >= c for k, c in need.items())
                if good:
                    pool -= Counter([a, b])
                    pool[r] += 1
            else:
                good = line.strip().startswith("Answer:") and self.is_correct(self.extract_answer(line), problem)
            ok = ok and good
            out.append(ok)
        return out
