"""Diverse verifier tree search (DVTS): ``n // expansions`` independent subtrees, each a greedy
(width-1) step-level beam search with ``expansions`` candidates per step, for diversity.

Each subtree starts from its own ``expansions`` first-step samples; it keeps its best-scoring
candidate step each round and expands it again, until it finishes (steps cut by the step's token
limit are no candidates; a subtree whose candidates are all cut stops where it is). The final pick is over the
subtrees' finished solutions (best score, or weighted majority with ``final=weighted``).
"""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import (
    STEPWISE,
    SearchContext,
    SearchResult,
    SearchSettings,
    Strategy,
    Tree,
    pick,
    register_strategy,
)
from deliberate.search.expand import candidate, expand
from deliberate.types import Problem


@register_strategy("dvts")
class DVTS(Strategy):
    uses = STEPWISE + ("final",)

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return True

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        return dvts_search(problems, ctx)


def dvts_search(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    s = ctx.settings
    m = min(s.expansions, s.n)
    k = max(1, s.n // m)  # subtrees per problem
    trees = [Tree(p) for p in problems]
    # each subtree is a child list of the root: subtree j owns the root's children it created
    heads: list[list[int | None]] = [[0] * k for _ in problems]  # current node of each subtree
    done: list[list[int | None]] = [[None] * k for _ in problems]
    for _ in range(s.max_steps):
        todo, owners = [], []
        for i, t in enumerate(trees):
            for j in range(k):
                if done[i][j] is None and heads[i][j] is not None:
                    todo.append((t, heads[i][j]))
                    owners.append((i, j))
        if not todo:
            break
        kids = expand(ctx, todo, m)
        for (i, j), row in zip(owners, kids):
            steps = [nd for nd in row if not nd.cut]
            if not steps:  # every sampled step was cut: the subtree ends at its unfinished head
                done[i][j] = heads[i][j]
                continue
            best = max(steps, key=lambda nd: nd.score or 0.0)
            if best.terminal:
                done[i][j] = best.id
            else:
                heads[i][j] = best.id
    results = []
    for i, (p, t) in enumerate(zip(problems, trees)):
        pool = [d if d is not None else h for d, h in zip(done[i], heads[i]) if (d if d is not None else h)]
        cands = [candidate(ctx, t, nid) for nid in pool]  # type: ignore[arg-type]
        best = pick(ctx.task, cands, s.final)
        if best is not None:
            t.mark_chosen(pool[cands.index(best)])  # type: ignore[arg-type]
        results.append(ctx.result(p, best.answer if best else None, best.text if best else "", cands, t, 0.0))
    return results
