"""Tree of thoughts: breadth-first or depth-first search over steps ("thoughts") with a state evaluator.

Evaluators: ``tot_eval=value`` — the verifier's score of the partial solution; ``tot_eval=vote`` —
self-consistency as a vote: from each new state sample ``vote_rollouts`` completions, find the
problem's majority answer over all rollouts of the level, and value each state by the fraction of its
rollouts that reach it (no verifier needed).

- **BFS** keeps the ``n // expansions`` best states per level and expands each with ``expansions``
  thoughts until every kept state has finished or ``max_steps``; the answer is the best finished state.
- **DFS** expands the most promising state first, prunes states valued below ``tot_threshold``,
  backtracks when a branch dies, and stops at the first finished state that passes the threshold or
  after ``n`` expansions per problem.

A thought cut by the step's token limit is no thought: it is not evaluated, kept, or finished.
"""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.search.base import (
    STEPWISE,
    Node,
    SearchContext,
    SearchResult,
    SearchSettings,
    Strategy,
    Tree,
    pick,
    register_strategy,
    vote,
)
from deliberate.search.expand import candidate, expand
from deliberate.types import Problem


def _evaluate(ctx: SearchContext, nodes: Sequence[tuple[Tree, Node]]) -> None:
    """Set ``score`` of each new node with the configured evaluator (cut steps keep None)."""
    s = ctx.settings
    nodes = [(t, nd) for t, nd in nodes if not nd.cut]
    if s.tot_eval == "value":
        scores = ctx.score([(t.problem, ctx.path_steps(t, nd.id)) for t, nd in nodes])
        for (_, nd), sc in zip(nodes, scores):
            nd.score = sc
        return
    live = [(t, nd) for t, nd in nodes if not nd.terminal]
    outs = ctx.generate([(t.problem, ctx.prefix(t.steps(nd.id))) for t, nd in live], s.vote_rollouts, step=False)
    answers: dict[int, list] = {}
    per_node = {}
    for (t, nd), comps in zip(live, outs):
        ans = [ctx.task.extract_answer(c.text) for c in comps]
        per_node[id(nd)] = ans
        answers.setdefault(id(t), []).extend(ans)
    for t, nd in nodes:
        if nd.terminal:
            answers.setdefault(id(t), []).append(nd.answer)
    majority = {tid: ctx.task.normalize(vote(ctx.task, a)) for tid, a in answers.items()}
    for t, nd in nodes:
        top = majority.get(id(t))
        got = [nd.answer] if nd.terminal else per_node[id(nd)]
        hits = sum(1 for a in got if top is not None and ctx.task.normalize(a) == top)
        nd.score = hits / max(1, len(got))


def _finish(ctx: SearchContext, problems, trees, pools, fallback) -> list[SearchResult]:
    results = []
    for i, (p, t) in enumerate(zip(problems, trees)):
        pool = pools[i] or fallback[i] or [n.id for n in t.nodes[1:]]
        cands = [candidate(ctx, t, nid) for nid in pool]
        best = pick(ctx.task, cands, ctx.settings.final)
        if best is not None:
            t.mark_chosen(pool[cands.index(best)])
        results.append(ctx.result(p, best.answer if best else None, best.text if best else "", cands, t, 0.0))
    return results


def _bfs(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    s = ctx.settings
    m = min(s.expansions, s.n)
    b = max(1, s.n // m)
    trees = [Tree(p) for p in problems]
    level: list[list[int]] = [[0] for _ in problems]
    finished: list[list[int]] = [[] for _ in problems]
    for _ in range(s.max_steps):
        todo = [(trees[i], nid) for i in range(len(problems)) for nid in level[i]]
        if not todo:
            break
        kids = expand(ctx, todo, m, score=False)
        flat = [(t, nd) for (t, _), row in zip(todo, kids) for nd in row]
        _evaluate(ctx, flat)
        for i, t in enumerate(trees):
            new = [nd for tt, nd in flat if tt is t]
            finished[i] += [nd.id for nd in new if nd.finished]
            live = sorted((nd for nd in new if not nd.terminal), key=lambda nd: -(nd.score or 0.0))
            level[i] = [nd.id for nd in live[:b]]
    return _finish(ctx, problems, trees, finished, level)


def _dfs(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    s = ctx.settings
    m = min(s.expansions, s.n)
    trees = [Tree(p) for p in problems]
    stacks: list[list[int]] = [[0] for _ in problems]
    budget = [s.n for _ in problems]
    found: list[list[int]] = [[] for _ in problems]
    solved = [False] * len(problems)
    while True:
        todo, owners = [], []
        for i, t in enumerate(trees):
            if solved[i] or budget[i] <= 0:
                continue
            while stacks[i] and t.nodes[stacks[i][-1]].depth >= s.max_steps:
                stacks[i].pop()
            if stacks[i]:
                todo.append((t, stacks[i].pop()))
                owners.append(i)
                budget[i] -= 1
        if not todo:
            break
        kids = expand(ctx, todo, m, score=False)
        flat = [(t, nd) for (t, _), row in zip(todo, kids) for nd in row]
        _evaluate(ctx, flat)
        for i, row in zip(owners, kids):
            ok = sorted((nd for nd in row if not nd.cut and (nd.score or 0.0) >= s.tot_threshold),
                        key=lambda nd: nd.score or 0.0)
            found[i] += [nd.id for nd in row if nd.finished]
            hit = [nd for nd in ok if nd.terminal]
            if hit:
                solved[i] = True
                found[i] = [max(hit, key=lambda nd: nd.score or 0.0).id]
                continue
            stacks[i] += [nd.id for nd in ok if not nd.terminal]  # best last: explored first
    return _finish(ctx, problems, trees, found, [[] for _ in problems])


@register_strategy("tot")
class ToT(Strategy):
    uses = STEPWISE + ("final", "max_tokens", "tot_mode", "tot_eval", "tot_threshold", "vote_rollouts")

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return settings.tot_eval == "value"

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        return _bfs(problems, ctx) if ctx.settings.tot_mode == "bfs" else _dfs(problems, ctx)
