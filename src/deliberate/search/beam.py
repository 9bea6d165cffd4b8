"""Step-level beam search guided by a verifier (PRM).

Budget ``n`` = beams alive. Round 0 samples ``n`` first steps; every round keeps the top
``n // expansions`` unfinished prefixes by verifier score and expands each with ``expansions``
sampled next steps, so ``n`` new prefixes are scored per round. Prefixes that end in an answer are
set aside as finished, steps cut by the step's token limit are dropped; the search stops when ``n``
are finished, nothing is left to expand, or ``max_steps`` is reached. The final answer is the best
finished solution by score (``final=best``) or the weighted-majority answer over the finished ones
(``final=weighted``).
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


def beam_search(problems: Sequence[Problem], ctx: SearchContext, *, width: int, expansions: int,
                first: int) -> list[SearchResult]:
    """Keep the ``width`` best unfinished prefixes per round, expand each ``expansions`` ways; the first
    round samples ``first`` steps from the root."""
    s = ctx.settings
    trees = [Tree(p) for p in problems]
    finished: list[list[int]] = [[] for _ in problems]
    # round 0: `first` samples of the first step from each root
    frontier: list[list[int]] = [[0] for _ in problems]
    fan = first
    for _ in range(s.max_steps):
        todo = [(trees[i], nid) for i in range(len(problems)) for nid in frontier[i]
                if len(finished[i]) < s.n]
        if not todo:
            break
        kids = expand(ctx, todo, fan)
        by_tree: dict[int, list] = {}
        for (t, _), row in zip(todo, kids):
            by_tree.setdefault(id(t), []).extend(row)
        for i, t in enumerate(trees):
            new = by_tree.get(id(t), [])
            finished[i] += [node.id for node in new if node.finished]
            live = [node for node in new if not node.terminal]
            live.sort(key=lambda nd: -(nd.score or 0.0))
            keep, seen = [], set()
            for nd in live:  # distinct prefixes only: duplicates would waste the width
                key = tuple(t.steps(nd.id))
                if key not in seen:
                    seen.add(key)
                    keep.append(nd.id)
                if len(keep) == width:
                    break
            frontier[i] = keep
        fan = expansions
    results = []
    for i, (p, t) in enumerate(zip(problems, trees)):
        pool = finished[i] or [nid for nid in frontier[i]] or [n.id for n in t.nodes[1:]]
        cands = [candidate(ctx, t, nid) for nid in pool]
        best = pick(ctx.task, cands, s.final)
        if best is not None:
            t.mark_chosen(pool[cands.index(best)])
        results.append(ctx.result(p, best.answer if best else None, best.text if best else "", cands, t, 0.0))
    return results


@register_strategy("beam")
class Beam(Strategy):
    uses = STEPWISE + ("final",)

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return True

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        s = ctx.settings
        m = min(s.expansions, s.n)
        return beam_search(problems, ctx, width=max(1, s.n // m), expansions=m, first=s.n)
