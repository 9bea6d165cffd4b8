"""ReST-EM / expert iteration: sample, keep verified, fine-tune the base, repeat (see :mod:`deliberate.train.rest_em`).

    deliberate train rest-em --init runs/quickstart/sft/model --out runs/rest-em
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.common import add_executor_arguments, ray_options
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import add_config_arguments, config_from_args
from deliberate.train.rest_em import HELP, RestEMConfig, format_iterations, run_rest_em


def add_arguments(parser) -> None:
    add_config_arguments(parser, RestEMConfig, HELP, aliases={"init": ("--model",)})
    add_executor_arguments(parser, "the E-step's sampling")


def main(args) -> int:
    cfg = config_from_args(RestEMConfig, args)
    summary = run_rest_em(cfg, ray=ray_options(args))
    write_run_config(cfg.out, args)
    print(format_iterations(summary["iterations"], cfg.eval_n))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0
