"""V-STaR: a generator fine-tuned on its correct samples and a DPO verifier on (correct, incorrect) pairs
(see :mod:`deliberate.train.vstar`).

    deliberate train vstar --model runs/quickstart/sft/model --out runs/vstar
"""

from __future__ import annotations

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments
from deliberate.train.vstar import VStarConfig, run_vstar

HELP = {
    "init": "seed policy (a tiny checkpoint, an HF checkpoint directory or smollm2): samples the training "
            "solutions; the generator starts from it, and so does the verifier unless --verifier-init is given",
    "verifier_init": "a checkpoint of the same kind to start the DPO verifier from (default: --init), e.g. an LM "
                     "stronger than the policy",
    "verifier_ref": "the DPO reference, same tokenizer as the verifier's start (default: the verifier's start); "
                    "e.g. --verifier-init STRONG --verifier-ref the policy makes the reward start at "
                    "log p_STRONG - log p_policy",
    "k": "samples per training problem",
    "max_per_problem": "distinct correct samples per problem for the generator",
    "keep": "correct = 'outcome' (right answer) or 'process' (right answer and every step right by the task's step checker)",
    "dpo_beta": "DPO temperature (also scales the verifier's reward)",
    "val_fraction": "share of problems held out to measure the verifier's pair accuracy",
}


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, VStarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(VStarConfig, args)
    s = run_vstar(cfg)
    write_run_config(cfg.out, args)
    m = s["verifier_meta"]
    print(f"generator: {s['generator']}")
    print(f"DPO verifier: {s['verifier']}  ({m['pairs']} pairs, {m['steps']} steps; pair accuracy train "
          f"{m['train_pair_accuracy']}, held-out {m['val_pair_accuracy']})")
    print(f"next: deliberate sweep --model {s['generator']} --verifier dpo:{s['verifier']} "
          f"--strategies majority,best_of_n,weighted --budgets 16,64 --seeds 0,1,2 ...")
    return 0
