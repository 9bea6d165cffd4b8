"""``gsm8k``: grade-school math word problems (Cobbe et al. 2021), read from local JSONL files.

Each line holds ``question`` and ``answer``: a rationale with ``<<expr=value>>`` calculator marks
and a last line ``#### N``. The gold answer is N (canonical number); the gold rationale is the
rationale with the marks removed and ``Answer: N`` as its last line; the marks are kept, parsed, in
``metadata["calcs"]`` as ``(expression, value)`` pairs.

Files: option ``path`` (test file) / ``train_path`` (train file), else
``$DELIBERATE_DATA/gsm8k/{test,train}.jsonl``, else ``../shared/data/gsm8k/{test,train}.jsonl``
from the working directory. Problems come in file order (``seed`` is ignored).
Answers are compared as numbers ("1,000" = "1000.00"); real models that end without an answer
line are graded on their last number unless ``last_number_fallback=False``.
"""

from __future__ import annotations

import re

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, register_task
from deliberate.tasks.grading import canonical_number, extract_number_answer, numbers_equal
from deliberate.tasks.jsonl import read_jsonl, resolve_data_file
from deliberate.types import Problem

_CALC = re.compile(r"<<([^<>]*)>>")
_FINAL = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)


def parse_gsm8k_answer(answer: str) -> tuple[list[str], str | None, list[tuple[str, str]]]:
    """Split a GSM8K ``answer`` field into (rationale lines without marks, final answer, calcs)."""
    calcs = []
    for m in _CALC.finditer(answer):
        expr, _, value = m.group(1).rpartition("=")
        calcs.append((expr.strip(), value.strip()))
    finals = _FINAL.findall(answer)
    final = finals[-1] if finals else None
    body = _FINAL.sub("", _CALC.sub("", answer))
    lines = [ln.strip() for ln in body.split("\n") if ln.strip()]
    return lines, final, calcs


def numeric_extract(text: str, last_number_fallback: bool) -> str | None:
    """The answer as a canonical number (:func:`~deliberate.tasks.grading.extract_number_answer`)."""
    return extract_number_answer(text, last_number_fallback)


class NumericWordProblemTask(Task):
    """Word problems with a numeric answer (GSM8K, MAWPS): instruction, extraction, numeric check.

    Subclasses set ``last_number_fallback``: real models that end without an answer line are graded
    on their last number when it is True.
    """

    last_number_fallback: bool = True

    def instruction(self, problem: Problem) -> str:
        return (f"Solve the following math word problem. Reason step by step, then finish with a line "
                f"'The answer is N.' where N is the final number.\n\n{problem.question}")

    def extract_answer(self, text: str) -> str | None:
        return numeric_extract(text, self.last_number_fallback)

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return numbers_equal(answer, problem.answer)

    def normalize(self, answer: str | None) -> str | None:
        """The canonical number; None for anything else, so only well-formed answers vote."""
        return canonical_number(answer)


@register_task("gsm8k")
class GSM8KTask(NumericWordProblemTask):
    """GSM8K grade-school math word problems (numeric answers)."""

    name = "gsm8k"
    stop = ("\nQ:", "\n\n\n")
    max_tokens = 512

    def __init__(self, path: str | None = None, train_path: str | None = None, last_number_fallback: bool = True):
        self.paths = {"test": path, "train": train_path}
        self.last_number_fallback = last_number_fallback
        self._cache: dict[str, list[Problem]] = {}

    def _load(self, split: str) -> list[Problem]:
        if split in self._cache:
            return self._cache[split]
        file = resolve_data_file("gsm8k", f"{split}.jsonl", self.paths[split])
        out = []
        for row in read_jsonl(file, ("question", "answer")):
            for name in ("question", "answer"):
                if not isinstance(row[name], str):
                    raise DeliberateError(f"{file}:{row['_line']}: field {name!r} must be a string "
                                          f"(got {type(row[name]).__name__})")
            lines, final, calcs = parse_gsm8k_answer(str(row["answer"]))
            gold = canonical_number(final) if final is not None else None
            if gold is None:
                raise DeliberateError(f"{file}:{row['_line']}: answer has no numeric '#### N' line")
            out.append(Problem(
                id=f"gsm8k-{split}-{row['_line']}", question=str(row["question"]), answer=gold,
                metadata={"steps": lines, "calcs": calcs, "file": str(file), "line": row["_line"]},
            ))
        self._cache[split] = out
        return out

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        rows = self._load(split)
        return rows if n is None else rows[:n]
