"""``deliberate serve``: an OpenAI-compatible HTTP server over a local backend (see :mod:`deliberate.models.server`).

    deliberate serve --backend tiny --model runs/quickstart/sft/model --port 8000
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from deliberate.cli.flags import ConfigFlags
from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.models.server import ServerLimits, make_server


@dataclass(frozen=True)
class ServeConfig:
    """What ``deliberate serve`` serves and where; ``limits``: what a request may ask of it."""

    backend: str
    model: str | None = None  # passed to the backend as path=
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    api_key_env: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)


#: the flags: :class:`ServeConfig`'s fields, the limits' flattened
FLAGS = ConfigFlags(
    ServeConfig,
    helps={
        "backend": "backend name, e.g. tiny or hf",
        "model": "model path passed to the backend as path=",
        "host": "interface to listen on",
        "port": "port (0 = pick a free one)",
        "model_name": "model id reported by /v1/models (default: the backend's)",
        "api_key_env": "require clients to send the key held in environment variable VAR as a Bearer token",
        "max_n": "largest n per request",
        "max_tokens": "largest max_tokens per request",
        "max_request_tokens": "largest prompts x n x max_tokens (plus the prompts' bytes) per request",
        "max_queue": "requests that may wait for the model; more get 429",
        "read_timeout": "seconds a client has to send a request's headers, and its body",
        "max_connections": "open connections; more get 503",
    },
    metavars={"api_key_env": "VAR"},
    flatten=("limits",),
    threads=None,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``deliberate serve``."""
    FLAGS.add_to(parser)


def main(args: argparse.Namespace) -> int:
    """Build the backend, serve until Ctrl-C."""
    cfg = FLAGS.config(args)
    api_key = None
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            raise DeliberateError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set")
    backend = get_backend(cfg.backend, **({"path": cfg.model} if cfg.model else {}))
    try:
        server = make_server(backend, cfg.host, cfg.port, cfg.model_name, api_key, cfg.limits)
        print(f"deliberate serve: model {server.model_name!r} at {server.base_url}  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("deliberate serve: stopping", flush=True)
        finally:
            server.server_close()
    finally:
        backend.close()
    return 0
