"""A ``deliberate`` CLI command in a child process forked from a warm fork server, for tests that SIGKILL
real processes (tests/test_kill_resume.py).

A fresh ``python -m deliberate`` spends ~5 s of CPU importing torch, transformers, accelerate and the
built-in registries before it does any work; the kill tests start twenty such processes. Here a fork
server imports every ``deliberate`` module that the CLI's parser loads (every command and registry, as
``main_cli`` does first thing) once, and every command then runs in a fresh ``fork`` of that server: its
own PID, its own memory, killed by a real SIGKILL, with the state that a new interpreter would have
after the same imports.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings

import torch

from deliberate.cli.main import build_parser, main_cli

# what the killed commands (eval, sweep, label mc, train sft / prm) import lazily once they run: the tiny
# model is a transformers Llama, the plots draw on matplotlib's Agg canvas
LAZY_IMPORTS = ("deliberate.eval.evaluate", "deliberate.eval.sweep", "deliberate.rewards.mc_labels",
                "deliberate.train.sft", "deliberate.train.verifier", "transformers.models.llama.modeling_llama",
                "matplotlib.figure", "matplotlib.backends.backend_agg")

# what `python -m deliberate` would have been given in its environment by the tests
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(argv: list[str], log: str) -> None:
    """The child's body: stdout to /dev/null, stderr appended to ``log``, exit status = ``main_cli``'s."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), 2)
    os.environ.update(CHILD_ENV)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    sys.exit(main_cli(argv))


def context() -> multiprocessing.context.BaseContext:
    """The fork-server context, its server preloading the ``deliberate`` modules the CLI loads. (Had this
    process started the server already, children would import what they need themselves: slower, the same.)"""
    build_parser()  # here, so that sys.modules names every module of every command and registry
    # by package name: the server does not get this process's sys.path (tests/ is not on it)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "deliberate" and not m.endswith("__main__"))
    preload = loaded + [m for m in LAZY_IMPORTS if m not in loaded]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx
