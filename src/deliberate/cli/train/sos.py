"""Stream of Search on countdown: train on search streams vs optimal paths (see :mod:`deliberate.train.sos`).

    deliberate train sos --out runs/sos
"""

from __future__ import annotations

from deliberate.cli.flags import add_config_arguments, config_from_args
from deliberate.cli.train.recipe import finish
from deliberate.train.sos import HELP, SoSConfig, format_summary, run_sos


def add_arguments(parser) -> None:
    add_config_arguments(parser, SoSConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(SoSConfig, args)
    summary = run_sos(cfg)
    return finish(cfg.out, args, format_summary(summary), plot=False)
