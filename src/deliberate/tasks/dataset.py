"""``dataset:SOURCE``: math problems from any ``datasets.load_dataset`` source, with the fields named.

Why: a researcher's own data (or a hub data set nobody wrote a loader for) should not have to match a
built-in task's schema. ``SOURCE`` is a hub data set (``org/name``, through the normal HF cache:
fetched once, ``HF_HUB_OFFLINE=1`` honoured, ``revision=`` pins it), a local ``.json`` / ``.jsonl`` /
``.parquet`` / ``.csv`` file, or a local folder of such files (its splits named by the file names, as
``load_dataset`` names them).

    deliberate eval --task dataset:HuggingFaceH4/MATH-500 --task-arg question_field=problem \\
        --task-arg answer_format=latex ...
    deliberate eval --task dataset:my_problems.jsonl --task-arg question_field=input \\
        --task-arg answer_field=target ...

Options: ``question_field`` (default ``question``), ``answer_field`` (default ``answer``),
``answer_format``: ``number`` (the gold answer is a number; graded as GSM8K's answers are, by value),
``gsm8k`` (the field is a GSM8K rationale ending ``#### N``; its lines become the gold steps) or
``latex`` (a LaTeX answer, or a solution whose last ``\\boxed{}`` holds it; graded with math_verify as
MATH-500's are). ``split`` / ``train_split``: the data set's split names used as our test and train
splits (``test`` / ``train``; a single local file is the test split); ``config``: the data set's
configuration (``main`` for ``openai/gsm8k``); ``id_field``, ``solution_field`` (a gold rationale for
fine-tuning); ``last_number_fallback`` (numeric formats) and ``timeout`` (``latex``).
Problems come in the data set's order (``seed`` is ignored).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.hub import hub_offline, is_hub_id, snapshot
from deliberate.tasks.base import Task, check_split, register_task
from deliberate.tasks.grading import canonical_number, extract_answer, math_equal, normalize_latex, numbers_equal
from deliberate.tasks.gsm8k import NumericWordProblemTask, numeric_extract, parse_gsm8k_answer
from deliberate.tasks.math500 import MATH500Task
from deliberate.types import Problem

ANSWER_FORMATS = ("number", "gsm8k", "latex")
#: ``load_dataset``'s packaged builder for each local file type
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source: str, split: str, *, config: str | None = None, revision: str | None = None) -> list[dict]:
    """The rows of ``split`` of ``source`` (see the module docstring) through ``datasets.load_dataset``."""
    import datasets  # lazy: datasets (a TRL dependency, seconds to import); only this task reads through it

    p = Path(source).expanduser()
    if revision is not None and not is_hub_id(source):
        raise DeliberateError(f"dataset: revision={revision!r} applies to a hub data set (org/name), not {source!r}")
    try:
        if p.is_file():
            builder = BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise DeliberateError(f"dataset: {p} is not a {', '.join(BUILDERS)} file")
            ds = datasets.load_dataset(builder, data_files={"test": str(p)})
            if split != "test":
                raise DeliberateError(f"dataset: {p} is one file, one split (test); give a folder or a hub data "
                                      f"set for a {split!r} split")
        elif p.is_dir():
            ds = datasets.load_dataset(str(p), config)
        elif is_hub_id(source):
            if hub_offline():  # the cached snapshot, as load_dataset's own offline path cannot always find it
                ds = datasets.load_dataset(str(snapshot(source, revision=revision, repo_type="dataset")), config)
            else:
                ds = datasets.load_dataset(source, config, revision=revision)
        else:
            raise DeliberateError(f"dataset: {source!r} is neither a local file or folder nor a hub data set "
                                  "(org/name)")
    except DeliberateError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeliberateError(f"dataset: cannot load {source!r}: {first}") from None
    if split not in ds:
        raise DeliberateError(f"dataset: {source} has no split {split!r}; its splits: {', '.join(ds)}")
    return [dict(row) for row in ds[split]]


def check_field(rows: list[dict], field: str, option: str, source: str) -> None:
    columns = list(rows[0]) if rows else []
    if field not in columns:
        near = difflib.get_close_matches(field, columns, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DeliberateError(f"dataset: {source} has no field {field!r} for {option}{hint}; its fields: "
                              f"{', '.join(columns)} (set --task-arg {option}=NAME)")


@register_task("dataset", argument="source", metavar="source")
class DatasetTask(Task):
    """Math problems from a hub data set or a local json/jsonl/parquet/csv file, fields named by options."""

    name = "dataset"

    def __init__(self, source: str, question_field: str = "question", answer_field: str = "answer",
                 answer_format: str = "number", split: str = "test", train_split: str = "train",
                 config: str | None = None, revision: str | None = None, id_field: str | None = None,
                 solution_field: str | None = None, last_number_fallback: bool = True, timeout: float = 5.0):
        if answer_format not in ANSWER_FORMATS:
            raise DeliberateError(f"dataset: answer_format must be one of {', '.join(ANSWER_FORMATS)} "
                                  f"(got {answer_format!r})")
        if not timeout > 0:
            raise DeliberateError(f"dataset: timeout must be > 0 seconds (got {timeout!r})")
        if not source:
            raise DeliberateError("dataset: give a source: dataset:ORG/NAME or dataset:FILE")
        self.source, self.fields = str(source), {"question_field": question_field, "answer_field": answer_field}
        self.answer_format, self.splits = answer_format, {"test": split, "train": train_split}
        self.config, self.revision, self.id_field, self.solution_field = config, revision, id_field, solution_field
        self.last_number_fallback, self.timeout = bool(last_number_fallback), float(timeout)
        latex = answer_format == "latex"
        self.stop = MATH500Task.stop if latex else ("\nQ:", "\n\n\n")
        self.max_tokens = MATH500Task.max_tokens if latex else 512
        self._cache: dict[str, list[Problem]] = {}

    def gold(self, value: Any, where: str) -> tuple[str, list[str] | None]:
        """(the gold answer, gold steps or None) from one row's answer field."""
        text = str(value).strip() if value is not None else ""
        if self.answer_format == "latex":
            boxed = extract_answer(text) if "\\boxed" in text or "\\fbox" in text else None
            if not (boxed or text):
                raise DeliberateError(f"{where}: empty answer")
            return boxed or text, None
        steps = None
        if self.answer_format == "gsm8k":
            steps, final, _ = parse_gsm8k_answer(text)
            text = final or ""
        gold = canonical_number(text)
        if gold is None:
            what = "a '#### N' line" if self.answer_format == "gsm8k" else "a number"
            raise DeliberateError(f"{where}: answer {str(value)[:80]!r} is not {what} (answer_format="
                                  f"{self.answer_format}; latex grades non-numeric answers)")
        return gold, steps

    def _load(self, split: str) -> list[Problem]:
        if split in self._cache:
            return self._cache[split]
        name = self.splits[split]
        rows = load_rows(self.source, name, config=self.config, revision=self.revision)
        if not rows:
            raise DeliberateError(f"dataset: split {name!r} of {self.source} has no rows")
        qf, af = self.fields["question_field"], self.fields["answer_field"]
        for option, field in (("question_field", qf), ("answer_field", af), ("id_field", self.id_field),
                              ("solution_field", self.solution_field)):
            if field is not None:
                check_field(rows, field, option, self.source)
        out = []
        for i, row in enumerate(rows):
            where = f"{self.source} [{name}] row {i}"
            question = row[qf]
            if not isinstance(question, str) or not question.strip():
                raise DeliberateError(f"{where}: field {qf!r} must be a non-empty string (got {question!r:.80})")
            gold, steps = self.gold(row[af], where)
            meta: dict[str, Any] = {"source": self.source, "split": name, "row": i}
            if steps is not None:
                meta["steps"] = steps
            if self.solution_field is not None:
                meta["solution"] = str(row[self.solution_field])
            pid = str(row[self.id_field]) if self.id_field is not None else f"{Path(self.source).stem}-{name}-{i}"
            out.append(Problem(id=pid, question=question.strip(), answer=gold, metadata=meta))
        self._cache[split] = out
        return out

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        rows = self._load(split)
        return rows if n is None else rows[:n]

    def instruction(self, problem: Problem) -> str:
        own = MATH500Task if self.answer_format == "latex" else NumericWordProblemTask
        return own.instruction(self, problem)

    def rationale(self, problem: Problem) -> str | None:
        if "solution" in problem.metadata:
            return problem.metadata["solution"]
        return super().rationale(problem)

    def extract_answer(self, text: str) -> str | None:
        if self.answer_format == "latex":
            return extract_answer(text)
        return numeric_extract(text, self.last_number_fallback)

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        if self.answer_format == "latex":
            return math_equal(answer, problem.answer, timeout=self.timeout)
        return numbers_equal(answer, problem.answer)

    def normalize(self, answer: str | None) -> str | None:
        if self.answer_format == "latex":
            return normalize_latex(answer)
        return None if answer is None else (canonical_number(answer) or answer.strip() or None)
