"""ReST-EM / expert iteration: sample, keep verified, fine-tune the base, repeat (see :mod:`deliberate.train.rest_em`).

    deliberate train rest-em --init runs/quickstart/sft/model --out runs/rest-em
"""

from __future__ import annotations

from deliberate.cli.common import add_executor_arguments, ray_options
from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.rest_em import HELP, RestEMConfig, format_iterations, run_rest_em


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, RestEMConfig, HELP)
    add_executor_arguments(parser, "the E-step's sampling")


def main(args) -> int:
    cfg = config_from_args(RestEMConfig, args)
    summary = run_rest_em(cfg, ray=ray_options(args))
    return finish(cfg.out, args, format_iterations(summary["iterations"], cfg.eval_n))
