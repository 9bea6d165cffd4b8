"""``math500``: the MATH-500 competition problems ("Let's Verify Step by Step"), from local JSONL.

Each line holds ``problem``, ``solution`` (ending in ``\\boxed{}``), ``answer`` (LaTeX),
``subject``, ``level`` and ``unique_id``. Answers are extracted from the last ``\\boxed{}`` (or an
answer line) and compared with :func:`deliberate.tasks.grading.math_equal` (math_verify in a
worker process with a timeout). The gold rationale is the reference solution.
File: option ``path``, else ``$DELIBERATE_DATA/math500/test.jsonl``, else
``../shared/data/math500/test.jsonl`` from the working directory. Test split only: asking for
``train`` raises an error. Problems come in file order (``seed`` is ignored).
"""

from __future__ import annotations

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, register_task
from deliberate.tasks.grading import extract_answer, math_equal, normalize_latex
from deliberate.tasks.jsonl import read_jsonl, resolve_data_file
from deliberate.types import Problem


@register_task("math500")
class MATH500Task(Task):
    """MATH-500 competition math (LaTeX answers, checked with math_verify; test split only)."""

    name = "math500"
    stop = ("\nQ:", "\n\n\n\n")
    max_tokens = 1024

    def __init__(self, path: str | None = None, timeout: float = 5.0):
        if not timeout > 0:
            raise DeliberateError(f"math500: timeout must be > 0 seconds (got {timeout!r})")
        self.path, self.timeout = path, float(timeout)
        self._cache: list[Problem] | None = None

    def _load(self) -> list[Problem]:
        if self._cache is None:
            file = resolve_data_file("math500", "test.jsonl", self.path)
            self._cache = [
                Problem(
                    id=str(row.get("unique_id") or f"math500-{row['_line']}"), question=str(row["problem"]),
                    answer=str(row["answer"]),
                    metadata={"solution": str(row["solution"]), "subject": row.get("subject"),
                              "level": row.get("level"), "file": str(file), "line": row["_line"]},
                )
                for row in read_jsonl(file, ("problem", "solution", "answer"))
            ]
        return self._cache

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if split != "test":
            raise DeliberateError("math500 has only a test split; use split='test'")
        rows = self._load()
        return rows if n is None else rows[:n]

    def instruction(self, problem: Problem) -> str:
        return (f"Solve the following math problem. Reason step by step, and put your final answer within "
                f"\\boxed{{}}.\n\n{problem.question}")

    def rationale(self, problem: Problem) -> str:
        return problem.metadata["solution"]

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text)

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return math_equal(answer, problem.answer, timeout=self.timeout)

    def normalize(self, answer: str | None) -> str | None:
        return normalize_latex(answer)
