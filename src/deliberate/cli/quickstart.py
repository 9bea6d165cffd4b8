"""``deliberate quickstart``: the shipped tiny policy, likelihood PRM and ORM on fresh held-out arith problems:
greedy, majority, best-of-N, weighted, beam search and MCTS at N = 1..16 against pass@N, one table, two plots and
an HTML report (see :mod:`deliberate.experiments.quickstart`).

    deliberate quickstart                                   # writes runs/quickstart/
    deliberate quickstart --from-scratch                    # rebuild the shipped checkpoints first, timed
    deliberate quickstart --from-scratch --seed 1 --out runs/qs-seed1
"""

from __future__ import annotations

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.experiments.quickstart import QuickstartConfig, run_quickstart

#: the flags: :class:`QuickstartConfig`'s fields
FLAGS = ConfigFlags(QuickstartConfig, helps={
    "from_scratch": "rebuild the checkpoints with the project's commands (policy SFT, verifier backbone, "
                    "Monte-Carlo labels, PRM/ORM calibration) instead of using the shipped ones; says how long",
    "seed": "training seed of a --from-scratch build (OUT/sft/model is then `deliberate quickstart --seed S`'s "
            "policy of earlier versions, byte for byte)",
    "steps": "the policy's SFT steps in a --from-scratch build",
    "n_problems": "fresh held-out problems",
    "sampling_seeds": "sampling seeds per problem",
})


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)


def main(args) -> int:
    cfg = FLAGS.config(args)
    run_quickstart(cfg)
    write_run_config(cfg.out, args)
    return 0
