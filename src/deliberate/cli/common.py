"""Flag groups several commands share: the model backend, the executor (local or Ray), the training
device and torch threads; and the translations from their parsed flags to the plain arguments the
library takes (``get_backend`` keywords, ``RayExecutor`` options).

These groups are no config dataclass's fields: the backend flags name a backend and its keyword arguments
(``get_backend(name, **kwargs)`` takes them, each backend its own), and the executor flags say where the
work runs, not what it computes (``RayExecutor`` keywords, never part of a run's identity); so they are
declared here once, with :func:`~deliberate.cli.config_file.add_flag` so that ``--config`` knows them."""

from __future__ import annotations

from typing import Any

import torch

from deliberate.cli.config_file import add_flag
from deliberate.errors import DeliberateError
from deliberate.models.base import Backend, get_backend, parse_kv


def add_backend_arguments(parser) -> None:
    """Add ``--backend/--model/--base-url/--chat/--backend-arg`` to an argparse parser."""
    g = parser.add_argument_group("model backend")
    add_flag(parser, "--backend", group=g, default="tiny", help="backend name: tiny | hf | openai (default: tiny)")
    add_flag(parser, "--model", group=g, default=None,
             help="tiny/hf: checkpoint directory, .gguf file, 'smollm2', or an HF hub id (org/name; --backend-arg "
                  "revision=...); openai: served model name")
    add_flag(parser, "--base-url", group=g, default=None, help="openai: server base URL, e.g. http://127.0.0.1:8000/v1")
    add_flag(parser, "--chat", group=g, action="store_true", help="wrap prompts as chat messages (instruct models)")
    add_flag(parser, "--backend-arg", group=g, action="append", default=[], metavar="KEY=VALUE",
             help="extra backend option (repeatable), e.g. --backend-arg concurrency=32")


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


def add_executor_arguments(parser, what: str = "problems") -> None:
    g = parser.add_argument_group("executor (where the work runs)")
    add_flag(parser, "--executor", group=g, choices=("local", "ray"), default="local",
             help=f"local: this process (default); ray: shard {what} over Ray workers")
    add_flag(parser, "--address", group=g, default=None,
             help="Ray cluster address (auto, ray://HOST:10001); default: start a local Ray")
    add_flag(parser, "--workers", group=g, type=int, default=2,
             help="Ray workers, each with its own backend (default: 2)")
    add_flag(parser, "--worker-cpus", group=g, type=float, default=1, help="CPUs per Ray worker (default: 1)")
    add_flag(parser, "--worker-gpus", group=g, type=float, default=0, help="GPUs per Ray worker (default: 0)")
    add_flag(parser, "--worker-threads", group=g, type=int, default=None,
             help="torch threads per Ray worker (default: its CPUs)")


def ray_options(args) -> dict[str, Any] | None:
    """:class:`RayExecutor` keyword arguments from the flags of :func:`add_executor_arguments`, or
    ``None`` for ``--executor local``."""
    if getattr(args, "executor", "local") != "ray":
        return None
    return {"workers": args.workers, "address": args.address, "cpus": args.worker_cpus, "gpus": args.worker_gpus,
            "threads": args.worker_threads}


def add_device_argument(parser) -> None:
    """``--device`` for a recipe that trains through :func:`deliberate.policy.distributed.setup`."""
    add_flag(parser, "--device", default="auto",
             help="where a plain run trains (and GRPO samples): auto (a CUDA GPU when there is one, else the "
                  "CPU), cpu, cuda or cuda:N; under accelerate launch the accelerate config decides "
                  "(default: %(default)s)")


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op thread count (None: torch's default, all cores)."""
    if threads is not None:
        if threads < 1:
            raise DeliberateError(f"--threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
