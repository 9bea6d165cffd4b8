"""``deliberate quickstart``: train the tiny model on arith, evaluate greedy / maj@n / pass@n, plot
(see :mod:`deliberate.experiments.quickstart`).

    deliberate quickstart                 # writes runs/quickstart/
    deliberate quickstart --seed 1 --out runs/qs-seed1
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.experiments.quickstart import DEFAULT_STEPS, DEFAULT_TASK_OPTIONS, QuickstartConfig, run_quickstart


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="training seed (eval problems and sampling use --eval-seed)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="SFT steps")
    parser.add_argument("--n-problems", type=int, default=200, help="held-out problems to evaluate")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def main(args) -> int:
    set_threads(args.threads or None)
    cfg = QuickstartConfig(seed=args.seed, eval_seed=args.eval_seed, steps=args.steps, n_problems=args.n_problems,
                           n=args.n, out=args.out)
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
