"""A deliberate plug-in: a task, a verifier and a search strategy of your own, no changes to deliberate.

    DELIBERATE_PLUGINS=examples/my_tasks.py deliberate tasks              # lists `times`
    DELIBERATE_PLUGINS=examples/my_tasks.py deliberate train sft --task times --out runs/times-sft
    DELIBERATE_PLUGINS=examples/my_tasks.py deliberate sweep --task times --model runs/times-sft/model \
        --verifier shortest --strategies majority,best_of_n --budgets 4,16 --out runs/times-sweep
    DELIBERATE_PLUGINS=examples/my_tasks.py deliberate sweep --task times --model runs/times-sft/model \
        --verifier oracle --strategies majority,filtered_majority --budgets 4,16 --out runs/times-filtered
"""

import random
import re

from deliberate.rewards.base import Verifier, register_verifier
from deliberate.search.base import Candidate, register_strategy, vote
from deliberate.tasks.base import Task, check_split, distinct_draws, register_task
from deliberate.types import Problem


@register_task("times")
class Times(Task):
    """Multiply a number by a digit, one partial product per line (checkable steps)."""

    name = "times"
    max_tokens = 96

    def __init__(self, max_digits: int = 3):  # task options: --task-arg max_digits=4
        if max_digits < 1:
            raise ValueError(f"max_digits must be >= 1 (got {max_digits})")
        self.max_digits = max_digits

    def problems(self, split="test", n=None, seed=0):
        check_split(split)
        rng = random.Random(f"times-{split}-{seed}")

        def draw():
            a, b = rng.randrange(10, 10**self.max_digits), rng.randrange(2, 10)
            return f"{a}*{b}", (a, b)

        pairs = distinct_draws(split, n or 200, draw, what="times", max_tries=1_000_000)
        out = []
        for i, (question, (a, b)) in enumerate(pairs):
            parts = [int(d) * 10**k for k, d in enumerate(reversed(str(a))) if d != "0"]
            steps = [f"{p}*{b}={p * b}" for p in parts] + ["+".join(str(p * b) for p in parts) + f"={a * b}"]
            out.append(Problem(id=f"times-{split}-{seed}-{i}", question=question, answer=str(a * b),
                               metadata={"steps": steps}))
        return out

    def extract_answer(self, text):
        found = re.findall(r"Answer:\s*(-?\d+)", text)
        return found[-1] if found else None

    def is_correct(self, answer, problem):
        return answer is not None and answer == problem.answer

    def step_correct(self, problem, steps):  # ground truth per step: enables `--verifier oracle` as a PRM
        ok, out = True, []
        for step in steps:  # `a*b=c` or `x+y+z=s`; other lines (the Answer line) change nothing
            m = re.fullmatch(r"(\d+(?:[+*]\d+)*)=(\d+)", step.replace(" ", ""))
            if m:
                total = sum(_product(term) for term in m.group(1).split("+"))
                ok = ok and total == int(m.group(2))
            out.append(ok)
        return out


def _product(term):
    out = 1
    for factor in term.split("*"):
        out *= int(factor)
    return out


class Shortest(Verifier):
    """Prefers short chains: every step prefix scores 1 / (1 + number of steps so far)."""

    name = "shortest"

    def score_batch(self, items):
        self.stats.calls += 1
        return [[1.0 / (2 + i) for i in range(len(steps))] for _problem, steps in items]


@register_verifier("shortest", options=())
def _shortest(arg, task=None, **_):
    return Shortest()


@register_strategy("filtered_majority")
def filtered_majority(problems, ctx):
    """Majority vote among the samples the verifier passes (aggregated score >= 0.5); all of them if none pass."""
    samples = ctx.generate([(p, "") for p in problems], ctx.settings.n, step=False)  # one batched call
    results = []
    for p, completions in zip(problems, samples):
        cands = [Candidate(c.text, ctx.task.split_steps(c.text), ctx.task.extract_answer(c.text)) for c in completions]
        scores = ctx.score([(p, c.steps) for c in cands])  # compute is counted per problem by ctx
        cands = [Candidate(c.text, c.steps, c.answer, s) for c, s in zip(cands, scores)]
        kept = [c for c in cands if c.score >= 0.5] or cands
        answer = vote(ctx.task, [c.answer for c in kept])
        chosen = next((c for c in kept if ctx.task.normalize(c.answer) == ctx.task.normalize(answer)), kept[0])
        results.append(ctx.result(p, answer, chosen.text, cands, None, 0.0))
    return results
