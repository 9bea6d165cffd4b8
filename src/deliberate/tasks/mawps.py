"""``mawps``: one- and two-step arithmetic word problems (MAWPS), read from local JSONL files.

Each line holds ``input`` (the problem) and ``target`` (a number). Subsets: ``singleop``,
``addsub``, ``singleeq``, ``multiarith``, or ``all`` (the four files in that order; the default).
Files: option ``path`` (one file, used for whatever ``subset`` names), else
``$DELIBERATE_DATA/mawps/<subset>.jsonl``, else ``../shared/data/mawps/<subset>.jsonl`` from the
working directory. MAWPS has a test split only: asking for ``train`` raises an error. Problems come
in file order (``seed`` is ignored). Answers are compared as numbers; real models that end without
an answer line are graded on their last number unless ``last_number_fallback=False``.
"""

from __future__ import annotations

from deliberate.errors import DeliberateError
from deliberate.tasks.base import check_split, register_task
from deliberate.tasks.grading import canonical_number
from deliberate.tasks.gsm8k import NumericWordProblemTask
from deliberate.tasks.jsonl import read_jsonl, resolve_data_file
from deliberate.types import Problem

SUBSETS = ("singleop", "addsub", "singleeq", "multiarith")


@register_task("mawps")
class MAWPSTask(NumericWordProblemTask):
    """MAWPS arithmetic word problems (numeric answers; test split only)."""

    name = "mawps"
    stop = ("\nQ:", "\n\n\n")
    max_tokens = 256

    def __init__(self, subset: str = "all", path: str | None = None, last_number_fallback: bool = True):
        if subset != "all" and subset not in SUBSETS:
            raise DeliberateError(f"mawps: unknown subset {subset!r}; valid subsets: all, {', '.join(SUBSETS)}")
        if path is not None and subset == "all":
            subset = "custom"
        self.subset, self.path = subset, path
        self.last_number_fallback = last_number_fallback
        self._cache: list[Problem] | None = None

    def _load(self) -> list[Problem]:
        if self._cache is not None:
            return self._cache
        subsets = SUBSETS if self.subset == "all" else (self.subset,)
        out = []
        for sub in subsets:
            file = resolve_data_file("mawps", f"{sub}.jsonl", self.path)
            for row in read_jsonl(file, ("input", "target")):
                gold = canonical_number(str(row["target"]), units=False)
                if gold is None:
                    raise DeliberateError(f"{file}:{row['_line']}: target {row['target']!r} is not a number")
                out.append(Problem(
                    id=f"mawps-{sub}-{row['_line']}", question=str(row["input"]).strip(), answer=gold,
                    metadata={"subset": sub, "file": str(file), "line": row["_line"]},
                ))
        self._cache = out
        return out

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if split != "test":
            raise DeliberateError("mawps has only a test split; use split='test' (train on gsm8k or arith instead)")
        rows = self._load()
        return rows if n is None else rows[:n]
