"""Automatic verifiers built on the task's own checkers.

- ``oracle``: the ground truth. Per step, the task's step checker when it has one (``arith``);
  otherwise 0 for every step but the last, which is 1 iff the final answer is correct.
- ``outcome``: the final answer's correctness only (0 for every step but the last), no step-level
  ground truth: the terminal reward of a finished solution (MCTS expert iteration values nodes with it
  on training problems before a PRM exists).
- ``noisy:SIGMA``: the ground truth plus Gaussian noise of standard deviation ``SIGMA`` — a verifier
  of known error, for the "taste" curve (how selection gains depend on verifier noise). The noise is
  a fixed function of (seed, problem id, text), so the same candidate always gets the same score.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from deliberate.errors import DeliberateError
from deliberate.rewards.base import Verifier, register_verifier
from deliberate.types import Problem


class OracleVerifier(Verifier):
    name = "oracle"

    def __init__(self, task):
        super().__init__()
        if task is None:
            raise DeliberateError("the oracle verifier needs the task (get_verifier('oracle', task=task))")
        self.task = task

    def truth(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        if not steps:
            return []
        checked = self.task.step_correct(problem, steps)
        if checked is not None:
            return [float(c) for c in checked]
        final = float(self.task.is_correct(self.task.extract_answer("\n".join(steps)), problem))
        return [0.0] * (len(steps) - 1) + [final]

    def score_batch(self, items):
        self.stats.calls += 1
        self.stats.sequences += len(items)
        return [self.truth(p, s) for p, s in items]


class OutcomeVerifier(OracleVerifier):
    """0 for every step but the last, which is 1 iff the final answer is correct: the terminal reward of
    a finished solution, with no step-level ground truth (unlike ``oracle`` on ``arith``)."""

    name = "outcome"

    def score_batch(self, items):
        self.stats.calls += 1
        self.stats.sequences += len(items)
        out = []
        for p, steps in items:
            ok = bool(steps) and self.task.is_correct(self.task.extract_answer("\n".join(steps)), p)
            out.append([0.0] * max(0, len(steps) - 1) + ([float(ok)] if steps else []))
        return out


class NoisyVerifier(OracleVerifier):
    """Ground-truth outcome plus N(0, sigma) noise, the same for every step of a candidate."""

    def __init__(self, task, sigma: float, seed: int = 0):
        super().__init__(task)
        if not sigma >= 0:
            raise DeliberateError(f"noisy verifier: sigma must be >= 0 (got {sigma})")
        self.sigma, self.seed = sigma, seed
        self.name = f"noisy:{sigma:g}"

    def score_batch(self, items):
        self.stats.calls += 1
        self.stats.sequences += len(items)
        out = []
        for p, steps in items:
            if not steps:
                out.append([])
                continue
            correct = float(self.task.is_correct(self.task.extract_answer("\n".join(steps)), p))
            h = hashlib.sha256(f"{self.seed}\0{p.id}\0{chr(10).join(steps)}".encode()).digest()
            noise = random.Random(h).gauss(0.0, self.sigma) if self.sigma > 0 else 0.0
            # not squashed into [0, 1]: only the ranking matters for selection, and squashing would
            # change the noise model
            out.append([correct + noise] * len(steps))
        return out

    def describe(self):
        return {"name": self.name, "sigma": self.sigma, "seed": self.seed}


@register_verifier("oracle", options=())
def _oracle(arg, task=None, **_):
    return OracleVerifier(task)


@register_verifier("outcome", options=())
def _outcome(arg, task=None, **_):
    return OutcomeVerifier(task)


@register_verifier("noisy", options=())
def _noisy(arg, task=None, seed: int = 0, **_):
    try:
        sigma = float(arg) if arg is not None else 0.5
    except ValueError:
        raise DeliberateError(f"noisy verifier: sigma must be a number (got {arg!r})") from None
    return NoisyVerifier(task, sigma, seed=seed)
