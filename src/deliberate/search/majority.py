"""Majority vote (self-consistency): the most frequent answer among ``n`` full samples; no verifier."""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import Candidate, register_strategy, vote
from deliberate.search.sampling import SampleAndSelect
from deliberate.tasks.base import Task
from deliberate.types import Problem


@register_strategy("majority")
class Majority(SampleAndSelect):
    def select(self, task: Task, problem: Problem, candidates: Sequence[Candidate]) -> Candidate | None:
        """The first candidate giving the most frequent answer (the first candidate when none has one)."""
        if not candidates:
            return None
        ans = vote(task, [c.answer for c in candidates])
        if ans is None:
            return candidates[0]
        key = task.normalize(ans)
        return next(c for c in candidates if task.normalize(c.answer) == key)
