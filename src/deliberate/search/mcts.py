"""Monte-Carlo tree search over reasoning steps.

Each iteration, for every problem at once (one batched backend call, one batched verifier call):
1. **selection** from the root by PUCT (``Q + c * P * sqrt(N_parent) / (1 + N)``, prior ``P`` =
   1/#children) or UCT (``Q + c * sqrt(ln N_parent / N)``, unvisited first) down to a leaf;
2. **expansion** of the leaf with ``expansions`` sampled next steps (unless it is terminal);
3. **evaluation** of each new child: ``mcts_value=prm`` — the verifier's score of the prefix;
   ``rollout`` — complete the solution from the child once and score the whole rollout with the
   verifier (finished rollouts are kept as candidates); ``confidence`` — Marco-o1 style token
   confidence of the step, here the mean probability of the chosen tokens (the engine reports the
   chosen tokens' log-probs; the top-5 renormalisation of Marco-o1 needs top-k log-probs, which the
   backends do not return yet);
4. **backpropagation** of the children's mean value along the path.

A step cut by the step's token limit is a dead end: it is not expanded, not scored, not rolled out,
and backs up a value of 0.

Budget ``n`` = iterations. The answer follows the most visited child from the root until a terminal
node (ties: higher value); if that path ends unfinished, the best-valued finished node (or rollout)
is used, and when the tree has none, one sampled rollout completes the path. The whole tree is returned for the report's viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from deliberate.search.base import (
    STEPWISE,
    Candidate,
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


def _select(tree: Tree, c: float, rule: str) -> int:
    nid = 0
    while True:
        node = tree.nodes[nid]
        if node.terminal or not node.children:
            return nid
        kids = [tree.nodes[k] for k in node.children]
        # a node whose children are all exhausted terminals is re-selected; that only re-scores it
        if rule == "uct":
            unvisited = [k for k in kids if k.visits == 0]
            if unvisited:
                return unvisited[0].id  # never visited, so never expanded: a leaf
            best = max(kids, key=lambda k: k.value + c * math.sqrt(math.log(max(node.visits, 1)) / k.visits))
        else:
            prior = 1.0 / len(kids)
            best = max(kids, key=lambda k: k.value + c * prior * math.sqrt(max(node.visits, 1)) / (1 + k.visits))
        nid = best.id


def _backprop(tree: Tree, nid: int, value: float) -> None:
    for i in tree.path(nid):
        tree.nodes[i].visits += 1
        tree.nodes[i].value_sum += value


@register_strategy("mcts")
class MCTS(Strategy):
    uses = STEPWISE + ("max_tokens", "mcts_c", "mcts_rule", "mcts_value")

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return settings.mcts_value != "confidence"

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        return mcts_search(problems, ctx)


def mcts_search(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    s = ctx.settings
    trees = [Tree(p) for p in problems]
    rollouts: list[list[Candidate]] = [[] for _ in problems]
    use_prm = s.mcts_value == "prm"
    use_conf = s.mcts_value == "confidence"
    for _ in range(s.n):
        leaves = [(t, _select(t, s.mcts_c, s.mcts_rule)) for t in trees]
        grow = [(t, nid) for t, nid in leaves if not t.nodes[nid].terminal]
        kids = expand(ctx, grow, s.expansions, score=use_prm, logprobs=use_conf)
        new_by_tree = {id(t): row for (t, _), row in zip(grow, kids)}
        if s.mcts_value == "rollout":
            live = [(t, nd) for (t, _), row in zip(grow, kids) for nd in row if not nd.terminal]
            outs = ctx.generate([(t.problem, ctx.prefix(t.steps(nd.id))) for t, nd in live], 1, step=False)
            items, owners = [], []
            for (t, nd), comps in zip(live, outs):
                text = ctx.prefix(t.steps(nd.id)) + comps[0].text
                steps = ctx.split_steps(text)
                items.append((t.problem, steps))
                owners.append((t, nd, text, steps))
            done = [(t, nd) for (t, _), row in zip(grow, kids) for nd in row if nd.finished]
            items += [(t.problem, ctx.path_steps(t, nd.id)) for t, nd in done]
            scores = ctx.score(items)
            for (t, nd, text, steps), sc in zip(owners, scores):
                nd.score = sc
                ti = trees.index(t)
                rollouts[ti].append(Candidate(text, tuple(steps), ctx.task.extract_answer(text), sc))
            for (t, nd), sc in zip(done, scores[len(owners):]):
                nd.score = sc
        elif use_conf:
            for row in kids:
                for nd in row:
                    nd.score = None if nd.cut else nd.confidence
        for t, nid in leaves:
            row = new_by_tree.get(id(t))
            if row:
                for nd in row:
                    _backprop(t, nd.id, nd.score or 0.0)
            else:  # a terminal leaf: re-visit it with its own value
                _backprop(t, nid, t.nodes[nid].score or 0.0)
    # the answer: follow the most visited children (cut steps are no path); a path that ends unfinished
    # (the budget ran out before the tree reached an answer) is completed by one sampled rollout from its
    # last node, unless a finished node or rollout exists to fall back on
    ends = []
    for t in trees:
        nid = 0
        while not t.nodes[nid].terminal:
            steps = [k for k in t.nodes[nid].children if not t.nodes[k].cut]
            if not steps:
                break
            nid = max(steps, key=lambda k: (t.nodes[k].visits, t.nodes[k].value))
        ends.append(nid)
    need = [i for i, (t, nid) in enumerate(zip(trees, ends))
            if not t.nodes[nid].finished and not rollouts[i] and not any(n.finished for n in t.nodes)]
    finals: dict[int, Candidate] = {}
    if need:
        outs = ctx.generate([(trees[i].problem, ctx.prefix(trees[i].steps(ends[i]))) for i in need], 1, step=False)
        for i, comps in zip(need, outs):
            text = ctx.prefix(trees[i].steps(ends[i])) + comps[0].text
            finals[i] = Candidate(text, ctx.split_steps(text), ctx.task.extract_answer(text), None)
    results = []
    for i, (p, t) in enumerate(zip(problems, trees)):
        nid = ends[i]
        terminals = [n.id for n in t.nodes if n.finished]
        cands = [candidate(ctx, t, k) for k in terminals] + rollouts[i]
        if t.nodes[nid].finished:
            chosen, best = nid, candidate(ctx, t, nid)
        elif i in finals:
            chosen, best = nid, finals[i]
            cands.append(best)
        else:
            best = pick(ctx.task, cands, "best") if cands else candidate(ctx, t, nid)
            idx = next((k for k, c in enumerate(cands) if c is best), None)
            chosen = terminals[idx] if idx is not None and idx < len(terminals) else nid
        t.mark_chosen(chosen)
        results.append(ctx.result(p, best.answer, best.text, cands, t, 0.0))
    return results
