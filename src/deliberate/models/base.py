"""The backend interface and its registry.

A backend turns prompts into sampled continuations. It knows nothing about tasks: prompts are
strings, results are :class:`~deliberate.types.Completion`. Continuing a partial solution (step-level
search) is ``generate([prompt + prefix], ...)``; backends that keep a KV cache may reuse it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams
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

    @property
    def model_name(self) -> str:
        return self.name

    def close(self) -> None:
        """Release resources (threads, sessions). Safe to call twice."""


_BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _BACKENDS[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    # Imported lazily so `import deliberate` stays light and optional deps stay optional.
    import importlib

    for mod in ("tiny", "hf", "openai"):
        try:
            importlib.import_module(f"deliberate.models.{mod}")
        except ModuleNotFoundError as e:  # a backend whose optional dependency is missing
            if not e.name or not e.name.startswith("deliberate"):
                continue
            raise


def backend_names() -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS)


def get_backend(name: str, **kwargs) -> Backend:
    """Build a backend by name: ``tiny`` (checkpoint dir), ``hf`` (path / GGUF), ``openai`` (base URL)."""
    _load_builtin()
    if name not in _BACKENDS:
        raise DeliberateError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name](**kwargs)
