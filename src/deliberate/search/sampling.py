"""What the strategies over independent full samples share: draw ``n`` solutions, score, select one.

Majority vote, best-of-N and weighted majority (one file each) differ only in their ``select``: how
they pick among full samples. :class:`SampleAndSelect` draws the ``n`` samples of every problem in one
batched call, scores them in one batched verifier call when the strategy needs a verifier, and calls
``select``; a sweep skips ``run`` and calls ``select`` on the first N samples of its shared pool.
"""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import SAMPLING, Candidate, SearchContext, SearchResult, Strategy
from deliberate.types import Problem


class SampleAndSelect(Strategy):
    """Budget ``n`` = full samples per problem; subclasses define ``select`` (and ``needs_verifier``)."""

    uses = SAMPLING + ("n", "max_tokens", "step_delimiter")

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        outs = ctx.generate([(p, "") for p in problems], ctx.settings.n, step=False)
        cands = [[Candidate(c.text, ctx.split_steps(c.text), ctx.task.extract_answer(c.text)) for c in comps]
                 for comps in outs]
        if self.needs_verifier(ctx.settings):
            scores = iter(ctx.score([(p, c.steps) for p, cs in zip(problems, cands) for c in cs]))
            cands = [[Candidate(c.text, c.steps, c.answer, next(scores)) for c in cs] for cs in cands]
        results = []
        for p, cs in zip(problems, cands):
            best = self.select(ctx.task, p, cs)
            results.append(ctx.result(p, best.answer if best else None, best.text if best else "", cs, None, 0.0))
        return results
