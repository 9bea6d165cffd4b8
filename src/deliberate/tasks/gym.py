"""``gym:<name>``: any reasoning-gym procedural dataset as a task, verified by the dataset itself.

``get_task("gym:chain_sum", max_terms=4)`` builds the dataset with
``reasoning_gym.create_dataset(name, size=..., seed=..., **config)``; extra options go to the
dataset's config. A completion is correct iff the dataset's own ``score_answer(answer, entry)``
is >= 1.0 (partial credit counts as wrong; use :meth:`GymTask.score` for the raw score).

Splits: train and test are generated from different seeds derived by hashing
(name, split, seed). reasoning-gym seeds item ``i`` with ``seed + i``, so plain offsets like
``seed`` / ``seed + 1`` would share items; the hashed seeds are far apart, and train additionally
drops any question that appears in the first ``test_size`` test items of the same seed, so the two
never share a question (this generates the test items once per seed; ``disjoint=False`` skips it for
datasets whose items are slow to make and whose question space is large). The prompt is the entry's question plus an instruction to end with
``Answer: ...``; the answer is everything after the last ``Answer:`` (it may span lines).

``extract="last_number"`` (opt-in, for numeric datasets and small instruct models that do not keep
the answer format) falls back, when no answer statement is found, to the last number of the
completion's last non-empty line (the "flexible extract" of lm-evaluation-harness). It is looser than
the default ``extract="strict"`` and is recorded in the task options of every run that uses it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.tasks.base import Task, check_split, register_task
from deliberate.tasks.grading import NUMBER_RE, canonical_number, extract_answer
from deliberate.types import Problem

_ANSWER = re.compile(r"(?im)^[ \t*]*answer\s*:")


def gym_names() -> list[str]:
    """Names of every registered reasoning-gym dataset."""
    # lazy: reasoning_gym (over a second to import); every task lookup imports this module, only gym tasks need it
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _split_seed(name: str, split: str, seed: int) -> int:
    h = hashlib.blake2b(f"gym:{name}:{split}:{seed}".encode(), digest_size=5).digest()
    return int.from_bytes(h, "little")  # 40 bits: item windows of different seeds do not meet


EXTRACT_MODES = ("strict", "last_number")


@register_task("gym", argument="dataset", metavar="name")
class GymTask(Task):
    """A reasoning-gym procedural dataset, scored by its own ``score_answer``."""

    stop = ("\nQ:",)
    max_tokens = 512

    def __init__(self, dataset: str, test_size: int = 500, disjoint: bool = True, extract: str = "strict",
                 **config: Any):
        import reasoning_gym  # lazy: reasoning_gym, as in gym_names

        if extract not in EXTRACT_MODES:
            raise DeliberateError(f"gym: extract must be one of {', '.join(EXTRACT_MODES)} (got {extract!r})")
        self.extract = extract

        names = gym_names()
        if dataset not in names:
            close = [n for n in names if dataset and (dataset in n or n in dataset)]
            shown = close or names[:12]
            raise DeliberateError(
                f"unknown reasoning-gym dataset {dataset!r}; valid names include: {', '.join(shown)} "
                f"({len(names)} in all; see reasoning_gym.factory.DATASETS)"
            )
        if not isinstance(test_size, int) or test_size < 1:
            raise DeliberateError(f"gym: test_size must be an integer >= 1 (got {test_size!r})")
        self.dataset, self.test_size, self.disjoint, self.config = dataset, test_size, disjoint, dict(config)
        self._test_questions: dict[int, set[str]] = {}
        self.name = f"gym:{dataset}"
        try:
            self._scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0, **self.config)
        except (TypeError, ValueError, AssertionError) as e:
            raise DeliberateError(f"bad options for reasoning-gym dataset {dataset!r}: {e}") from None

    def _dataset(self, split: str, seed: int, size: int):
        import reasoning_gym  # lazy: reasoning_gym, as in gym_names

        return reasoning_gym.create_dataset(self.dataset, size=size, seed=_split_seed(self.dataset, split, seed),
                                            **self.config)

    def _test_set(self, seed: int) -> set[str]:
        if seed not in self._test_questions:
            test = self._dataset("test", seed, self.test_size)
            self._test_questions[seed] = {test[i]["question"] for i in range(self.test_size)}
        return self._test_questions[seed]

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if n is None:
            n = self.test_size if split == "test" else 5000
        if split == "test":
            if n > self.test_size:
                raise DeliberateError(f"gym: asked for {n} test problems but test_size is {self.test_size}; "
                                      f"pass test_size={n}")
            ds, excluded = self._dataset("test", seed, n), set()
        else:
            excluded = self._test_set(seed) if self.disjoint else set()
            ds = self._dataset("train", seed, 4 * n + 100)
        out: list[Problem] = []
        for i in range(len(ds)):
            if len(out) == n:
                break
            entry = ds[i]
            if entry["question"] in excluded:
                continue
            out.append(Problem(
                id=f"{self.name}-{split}-{seed}-{i}", question=str(entry["question"]), answer=str(entry["answer"]),
                metadata={"entry": entry},
            ))
        if len(out) < n:
            raise DeliberateError(f"gym: could only make {len(out)} {split} problems distinct from the test split")
        return out

    def rationale(self, problem: Problem) -> str:
        return f"Answer: {problem.answer}"

    def extract_answer(self, text: str) -> str | None:
        """Everything after the last ``Answer:`` (at a line start), else :func:`grading.extract_answer`."""
        if not isinstance(text, str):
            return None
        found = list(_ANSWER.finditer(text))
        if found:
            ans = text[found[-1].end():].strip()
            if ans.endswith(".") and canonical_number(ans[:-1], units=False) is not None:
                ans = ans[:-1]
            return ans or None
        ans = extract_answer(text)
        if ans is None and self.extract == "last_number":
            lines = [ln for ln in text.splitlines() if ln.strip()]
            nums = NUMBER_RE.findall(lines[-1]) if lines else []
            ans = nums[-1].replace("−", "-").replace(",", "") if nums else None
        return ans

    def score(self, answer: str | None, problem: Problem) -> float:
        """The dataset's own score in [0, 1] (0.0 if it raises on a malformed answer)."""
        try:
            return float(self._scorer.score_answer(answer, problem.metadata["entry"]))
        except Exception:
            return 0.0

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return answer is not None and self.score(answer, problem) >= 1.0

    def normalize(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        return canonical_number(answer, units=False) or re.sub(r"\s+", " ", answer).strip() or None
