"""The ``deliberate`` command line: one subcommand per job, each with ``--help``.

    deliberate quickstart            train the tiny model on arith and plot its test-time scaling
    deliberate train sft ...         supervised training of the tiny model on gold rationales
    deliberate eval ...              greedy / sampling / majority vote with pass@k, maj@k and CIs
    deliberate tasks                 list the registered tasks
    deliberate serve ...             OpenAI-compatible HTTP server over a local backend

Every command also takes ``--config FILE.yaml`` (flags given on the command line override its values).
Each command's flags and logic live in its own module under :mod:`deliberate.cli` (``add_arguments(parser)``
+ ``main(args)``); this file only wires them up and turns :class:`~deliberate.errors.DeliberateError`
into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from deliberate import __version__
from deliberate.cli.config_file import apply_config_file, relax_required
from deliberate.errors import DeliberateError

COMMANDS = {
    "quickstart": ("deliberate.cli.quickstart", "train the tiny model on arith, evaluate greedy/maj@n/pass@n, plot"),
    "eval": ("deliberate.cli.eval", "evaluate a model on a task: greedy, sampling, majority vote"),
    "sweep": ("deliberate.cli.sweep", "search strategies x budgets x seeds: accuracy vs compute, resumable"),
    "tasks": ("deliberate.cli.tasks", "list registered tasks"),
    "serve": ("deliberate.cli.serve", "OpenAI-compatible server over a local backend"),
    "label": ("deliberate.cli.label", "step labels for PRMs: Monte-Carlo rollouts, PRM800K import/export"),
    "suspects": ("deliberate.cli.suspects", ("the suspects (ReST-EM, PRM-guided ReST-EM, MCTS expert "
                                             "iteration, self-correction) and GRPO from one seed, one train budget")),
    "report": ("deliberate.cli.report", "self-contained HTML report of a run dir (eval, sweep or training: "
                                        "tables, plots, search trees), or of several side by side"),
}
TRAIN_RECIPES = {
    "sft": ("deliberate.cli.train.sft", "supervised fine-tuning on a task's gold rationales"),
    "prm": ("deliberate.cli.train.verifier", "process reward model on step labels (BCE at step ends)"),
    "orm": ("deliberate.cli.train.verifier", "outcome reward model on solution outcomes"),
    "genrm": ("deliberate.cli.train.verifier", "generative verifier: the LM answers Yes/No per step prefix"),
    "lprm": ("deliberate.cli.train.lprm", "likelihood PRM / ORM: a frozen LM's step log-probs calibrated on MC step labels or outcomes"),
    "rest-em": ("deliberate.cli.train.rest_em", "ReST-EM / expert iteration: sample, keep verified, fine-tune base, repeat"),
    "star": ("deliberate.cli.train.star", "STaR on addition: self-taught rationales, with or without rationalization"),
    "self-correct": ("deliberate.cli.train.self_correct", "learning to correct: train on (wrong -> right) attempt pairs"),
    "vstar": ("deliberate.cli.train.vstar", "V-STaR: generator on correct samples + DPO verifier on (correct, incorrect) pairs"),
    "sos": ("deliberate.cli.train.sos", "Stream of Search on countdown: train on search streams vs optimal paths"),
    "mcts-ei": ("deliberate.cli.train.mcts_ei", "MCTS expert iteration: MCTS with policy+PRM, train both on the trees' verified solutions and step values"),
    "grpo": ("deliberate.cli.train.grpo", "GRPO: RL with verifiable rewards (group-normalised advantages, clip, KL)"),
}

#: commands that run data-parallel under `accelerate launch` / `torchrun` (policy/distributed.py)
LAUNCH_AWARE = {"deliberate.cli.train.sft", "deliberate.cli.train.grpo"}


def add_command(sub, name: str, module: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(_module=module)
    importlib.import_module(module).add_arguments(p)
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="read option values from this YAML file (e.g. a run directory's config.yaml); flags given "
                        "on the command line override them")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deliberate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"deliberate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in COMMANDS.items():
        add_command(sub, name, mod, help_)
    train = sub.add_parser("train", help="training recipes", description="training recipes")
    tsub = train.add_subparsers(dest="recipe", metavar="RECIPE")
    for name, (mod, help_) in TRAIN_RECIPES.items():
        add_command(tsub, name, mod, help_)
    return parser


def main_cli(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # lists tasks / strategies for --help, so it imports the plug-ins
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        relax_required(parser)  # the file may hold them
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        if args.config:
            args = apply_config_file(parser, argv, args)
        refuse_unlaunchable(args)
        return int(importlib.import_module(args._module).main(args) or 0)
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deliberate: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk anywhere (a checkpoint, a plot): one line, not a traceback
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"deliberate: error: {e.strerror}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2


def refuse_unlaunchable(args) -> None:
    """Under a launcher (WORLD_SIZE > 1) every other command would run once per process, each
    writing the same files: refuse it with a clear message instead."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world > 1 and args._module not in LAUNCH_AWARE:
        what = f"train {args.recipe}" if getattr(args, "recipe", None) else args.command
        raise DeliberateError(f"`deliberate {what}` does not run under accelerate launch / torchrun (WORLD_SIZE="
                              f"{world}); only `train sft` and `train grpo` do. Run it as a single process "
                              "(sweeps and labelling scale out with --executor ray instead)")


def entry() -> None:
    sys.exit(main_cli())
