"""Best-of-N: the one of ``n`` full samples the verifier scores highest."""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import Candidate, SearchSettings, pick, register_strategy
from deliberate.search.sampling import SampleAndSelect
from deliberate.tasks.base import Task
from deliberate.types import Problem


@register_strategy("best_of_n")
class BestOfN(SampleAndSelect):
    uses = SampleAndSelect.uses + ("aggregation",)

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return True

    def select(self, task: Task, problem: Problem, candidates: Sequence[Candidate]) -> Candidate | None:
        """The highest-scored candidate (ties: the first)."""
        return pick(task, candidates, "best")
