"""Expansion shared by the tree strategies (beam, DVTS, MCTS, ToT): grow a frontier by one step.

:func:`expand` samples the next steps of every (tree, node) of every problem in one batched backend
call, marks the children that end the solution or were cut by the step's token limit, and scores them
in one batched verifier call; :func:`candidate` turns a node's path into a :class:`Candidate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from deliberate.search.base import Candidate, Node, SearchContext, Tree
from deliberate.types import Completion

def expand(ctx: SearchContext, frontier: Sequence[tuple[Tree, int]], m: int, *, score: bool = True,
           logprobs: bool = False) -> list[list[Node]]:
    """Sample ``m`` next steps for each (tree, node) in one batched call; add them as children.

    Each child is marked terminal (with its answer) per :meth:`SearchContext.is_terminal`, and, with
    ``score=True``, gets the verifier's aggregated score of its whole prefix (one batched call).
    With ``logprobs=True`` each child's ``confidence`` (mean chosen-token probability) is set too.
    A child whose step hit the step's token limit is ``cut``: terminal without an answer, not scored
    (it is no step; the strategies drop it), so a half-written ``Answer: 12`` is never an answer.
    """
    if not frontier:
        return []
    # identical prompts (the same node listed twice, or two nodes with the same text) would get
    # identical samples from the seeded engine: ask once for m x count samples and share them out
    reqs_all = [(t.problem, ctx.prefix(t.steps(nid))) for t, nid in frontier]
    groups: dict[tuple[str, str], list[int]] = {}
    for k, (p, pre) in enumerate(reqs_all):
        groups.setdefault((p.id, pre), []).append(k)
    order = list(groups)
    counts = {g: len(groups[g]) for g in order}
    outs = [[] for _ in frontier]  # type: list[list[Completion]]
    by_count: dict[int, list[tuple[str, str]]] = {}
    for g in order:
        by_count.setdefault(counts[g], []).append(g)
    for cnt, gs in sorted(by_count.items()):
        got = ctx.generate([reqs_all[groups[g][0]] for g in gs], m * cnt, step=True, logprobs=logprobs)
        for g, comps in zip(gs, got):
            for r, k in enumerate(groups[g]):
                outs[k] = comps[r * m:(r + 1) * m]
    kids: list[list[Node]] = []
    for (t, nid), comps in zip(frontier, outs):
        row = []
        for c in comps:
            step = c.text.strip()
            node = t.add(nid, step, c.completion_tokens)
            node.cut = c.finish_reason == "length"
            node.terminal, node.answer = (True, None) if node.cut else ctx.is_terminal(step, c, node.depth)
            if logprobs and c.logprobs:
                node.confidence = sum(math.exp(x) for x in c.logprobs) / len(c.logprobs)
            row.append(node)
        kids.append(row)
    if score:
        flat = [(t, node) for (t, _), row in zip(frontier, kids) for node in row if not node.cut]
        scores = ctx.score([(t.problem, ctx.path_steps(t, node.id)) for t, node in flat])
        for (_, node), s in zip(flat, scores):
            node.score = s
    return kids


def candidate(ctx: SearchContext, tree: Tree, nid: int) -> Candidate:
    """The solution ending at node ``nid``: a cut step's has no answer, an unfinished one's is read from its text."""
    node = tree.nodes[nid]
    text = ctx.settings.step_delimiter.join(tree.steps(nid))
    return Candidate(text, ctx.split_steps(text), node.answer if node.terminal else ctx.task.extract_answer(text),
                     node.score)
