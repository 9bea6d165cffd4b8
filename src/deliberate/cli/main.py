"""The ``deliberate`` command line: one subcommand per job, each with ``--help``.

    deliberate quickstart            train the tiny model on arith and plot its test-time scaling
    deliberate train sft ...         supervised training of the tiny model on gold rationales
    deliberate eval ...              greedy / sampling / majority vote with pass@k, maj@k and CIs
    deliberate tasks                 list the registered tasks
    deliberate serve ...             OpenAI-compatible HTTP server over a local backend

Every command also takes ``--config FILE.yaml`` (flags given on the command line override its values).
Each command's flags and logic live in its own module under :mod:`deliberate.cli` (``add_arguments(parser)``
+ ``main(args)``); the training recipes are chosen by name from :data:`deliberate.cli.recipes.RECIPES`
(built-ins and plug-ins). This file only wires them up and turns :class:`~deliberate.errors.DeliberateError`
into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from deliberate import __version__
from deliberate.cli.config_file import apply_config_file, relax_required
from deliberate.cli.recipes import RECIPES
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
#: ``deliberate train NAME``: the recipe registry (built-ins and plug-ins), under the name the CLI exports
TRAIN_RECIPES = RECIPES


def add_command(sub, name: str, help_: str, add_arguments: Callable[[argparse.ArgumentParser], None]
                ) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    add_arguments(p)
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="read option values from this YAML file (e.g. a run directory's config.yaml); flags given "
                        "on the command line override them")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deliberate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"deliberate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        add_command(sub, name, help_, importlib.import_module(module).add_arguments)
    train = sub.add_parser("train", help="training recipes", description="training recipes")
    tsub = train.add_subparsers(dest="recipe", metavar="RECIPE")
    for name in RECIPES.names():
        recipe = RECIPES.get(name)
        add_command(tsub, name, recipe.help, recipe.add_arguments)
    return parser


def check_recipe_name(argv: Sequence[str]) -> None:
    """``deliberate train NAME``: an unknown NAME gets the registry's error (the valid recipes, the closest
    one), as an unknown task or verifier does, rather than argparse's "invalid choice"."""
    if len(argv) > 1 and argv[0] == "train" and not argv[1].startswith("-"):
        RECIPES.entry(argv[1])


def main_cli(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()  # lists tasks / strategies / recipes for --help, so it imports the plug-ins
        check_recipe_name(argv)
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        return 2
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        relax_required(parser)  # the file may hold them
    args = parser.parse_args(argv)
    if args.command is None or (args.command == "train" and args.recipe is None):
        parser.print_help()
        return 2
    try:
        if args.config:
            args = apply_config_file(parser, argv, args)
        if args.command == "train":
            recipe = RECIPES.get(args.recipe)
            refuse_unlaunchable(args, recipe.launch_aware)
            return int(recipe.main(args) or 0)
        refuse_unlaunchable(args, False)
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
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


def refuse_unlaunchable(args, launch_aware: bool) -> None:
    """Under a launcher (WORLD_SIZE > 1) every command but the launch-aware recipes would run once per
    process, each writing the same files: refuse it with a clear message instead."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world > 1 and not launch_aware:
        what = f"train {args.recipe}" if getattr(args, "recipe", None) else args.command
        aware = " and ".join(f"`train {n}`" for n in RECIPES.names() if RECIPES.get(n).launch_aware)
        raise DeliberateError(f"`deliberate {what}` does not run under accelerate launch / torchrun (WORLD_SIZE="
                              f"{world}); only {aware} do. Run it as a single process "
                              "(sweeps and labelling scale out with --executor ray instead)")


def entry() -> None:
    sys.exit(main_cli())
