"""The recipes ``deliberate train NAME`` runs, chosen by name from one registry: the built-ins and a plug-in's.

Recipes are a :class:`~deliberate.registry.Registry` like tasks, backends, verifiers and strategies, so an
unknown name gets the same "valid recipes ... did you mean" error and a plug-in (``$DELIBERATE_PLUGINS``,
entry points) adds one the same way. A plug-in writes a config dataclass and a run function::

    @register_recipe("rft", config=RFTConfig)
    def run(cfg: RFTConfig) -> str:
        '''Rejection-sampling fine-tuning: sample k, keep the verified, fine-tune.'''

Every field of the config becomes a flag (``n_train`` -> ``--n-train``; ``init`` also as ``--model``;
``--config FILE.yaml`` too), and the run directory (the config's ``out``) gets the ``config.yaml`` that
reruns it. ``examples/custom_recipe.py`` is a complete one.

The built-in recipes' command modules live in :mod:`deliberate.cli.train`; :data:`BUILTIN` names them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments
from deliberate.errors import DeliberateError
from deliberate.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """One ``deliberate train NAME`` command: its help line, its flags, and what runs the parsed flags."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int | None]
    #: runs data-parallel under ``accelerate launch`` / ``torchrun``; every other recipe is refused there
    launch_aware: bool = False
    #: ``module.function`` of the code behind it, which the registry names when a name is taken twice
    origin: str = ""


#: every recipe, by name; registered below (the built-ins) and by plug-ins (:func:`register_recipe`)
RECIPES = Registry("recipe")

#: the built-in recipes: name -> (command module in deliberate.cli.train, help line)
BUILTIN = {
    "sft": ("deliberate.cli.train.sft", "supervised fine-tuning on a task's gold rationales"),
    "prm": ("deliberate.cli.train.verifier", "process reward model on step labels (BCE at step ends)"),
    "orm": ("deliberate.cli.train.verifier", "outcome reward model on solution outcomes"),
    "genrm": ("deliberate.cli.train.verifier", "generative verifier: the LM answers Yes/No per step prefix"),
    "lprm": ("deliberate.cli.train.lprm", "likelihood PRM / ORM: a frozen LM's step log-probs calibrated on MC "
                                          "step labels or outcomes"),
    "rest-em": ("deliberate.cli.train.rest_em", "ReST-EM / expert iteration: sample, keep verified, fine-tune base, "
                                                "repeat"),
    "star": ("deliberate.cli.train.star", "STaR on addition: self-taught rationales, with or without rationalization"),
    "self-correct": ("deliberate.cli.train.self_correct", "learning to correct: train on (wrong -> right) attempt "
                                                          "pairs"),
    "vstar": ("deliberate.cli.train.vstar", "V-STaR: generator on correct samples + DPO verifier on (correct, "
                                            "incorrect) pairs"),
    "sos": ("deliberate.cli.train.sos", "Stream of Search on countdown: train on search streams vs optimal paths"),
    "mcts-ei": ("deliberate.cli.train.mcts_ei", "MCTS expert iteration: MCTS with policy+PRM, train both on the "
                                                "trees' verified solutions and step values"),
    "grpo": ("deliberate.cli.train.grpo", "GRPO: RL with verifiable rewards (group-normalised advantages, clip, KL)"),
    "quiet-star": ("deliberate.cli.train.quiet_star", "Quiet-STaR: learn to think before every token of plain text"),
}
#: built-ins that run data-parallel under a launcher (policy/distributed.py)
LAUNCH_AWARE = ("sft", "grpo")


def command_module_recipe(module: str, help_: str, launch_aware: bool = False) -> Recipe:
    """The recipe whose flags and run are ``module``'s ``add_arguments(parser)`` and ``main(args)``.

    The module is imported when the parser is built, not here: each pulls in its training code (torch,
    TRL for some), which a plug-in importing this registry in a worker process should not pay for."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(parser)

    def main(args: argparse.Namespace) -> int | None:
        return importlib.import_module(module).main(args)

    return Recipe(help_, add_arguments, main, launch_aware, origin=f"{module}.main")


def register_builtins() -> None:
    for name, (module, help_) in BUILTIN.items():
        RECIPES.register(name)(command_module_recipe(module, help_, name in LAUNCH_AWARE))


register_builtins()  # here, with the registry: a plug-in that imports RECIPES may override any of them


def register_recipe(name: str, *, config: type, help: str | None = None, helps: dict[str, str] | None = None,
                    override: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: ``run(cfg)`` becomes ``deliberate train NAME``; returns ``run`` unchanged.

    ``config``: a dataclass whose every field has a default and which has an ``out`` field (the run
    directory); each field is a flag, ``helps`` maps field names to their help. ``run`` takes the config
    built from the flags and returns the text to print (a string, lines, or None); ``config.yaml`` is
    then written into ``out``. ``help``: the line ``deliberate train --help`` shows (default: the first
    line of ``run``'s docstring). ``override=True`` replaces a recipe of that name, a built-in included."""
    if not dataclasses.is_dataclass(config) or "out" not in {f.name for f in dataclasses.fields(config)}:
        raise DeliberateError(f"recipe {name!r}: config must be a dataclass with an `out` field (the run directory)")

    def deco(run: Callable) -> Callable:
        doc = (run.__doc__ or "").strip().splitlines()

        def add_arguments(parser: argparse.ArgumentParser) -> None:
            add_recipe_arguments(parser, config, helps or {})

        def main(args: argparse.Namespace) -> int:
            cfg = config_from_args(config, args)
            said = run(cfg)
            write_run_config(cfg.out, args)
            for line in [said] if isinstance(said, str) else (said or ()):
                print(line)
            report_outputs(cfg.out)
            return 0

        origin = f"{run.__module__}.{run.__qualname__}"
        RECIPES.register(name, override=override)(Recipe(help or (doc[0] if doc else ""), add_arguments, main,
                                                         origin=origin))
        return run

    return deco


def report_outputs(out: str | Path, names: Iterable[str] = ("summary.json", "curve.png")) -> None:
    """Print where a run's summary and plot are, those of ``names`` it wrote."""
    found = [Path(out) / n for n in names if (Path(out) / n).exists()]
    print("   ".join([f"config: {Path(out) / 'config.yaml'}"] + [f"{p.stem}: {p}" for p in found]))


def recipe_names() -> list[str]:
    return RECIPES.names()


def get_recipe(name: str) -> Recipe:
    """The recipe ``name`` names; an unknown name is refused with the valid ones and the closest."""
    return RECIPES.get(name)
