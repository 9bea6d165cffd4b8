"""``deliberate quickstart``: the whole pipeline on the built-in default, in a few minutes on a laptop CPU.

1. train the tiny character-level Llama from scratch on ``arith`` gold rationales (SFT);
2. evaluate it on held-out ``arith`` problems: greedy, and 16 samples per problem scored as
   pass@n and maj@n for n = 1, 2, 4, 8, 16 (unbiased estimators, 95% bootstrap CIs);
3. print the table and write ``summary.json``, ``records.jsonl`` and ``accuracy_vs_n.png``.

    deliberate quickstart                 # writes runs/quickstart/
    deliberate quickstart --seed 1 --out runs/qs-seed1

Rerunning the same command resumes: finished training and finished samples are not redone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from deliberate.eval.evaluate import EvalConfig, format_table, run_eval
from deliberate.models.tiny import TinyBackend, TinyConfig
from deliberate.train.sft import SFTConfig, train_sft

# The default recipe: chosen so every training seed lands greedy in the 20-85% band with a wide
# pass@16 gap (docs/RESULTS.md records the spread over seeds).
DEFAULT_TASK_OPTIONS = {"min_ops": 1, "max_ops": 3, "max_operand": 15}
DEFAULT_STEPS = 450
DEFAULT_MODEL = TinyConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4)


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="training seed (eval problems and sampling use --eval-seed)")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="SFT steps")
    parser.add_argument("--n-problems", type=int, default=200, help="held-out problems to evaluate")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    print(f"[1/2] training the tiny model on arith ({args.steps} steps) -> {out / 'sft'}", flush=True)
    model_dir = train_sft(SFTConfig(task="arith", task_options=DEFAULT_TASK_OPTIONS, steps=args.steps,
                                    model=DEFAULT_MODEL, seed=args.seed, out=str(out / "sft")))
    t1 = time.perf_counter()
    print(f"      trained in {t1 - t0:.0f}s", flush=True)
    print(f"[2/2] evaluating on {args.n_problems} held-out problems: greedy + {args.n} samples each", flush=True)
    backend = TinyBackend(model_dir)
    cfg = EvalConfig(task="arith", task_options=DEFAULT_TASK_OPTIONS, n_problems=args.n_problems, n=args.n,
                     temperature=1.0, seed=args.eval_seed, batch_size=64, out_dir=str(out / "eval"))
    summary = run_eval(cfg, backend)
    print()
    print(format_table(summary))
    print(f"\nwall time {time.perf_counter() - t0:.0f}s (train {t1 - t0:.0f}s, eval {time.perf_counter() - t1:.0f}s)")
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
