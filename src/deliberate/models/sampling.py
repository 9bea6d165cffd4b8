"""Sampling parameters shared by every backend, validated on construction.

Seeding contract (all local backends and ``deliberate serve``): sample ``j`` of prompt ``p`` under
seed ``s`` draws its random numbers from a stream seeded by ``sequence_seed(s, p, j)`` alone, so a
sample does not depend on what else is in the batch. The same request therefore gives the same text
in-process and through the OpenAI-compatible server.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from deliberate.errors import DeliberateError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample continuations. ``temperature=0`` means greedy (then ``n`` copies are identical)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an integer >= 1 (got {self.n!r})")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be a finite number >= 0 (got {self.temperature!r})")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        if any((not isinstance(s, str)) or s == "" for s in self.stop):
            problems.append(f"stop strings must be non-empty strings (got {self.stop!r})")
        if problems:
            raise DeliberateError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sequence_seed(seed: int, prompt: str, index: int) -> int:
    """Stable 63-bit seed for sample ``index`` of ``prompt`` under ``seed`` (see module docstring)."""
    h = hashlib.blake2b(f"{seed}\x00{index}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
