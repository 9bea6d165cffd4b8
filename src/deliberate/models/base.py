"""The backend interface and its registry (:data:`BACKENDS`).

A backend turns prompts into sampled continuations. It knows nothing about tasks: prompts are
strings, results are :class:`~deliberate.types.Completion`. Continuing a partial solution (step-level
search) is ``generate([prompt + prefix], ...)``; backends that keep a KV cache may reuse it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams
from deliberate.registry import Registry
from deliberate.types import Completion


class Backend(ABC):
    """Generate continuations for a batch of prompts.

    ``generate(prompts, params)`` returns one list per prompt holding ``params.n`` completions.
    """

    name: str = "backend"

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        ...

    def continue_from(self, prompt: str, prefixes: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Continue each partial solution ``prefix`` of ``prompt``; the returned text excludes the prefix."""
        return self.generate([prompt + p for p in prefixes], params)

    def continue_many(self, requests: Sequence[tuple[str, str]], params: SamplingParams) -> list[list[Completion]]:
        """Batched :meth:`continue_from`: for each ``(prompt, prefix)``, ``params.n`` continuations of the
        partial solution ``prefix`` (texts exclude it). Search strategies use this so that chat
        backends put the prefix in the assistant's reply rather than in the user's message."""
        return self.generate([p + pre for p, pre in requests], params)

    @property
    def model_name(self) -> str:
        return self.name

    def close(self) -> None:
        """Release resources (threads, sessions). Safe to call twice."""


#: the backend registry
BACKENDS = Registry("backend", builtins=[f"deliberate.models.{m}" for m in ("tiny", "hf", "openai")])


def register_backend(name: str, *, override: bool = False
                     ) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    """Register a backend factory (usually the Backend subclass) under ``name`` (see :mod:`deliberate.registry`)."""
    return BACKENDS.register(name, override=override)


def backend_names() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str, **kwargs) -> Backend:
    """Build a backend by name: ``tiny`` (checkpoint dir), ``hf`` (path / GGUF), ``openai`` (base URL)."""
    return BACKENDS.create(name, **kwargs)


def parse_kv(items, what: str = "option") -> dict:
    """Parse ``["k=v", ...]`` into a dict, turning ints/floats/bools into Python values."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DeliberateError(f"bad {what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
            continue
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                pass
        else:
            out[k] = v
    return out
