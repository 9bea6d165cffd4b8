"""Weighted majority: the answer with the largest sum of verifier scores over the ``n`` full samples
giving it (each sample weighs its score, floored at 0)."""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import Candidate, SearchSettings, pick, register_strategy
from deliberate.search.sampling import SampleAndSelect
from deliberate.tasks.base import Task
from deliberate.types import Problem


@register_strategy("weighted")
class Weighted(SampleAndSelect):
    uses = SampleAndSelect.uses + ("aggregation",)

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return True

    def select(self, task: Task, problem: Problem, candidates: Sequence[Candidate]) -> Candidate | None:
        """The highest-scored candidate of the weighted-majority answer."""
        return pick(task, candidates, "weighted")
