"""Test doubles: a deterministic fake backend that honours the backend contract.

``FakeBackend(script)``: ``script(prompt, rng) -> str`` writes the full would-be continuation; the
fake then applies stop strings and ``max_tokens`` (one token per character) exactly like a real
backend, and seeds ``rng`` with :func:`deliberate.models.sampling.sequence_seed`, so the same seed
gives the same samples whatever the batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.types import Completion


def random_digits(prompt: str, rng: random.Random) -> str:
    return "".join(rng.choice("0123456789\n") for _ in range(40))


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, script: Callable[[str, random.Random], str] = random_digits):
        self.script = script
        self.calls = 0

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for p in prompts:
            row = []
            for j in range(params.n):
                rng = random.Random(sequence_seed(params.seed, p, 0 if params.greedy else j))
                full = self.script(p, rng)
                text, reason = full[: params.max_tokens], "length" if len(full) > params.max_tokens else "stop"
                ntok = len(text)
                for s in params.stop:
                    i = text.find(s)
                    if i >= 0:
                        text, reason, ntok = text[:i], "stop", i + len(s)
                        break
                lps = tuple(math.log(0.5) for _ in range(ntok)) if params.logprobs else None
                row.append(Completion(text, len(p), ntok, reason, lps))
            out.append(row)
        return out


def step_prefixes(step_lists) -> int:
    """The distinct step prefixes of some solutions' steps: the verifier work a search or sweep reports
    (``verifier_sequences``), counted here without the library's code."""
    return len({tuple(steps[:i]) for steps in step_lists for i in range(1, len(steps) + 1)})
