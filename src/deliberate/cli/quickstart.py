"""``deliberate quickstart``: train the tiny model on arith, evaluate greedy / maj@n / pass@n, plot
(see :mod:`deliberate.experiments.quickstart`).

    deliberate quickstart                 # writes runs/quickstart/
    deliberate quickstart --seed 1 --out runs/qs-seed1
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.experiments.quickstart import DEFAULT_TASK_OPTIONS, QuickstartConfig, run_quickstart


#: the flags: :class:`QuickstartConfig`'s fields
FLAGS = ConfigFlags(QuickstartConfig, helps={
    "seed": "training seed (eval problems and sampling use --eval-seed)",
    "steps": "SFT steps",
    "n_problems": "held-out problems to evaluate",
    "n": "samples per problem",
})


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)


def main(args) -> int:
    cfg = FLAGS.config(args)
    run_quickstart(cfg)
    write_run_config(cfg.out, args)
    out = Path(cfg.out)
    print(f"summary: {out / 'eval' / 'summary.json'}   plot: {out / 'eval' / 'accuracy_vs_n.png'}")
    policy = out / "sft" / "model"
    task = " ".join(f"--task-arg {k}={v}" for k, v in DEFAULT_TASK_OPTIONS.items())
    print("\nnext:\n"
          f"  deliberate report {out / 'eval'}     # the table and plots as one HTML page\n"
          f"  deliberate sweep --task arith {task} --model {policy} \\\n"
          f"      --verifier oracle --strategies majority,best_of_n,beam --budgets 4,16 --out runs/sweep"
          f"   # search with a verifier\n"
          f"  deliberate train rest-em --init {policy} --out runs/rest-em   # self-improvement (~1 h on 2 cores)")
    return 0
