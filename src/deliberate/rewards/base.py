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
from deliberate.plugins import load_plugins
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

_VERIFIERS: dict[str, Callable[..., Verifier]] = {}
_OPTIONS: dict[str, tuple[str, ...] | None] = {}
#: keyword arguments every factory accepts (``get_verifier``'s callers pass them; not user options)
COMMON_ARGS = ("task", "seed")
#: options that change where / how fast a verifier runs, not what it scores (a sweep may change them on resume)
RUNTIME_OPTIONS = ("device", "dtype", "batch_size")


def register_verifier(kind: str, options: Sequence[str] | None = None
                      ) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Register a factory ``factory(arg, task=None, seed=0, **options)`` under ``kind``. ``options``: the
    keyword options it takes (``--verifier-arg KEY=VALUE`` in a sweep); any other is refused with the list.
    ``None`` (the default, for plug-ins registered before options existed): anything is passed through."""
    def deco(factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
        _VERIFIERS[kind] = factory
        _OPTIONS[kind] = None if options is None else tuple(options)
        return factory

    return deco


def _load_builtin() -> None:
    import importlib

    for mod in ("oracle", "models", "classifier", "math_shepherd", "rlhflow", "qwen_prm", "genrm", "dpo", "likelihood"):
        try:
            importlib.import_module(f"deliberate.rewards.{mod}")
        except ModuleNotFoundError as e:  # a verifier module not written yet
            if e.name != f"deliberate.rewards.{mod}":
                raise
    load_plugins()  # the user's own verifiers ($DELIBERATE_PLUGINS, entry points)


def verifier_kinds() -> list[str]:
    _load_builtin()
    return sorted(_VERIFIERS)


def check_verifier_options(spec: str, options: dict[str, Any]) -> str:
    """The kind of ``spec``, after checking it is registered and takes every key of ``options``."""
    _load_builtin()
    kind = spec.partition(":")[0]
    if kind not in _VERIFIERS:
        raise DeliberateError(f"unknown verifier {kind!r}; valid: {', '.join(sorted(_VERIFIERS))}")
    allowed = _OPTIONS.get(kind)
    if allowed is not None:
        bad = sorted(k for k in options if k not in allowed and k not in COMMON_ARGS)
        if bad:
            raise DeliberateError(f"verifier {kind!r} takes no option {bad[0]!r}; its options: "
                                  f"{', '.join(allowed) if allowed else '(none)'}")
    return kind


def get_verifier(spec: str, **kwargs: Any) -> Verifier:
    """Build a verifier from ``"kind"`` or ``"kind:argument"`` (a path, a noise level ...).

    ``kwargs`` (``task=``, ``seed=``, and the kind's options, e.g. ``device="cuda"`` for ``prm`` or
    ``positive_label=1`` for ``hf-prm``) are passed to the factory; an option the kind does not take is an error."""
    kind = check_verifier_options(spec, kwargs)
    arg = spec.partition(":")[2]
    return _VERIFIERS[kind](arg or None, **kwargs)
