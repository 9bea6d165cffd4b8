"""Strategies over independent full samples: majority vote, best-of-N, weighted majority.

All three draw ``n`` complete solutions per problem in one batched call and differ only in how they
pick one: the most frequent answer (self-consistency), the highest verifier score (best-of-N), or the
answer with the largest sum of verifier scores (weighted majority). :func:`select` applies a rule to
candidates that already exist, which is how a sweep gets every N from one pool of samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import Candidate, SearchContext, SearchResult, pick, register_strategy, vote
from deliberate.tasks.base import Task
from deliberate.types import Problem


def select(task: Task, candidates: Sequence[Candidate], rule: str) -> Candidate | None:
    """``majority`` | ``best_of_n`` | ``weighted`` over existing candidates (scores needed for the latter two)."""
    if not candidates:
        return None
    if rule == "majority":
        ans = vote(task, [c.answer for c in candidates])
        if ans is None:
            return candidates[0]
        key = task.normalize(ans)
        return next(c for c in candidates if task.normalize(c.answer) == key)
    if rule == "best_of_n":
        return pick(task, candidates, "best")
    if rule == "weighted":
        return pick(task, candidates, "weighted")
    raise ValueError(f"unknown selection rule {rule!r}")


def _sample_and_select(problems: Sequence[Problem], ctx: SearchContext, rule: str) -> list[SearchResult]:
    n = ctx.settings.n
    outs = ctx.generate([(p, "") for p in problems], n, step=False)
    cands: list[list[Candidate]] = []
    for p, comps in zip(problems, outs):
        cands.append([Candidate(c.text, ctx.task.split_steps(c.text), ctx.task.extract_answer(c.text)) for c in comps])
    if rule != "majority":
        flat = [(p, c.steps) for p, cs in zip(problems, cands) for c in cs]
        scores = iter(ctx.score(flat))
        cands = [[Candidate(c.text, c.steps, c.answer, next(scores)) for c in cs] for cs in cands]
    results = []
    for p, cs in zip(problems, cands):
        best = select(ctx.task, cs, rule)
        results.append(ctx.result(p, best.answer if best else None, best.text if best else "", cs, None, 0.0))
    return results


@register_strategy("majority")
def majority(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    """Self-consistency: the most frequent answer among n samples."""
    return _sample_and_select(problems, ctx, "majority")


@register_strategy("best_of_n")
def best_of_n(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    """The sample with the highest verifier score."""
    return _sample_and_select(problems, ctx, "best_of_n")


@register_strategy("weighted")
def weighted(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    """The answer with the largest sum of verifier scores over the samples giving it."""
    return _sample_and_select(problems, ctx, "weighted")
