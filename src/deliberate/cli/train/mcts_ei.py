"""MCTS expert iteration: MCTS with the policy and a PRM, both trained on the trees' verified solutions and
step values (see :mod:`deliberate.train.mcts_ei`).

    deliberate train mcts-ei --model runs/quickstart/sft/model --out runs/mcts-ei
"""

from __future__ import annotations

from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.mcts_ei import MCTSEIConfig, run_mcts_ei
from deliberate.train.selfimprove import iteration_table


def format_iterations(rows, n: int, mcts_n: int) -> str:
    return iteration_table(rows, ["greedy", f"maj@{n}", f"pass@{n}"] + ([f"mcts@{mcts_n}"] if mcts_n else []))


HELP = {
    "init": "seed policy (a tiny checkpoint, an HF checkpoint directory or smollm2); every policy is trained "
            "from it, and every PRM too when it is a tiny checkpoint",
    "prm_init_from": "the model every PRM trains from (default: --model)",
    "n_train": "training problems searched in each iteration",
    "mcts_n": "MCTS iterations per training problem",
    "expansions": "steps sampled per expanded node",
    "value": "node value in the training search: prm (previous iteration's PRM) or rollout (outcome of one rollout)",
    "prm_init": "PRM directory valuing nodes in iteration 1 (default: rollouts)",
    "max_per_problem": "distinct verified solutions per problem the policy trains on",
    "prm_steps": "PRM training steps per iteration (on the labels of all iterations so far)",
    "eval_mcts_n": "MCTS iterations of the held-out policy+PRM evaluation (0: skip it)",
}


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, MCTSEIConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(MCTSEIConfig, args)
    summary = run_mcts_ei(cfg)
    return finish(cfg.out, args, format_iterations(summary["iterations"], cfg.eval_n, cfg.eval_mcts_n))
