"""Advantages for RL with verifiable rewards: group-normalised rewards (GRPO), and per-token advantages
from a task's step checker (process supervision, DeepSeekMath sec. 4.1.3).

:func:`group_advantages` is plain GRPO's ``(r - mean) / (std + 1e-4)`` over a group of completions of one
problem. With step credit every step of every completion gets the reward ``task.step_correct`` gives it
(prefix correctness) plus one final reward at its last token; :func:`step_credit_advantages` normalises
all of a group's rewards together (``"steps"`` / ``"steps-to-go"``), :func:`outcome_step_advantages`
normalises each step among the group's steps at the same position (``"outcome+steps"``). Steps are the
task's (:meth:`Task.split_steps`: non-empty lines) located in the text by :func:`step_spans`; the per-token
advantages assume one token per character (the tiny model's tokenizer).
"""

from __future__ import annotations

import math

from deliberate.errors import DeliberateError


def group_advantages(rewards: list[float], scale: bool = True) -> list[float] | None:
    """``(r - mean) / (std + 1e-4)`` (``scale=False``: ``r - mean``, Dr. GRPO); None when all are equal."""
    m = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - m) ** 2 for r in rewards) / len(rewards))
    if sd == 0:
        return None
    return [(r - m) / (sd + 1e-4) if scale else r - m for r in rewards]


def step_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the steps :meth:`Task.split_steps` finds in ``text`` (its non-empty
    lines), in order; each span takes its line's newline, blank lines go to the step after them, and
    trailing blank text to the last step."""
    spans, start, pos = [], 0, 0
    pieces = text.split("\n")
    for i, line in enumerate(pieces):
        end = pos + len(line) + (1 if i < len(pieces) - 1 else 0)
        if line.strip():
            spans.append((start, end))
            start = end
        pos = end
    if spans and spans[-1][1] < len(text):
        spans[-1] = (spans[-1][0], len(text))
    return spans


def step_rewards(task, problem, text: str, final: float) -> tuple[list[tuple[int, int]], list[float]]:
    """The steps' character spans and their rewards (the step checker's prefix correctness), then ``final``
    (the completion's own reward) as the last element."""
    spans = step_spans(text)
    ok = task.step_correct(problem, task.split_steps(text)) or []
    if len(ok) != len(spans):
        raise DeliberateError(f"grpo: {task.name!r} step checker returned {len(ok)} values for {len(spans)} steps")
    return spans, [float(x) for x in ok] + [final]


def step_credit_advantages(items: list[tuple[list[tuple[int, int]], list[float], int]], to_go: bool,
                           scale: bool = True) -> list[list[float]] | None:
    """Per-token advantages of one group for ``credit="steps"`` / ``"steps-to-go"``: ``items`` holds, per
    completion, (step spans, step rewards + final reward, number of completion tokens — one per character,
    plus EOS). All rewards of the group are normalised together (None when they are all equal); a token's
    advantage is its step's normalised reward (to_go: summed with all later steps'), and the final reward's
    is added at the last token (to_go: at every token). Tokens outside every span (an empty completion,
    EOS) belong to no step."""
    flat = group_advantages([r for _, rs, _ in items for r in rs], scale)
    if flat is None:
        return None
    out, pos = [], 0
    for spans, rs, n in items:
        z, pos = flat[pos:pos + len(rs)], pos + len(rs)
        steps, final = z[:-1], z[-1]
        if to_go:
            for j in range(len(steps) - 2, -1, -1):
                steps[j] += steps[j + 1]
        adv = [final if to_go else 0.0] * n
        for (a, b), v in zip(spans, steps):
            for t in range(a, min(b, n)):
                adv[t] += v
        if n:
            adv[-1] += 0.0 if to_go else final
        out.append(adv)
    return out


def outcome_step_advantages(items: list[tuple[list[tuple[int, int]], list[float], int]], scale: bool = True
                            ) -> list[list[float]] | None:
    """Per-token advantages of one group for ``credit="outcome+steps"`` (``items`` as for
    :func:`step_credit_advantages`): a token's advantage is its completion's group-normalised final reward
    plus, inside a step, that step's reward normalised among the group's completions that have a step at
    the same position (0 where they all agree or only one has it). EOS and tokens outside every span get
    the final term only. None when neither term carries signal."""
    finals = group_advantages([rs[-1] for _, rs, _ in items], scale) or [0.0] * len(items)
    depth = max((len(rs) - 1 for _, rs, _ in items), default=0)
    per_pos = []  # per position j: {completion index: normalised step reward}
    for j in range(depth):
        have = [i for i, (_, rs, _) in enumerate(items) if len(rs) - 1 > j]
        z = group_advantages([items[i][1][j] for i in have], scale) if len(have) > 1 else None
        per_pos.append(dict(zip(have, z)) if z is not None else {})
    if not any(finals) and not any(per_pos):
        return None
    out = []
    for i, (spans, rs, n) in enumerate(items):
        adv = [finals[i]] * n
        for j, (a, b) in enumerate(spans):
            v = per_pos[j].get(i, 0.0)
            for t in range(a, min(b, n)):
                adv[t] += v
        out.append(adv)
    return out
