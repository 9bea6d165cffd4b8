"""GRPO: reinforcement learning with verifiable rewards on any policy (see :mod:`deliberate.train.grpo`); runs
data-parallel under ``accelerate launch``.

    deliberate train grpo --model runs/quickstart/sft/model --out runs/grpo
"""

from __future__ import annotations

from deliberate.cli.common import add_device_argument
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.policy.distributed import setup
from deliberate.train.grpo import GRPOConfig, run_grpo
from deliberate.train.rest_em import format_iterations

HELP = {
    "init": "the policy and KL reference: a tiny checkpoint, an HF checkpoint directory, a .gguf or smollm2",
    "max_tokens": "new tokens per completion, in training and evaluation (default: the task's)",
    "eval_temperature": "sampling temperature of the held-out maj@n / pass@n",
    "steps": "sampling steps in all; rerunning a finished run with more continues it (old total a multiple "
             "of --eval-every)",
    "problems_per_step": "training problems per step",
    "group": "completions sampled per problem (advantages are relative to the group)",
    "beta": "weight of the KL penalty to the seed model",
    "clip": "PPO-style clip range of the probability ratio",
    "credit": "advantages per completion (sequence) or per token from the step checker's per-step rewards "
              "(steps: each step's own; steps-to-go: summed over later steps, DeepSeekMath's process supervision; "
              "outcome+steps: the completion's advantage plus its step's, normalised per step position)",
    "loss_type": "token averaging: grpo (per completion, then over completions), dapo (over all the batch's "
                 "tokens), dr_grpo (token sum / (completions x max completion length)); TRL's names",
    "scale_rewards": "divide group advantages by the group's reward std (Dr. GRPO turns this off)",
    "warmup": "steps of linear learning-rate warmup from lr/warmup to lr (0: none)",
    "lr_scheduler": "learning rate after warmup: constant (the run can be extended), or linear / cosine decay "
                    "toward 0 at --steps (TRL's names)",
    "inner_epochs": "passes over each step's completions",
    "minibatches": "optimizer updates per pass: the step's completions cut into this many minibatches",
    "micro_batch": "sequences per forward/backward pass, gradients accumulated to each minibatch's one update: "
                   "the same training in less memory (0: the whole minibatch at once)",
}


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, GRPOConfig, HELP)
    add_device_argument(parser)


def main(args) -> int:
    cfg = config_from_args(GRPOConfig, args)
    dist = setup("grpo", args.device)
    summary = run_grpo(cfg, dist=dist)
    dist.close()  # on an error the launcher stops the other ranks
    if not dist.is_main:
        write_run_config(cfg.out, args)
        return 0
    return finish(cfg.out, args, format_iterations(summary["iterations"], cfg.eval_n))
