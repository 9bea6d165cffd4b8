"""STaR on addition: self-taught rationales, with or without rationalization (see :mod:`deliberate.train.star`).

    deliberate train star --out runs/star
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import add_config_arguments, config_from_args
from deliberate.train.star import HELP, StarConfig, format_star, run_star


def add_arguments(parser) -> None:
    add_config_arguments(parser, StarConfig, HELP, aliases={"init": ("--model",)})


def main(args) -> int:
    cfg = config_from_args(StarConfig, args)
    summary = run_star(cfg)
    write_run_config(cfg.out, args)
    print(format_star(summary["iterations"]))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0
