"""The verifier interface: ``score(problem, steps) -> per-step scores``, plus aggregation.

Every verifier — learned (ORM, PRM, GenRM, an HF checkpoint, a published PRM) or automatic (the task's own
checker, a deliberately noisy copy of it) — answers the same question: given a problem and the
reasoning steps written so far, how likely is each step prefix to lead to a correct answer?
Scores are probabilities in [0, 1], one per step. An outcome model (ORM) gives the same score for
every prefix position it was asked about, computed on the text so far.

Search strategies only see this interface, so any verifier plugs into any strategy::

    v = get_verifier("prm:runs/prm", task=task)
    v.score(problem, ["3+4=7", "7*2=14"])          # -> [0.93, 0.88]
    aggregate(v.score(problem, steps), "min")      # -> 0.88

Compute is counted: ``v.stats`` holds verifier calls (forward passes), scored sequences and
tokens run through the verifier.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.registry import Registry
from deliberate.types import Problem

AGGREGATIONS = ("min", "prod", "last", "mean")


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """Reduce per-step scores to one solution score (``min`` | ``prod`` | ``last`` | ``mean``).

    An empty solution scores 0.0 (it cannot be correct)."""
    if how not in AGGREGATIONS:
        raise DeliberateError(f"unknown aggregation {how!r}; valid: {', '.join(AGGREGATIONS)}")
    if not scores:
        return 0.0
    if how == "min":
        return float(min(scores))
    if how == "last":
        return float(scores[-1])
    if how == "mean":
        return float(sum(scores) / len(scores))
    return float(math.exp(sum(math.log(max(s, 1e-12)) for s in scores)))


@dataclass
class VerifierStats:
    """Verifier compute: forward calls, sequences scored, tokens run through the verifier."""

    calls: int = 0
    sequences: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Verifier(ABC):
    """Scores step prefixes of candidate solutions. Subclasses implement :meth:`score_batch`."""

    name: str = "verifier"

    def __init__(self) -> None:
        self.stats = VerifierStats()

    @abstractmethod
    def score_batch(self, items: Sequence[tuple[Problem, Sequence[str]]]) -> list[list[float]]:
        """For each (problem, steps) pair, one score in [0, 1] per step (same length as steps)."""

    def score(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(problem, steps)])[0]

    def score_solutions(self, items: Sequence[tuple[Problem, Sequence[str]]], how: str = "min") -> list[float]:
        """One aggregated score per (problem, steps)."""
        return [aggregate(s, how) for s in self.score_batch(items)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def problem_prompt(task, problem: Problem, style: str = "plain") -> str:
    """The text a verifier reads a problem's steps after: the task's prompt in ``style``, or without a task
    the plain ``Q: ...\nA:\n`` format the tiny models are trained on."""
    return task.prompt(problem, style=style) if task is not None else f"Q: {problem.question}\nA:\n"


# --------------------------------------------------------------------------------------------
# Registry: "kind" or "kind:arg" specs, e.g. "prm:runs/prm", "noisy:0.2", "oracle"
# --------------------------------------------------------------------------------------------

#: keyword arguments every factory accepts (``get_verifier``'s callers pass them; not user options)
COMMON_ARGS = ("task", "seed")
#: options that change where / how fast a verifier runs, not what it scores (a sweep may change them on resume)
RUNTIME_OPTIONS = ("device", "dtype", "batch_size")
#: the verifier registry: factories ``factory(arg, task=None, seed=0, **options)``, ``arg`` the text after ``kind:``
VERIFIERS = Registry("verifier", builtins=[f"deliberate.rewards.{m}" for m in
                                           ("oracle", "models", "classifier", "math_shepherd", "rlhflow",
                                            "qwen_prm", "genrm", "dpo", "likelihood")],
                     positional=1, passed=COMMON_ARGS)


def register_verifier(kind: str, options: Sequence[str] | None = None, *, override: bool = False
                      ) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Register a factory ``factory(arg, task=None, seed=0, **options)`` under ``kind``. ``options``: the
    keyword options it takes (``--verifier-arg KEY=VALUE`` in a sweep); any other is refused with the list.
    ``None`` (the default, for plug-ins registered before options existed): the factory's signature says,
    and a ``**kwargs`` factory gets anything passed through."""
    return VERIFIERS.register(kind, options=options, override=override)


def verifier_kinds() -> list[str]:
    return VERIFIERS.names()


def check_verifier_options(spec: str, options: dict[str, Any]) -> str:
    """The kind of ``spec``, after checking it is registered and takes every key of ``options``."""
    return VERIFIERS.check(spec.partition(":")[0], options).name


def get_verifier(spec: str, **kwargs: Any) -> Verifier:
    """Build a verifier from ``"kind"`` or ``"kind:argument"`` (a path, a noise level ...).

    ``kwargs`` (``task=``, ``seed=``, and the kind's options, e.g. ``device="cuda"`` for ``prm`` or
    ``positive_label=1`` for ``hf-prm``) are passed to the factory; an option the kind does not take is an error."""
    kind, _, arg = spec.partition(":")
    return VERIFIERS.create(kind, arg or None, **kwargs)
