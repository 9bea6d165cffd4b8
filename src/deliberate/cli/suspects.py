"""``deliberate suspects``: the four suspects of o1-style reasoning, plus plain GRPO, from one seed under one
train-compute budget (see :mod:`deliberate.experiments.suspects`).

    deliberate suspects --init runs/quickstart/sft/model --train-tflops 8 --out runs/suspects
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.experiments.suspects import SUSPECTS, SuspectsConfig, format_table, run_suspects
from deliberate.policy import FinetuneSettings


def add_arguments(parser) -> None:
    d = SuspectsConfig()
    parser.add_argument("--init", default=d.init, help="the SFT seed policy every suspect starts from (default: %(default)s)")
    parser.add_argument("--suspects", default=",".join(d.suspects),
                        help=f"comma-separated subset of {', '.join(SUSPECTS)} (default: all)")
    parser.add_argument("--train-tflops", type=float, default=d.train_tflops,
                        help="train-compute budget per suspect, in TFLOPs (default: %(default)s)")
    for name in ("n_train", "k", "mcts_n", "prm_steps", "label_problems", "label_rollouts", "grpo_steps",
                 "grpo_eval_every", "eval_problems", "eval_n", "eval_seed", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                            help="(default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=d.finetune.epochs, help="fine-tuning epochs over kept samples "
                        "(default: %(default)s)")
    parser.add_argument("--out", default=d.out)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def main(args) -> int:
    set_threads(args.threads or None)
    ints = {name: getattr(args, name) for name in ("n_train", "k", "mcts_n", "prm_steps", "label_problems",
                                                   "label_rollouts", "grpo_steps", "grpo_eval_every",
                                                   "eval_problems", "eval_n", "eval_seed", "seed")}
    cfg = SuspectsConfig(init=args.init, suspects=tuple(s.strip() for s in args.suspects.split(",") if s.strip()),
                         train_tflops=args.train_tflops, finetune=FinetuneSettings(epochs=args.epochs),
                         out=args.out, **ints)
    summary = run_suspects(cfg)
    write_run_config(cfg.out, args)
    print(format_table(summary))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'suspects.png'}   "
          f"report: {Path(cfg.out) / 'report.html'}")
    return 0
