"""The backend interface and its registry (:data:`BACKENDS`).

A backend turns prompts into sampled continuations. It knows nothing about tasks: prompts are
strings, results are :class:`~deliberate.types.Completion`. Continuing a partial solution (step-level
search) is ``generate([prompt + prefix], ...)``; backends that keep a KV cache may reuse it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

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


# --- CLI glue shared by every subcommand that needs a model -------------------------------------

def add_backend_arguments(parser) -> None:
    """Add ``--backend/--model/--base-url/--chat/--backend-arg`` to an argparse parser."""
    g = parser.add_argument_group("model backend")
    g.add_argument("--backend", default="tiny", help="backend name: tiny | hf | openai (default: tiny)")
    g.add_argument("--model", default=None,
                   help="tiny/hf: checkpoint directory, .gguf file, or 'smollm2'; openai: served model name")
    g.add_argument("--base-url", default=None, help="openai: server base URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--chat", action="store_true", help="wrap prompts as chat messages (instruct models)")
    g.add_argument("--backend-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra backend option (repeatable), e.g. --backend-arg concurrency=32")


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


def backend_spec_from_args(args) -> tuple[str, dict[str, Any]]:
    """``(backend name, keyword arguments)`` named by parsed ``add_backend_arguments`` flags: what
    :func:`get_backend` needs to build the backend, in this process or in a worker."""
    kwargs = parse_kv(getattr(args, "backend_arg", []), "--backend-arg")
    if args.backend == "openai":
        if not args.base_url:
            raise DeliberateError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        kwargs.update(base_url=args.base_url, model=args.model, chat=args.chat)
    else:
        if args.model is not None:
            kwargs["path"] = args.model
        if args.chat:
            kwargs["chat"] = True
    return args.backend, kwargs


def backend_from_args(args) -> Backend:
    """Build the backend named by parsed ``add_backend_arguments`` flags."""
    name, kwargs = backend_spec_from_args(args)
    return get_backend(name, **kwargs)
