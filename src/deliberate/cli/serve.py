"""``deliberate serve``: an OpenAI-compatible HTTP server over a local backend (see :mod:`deliberate.models.server`).

    deliberate serve --backend tiny --model runs/quickstart/sft/model --port 8000
"""

from __future__ import annotations

import argparse
import os

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.models.server import ServerLimits, make_server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``deliberate serve``."""
    parser.add_argument("--backend", required=True, help="backend name, e.g. tiny or hf")
    parser.add_argument("--model", default=None, help="model path passed to the backend as path=")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one; default 8000)")
    parser.add_argument("--model-name", default=None, help="model id reported by /v1/models (default: the backend's)")
    parser.add_argument("--api-key-env", default=None, metavar="VAR",
                        help="require clients to send the key held in environment variable VAR as a Bearer token")
    limits = ServerLimits()
    parser.add_argument("--max-n", type=int, default=limits.max_n,
                        help=f"largest n per request (default {limits.max_n})")
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens,
                        help=f"largest max_tokens per request (default {limits.max_tokens})")
    parser.add_argument("--max-request-tokens", type=int, default=limits.max_request_tokens,
                        help="largest prompts x n x max_tokens (plus the prompts' bytes) per request "
                             f"(default {limits.max_request_tokens})")
    parser.add_argument("--max-queue", type=int, default=limits.max_queue,
                        help=f"requests that may wait for the model; more get 429 (default {limits.max_queue})")
    parser.add_argument("--read-timeout", type=float, default=limits.read_timeout,
                        help="seconds a client has to send a request's headers, and its body "
                             f"(default {limits.read_timeout:g})")
    parser.add_argument("--max-connections", type=int, default=limits.max_connections,
                        help=f"open connections; more get 503 (default {limits.max_connections})")


def main(args: argparse.Namespace) -> int:
    """Build the backend, serve until Ctrl-C."""
    api_key = None
    if getattr(args, "api_key_env", None):
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise DeliberateError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    defaults = ServerLimits()
    limits = ServerLimits(**{f: getattr(args, f, getattr(defaults, f)) for f in (
        "max_n", "max_tokens", "max_request_tokens", "max_queue", "read_timeout", "max_connections")})
    kwargs = {"path": args.model} if args.model else {}
    backend = get_backend(args.backend, **kwargs)
    try:
        server = make_server(backend, args.host, args.port, getattr(args, "model_name", None), api_key, limits)
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
