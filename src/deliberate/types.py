"""Plain data passed between layers: problems, completions, parsed samples, compute counters, records.

All are frozen dataclasses so nothing downstream mutates what a task or backend produced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem: ``question`` is the statement, ``answer`` the gold final answer (as a string).

    ``metadata`` is task specific (gold rationale steps, difficulty, source file/line, tests ...).
    """

    id: str
    question: str
    answer: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one sampled continuation.

    ``logprobs`` are the per-token log-probabilities of the generated tokens under the model
    (temperature 1, before top-p), when the backend provides them.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length"
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Sample:
    """A completion parsed by a task: its reasoning steps and extracted final answer."""

    text: str
    steps: tuple[str, ...]
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Compute:
    """Compute counters; add them with ``+``."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    model_calls: int = 0
    wall_s: float = 0.0

    def __add__(self, other: Compute) -> Compute:
        return Compute(
            self.generated_tokens + other.generated_tokens,
            self.prompt_tokens + other.prompt_tokens,
            self.model_calls + other.model_calls,
            self.wall_s + other.wall_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SampleRecord:
    """One row of an eval/sweep records file (JSONL): one sample of one problem under one strategy.

    ``key`` identifies the row for resume: a rerun skips every key already on disk.
    """

    problem_id: str
    strategy: str  # e.g. "greedy", "sample"
    index: int  # sample index within (problem, strategy)
    seed: int
    text: str
    answer: str | None
    gold: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    wall_s: float = 0.0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.problem_id, self.strategy, self.index)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> SampleRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in row and f.default is dataclasses.MISSING]
        if missing:
            raise KeyError(f"record is missing field(s): {', '.join(missing)}")
        return cls(**{k: v for k, v in row.items() if k in names})
