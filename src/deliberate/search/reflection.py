"""Reflection / sequential revision: answer, append a reflection cue, continue, re-answer.

Attempt 1 is a plain sample. Each later attempt continues the whole transcript so far plus the cue
(default: "Wait! Maybe I made some mistakes! I need to rethink from scratch.") and a newline, and
its answer is read from the new text only. Budget ``n`` = attempts. The final answer is the last
attempt's (``reflection_final=last``) or the majority over attempts (``majority``). A transcript that
would no longer fit the model's context stops revising there.
"""

from __future__ import annotations

from collections.abc import Sequence

from deliberate.errors import DeliberateError
from deliberate.search.base import (
    SAMPLING,
    Candidate,
    SearchContext,
    SearchResult,
    Strategy,
    register_strategy,
    vote,
)
from deliberate.types import Problem


@register_strategy("reflection")
class Reflection(Strategy):
    uses = SAMPLING + ("n", "max_tokens", "step_delimiter", "reflection_cue", "reflection_final")

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        return reflection_search(problems, ctx)


def reflection_search(problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    s = ctx.settings
    transcripts = ["" for _ in problems]
    attempts: list[list[Candidate]] = [[] for _ in problems]
    active = list(range(len(problems)))
    for r in range(s.n):
        reqs = []
        for i in active:
            pre = transcripts[i] if r == 0 else transcripts[i].rstrip("\n") + "\n" + s.reflection_cue + "\n"
            reqs.append((i, pre))
        outs = []
        try:
            outs = ctx.generate([(problems[i], pre) for i, pre in reqs], 1, step=False)
        except DeliberateError as e:
            if "does not fit" not in str(e):
                raise
            # some transcript outgrew the context: go one by one and retire those that do not fit
            kept = []
            for i, pre in reqs:
                try:
                    outs.append(ctx.generate([(problems[i], pre)], 1, step=False)[0])
                    kept.append((i, pre))
                except DeliberateError as e2:
                    if "does not fit" not in str(e2):
                        raise
            reqs = kept
        nxt = []
        for (i, pre), comps in zip(reqs, outs):
            text = comps[0].text
            transcripts[i] = pre + text
            attempts[i].append(Candidate(text, ctx.split_steps(text), ctx.task.extract_answer(text)))
            nxt.append(i)
        active = nxt
        if not active:
            break
    results = []
    for i, p in enumerate(problems):
        cands = attempts[i]
        if not cands:
            results.append(ctx.result(p, None, "", [], None, 0.0))
            continue
        if s.reflection_final == "majority":
            ans = vote(ctx.task, [c.answer for c in cands])
        else:
            ans = cands[-1].answer
        results.append(ctx.result(p, ans, transcripts[i], cands, None, 0.0))
    return results
