"""Learned verifiers on the tiny model: a PRM on step labels, an ORM on outcomes, or a generative verifier
(GenRM) answering Yes/No per step prefix (see :mod:`deliberate.train.verifier`).

    deliberate train prm --labels runs/labels --init-from runs/quickstart/sft/model --out runs/prm
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.models.base import parse_kv
from deliberate.train.verifier import VerifierTrainConfig, train_verifier


def add_arguments(parser) -> None:
    d = VerifierTrainConfig(labels="(defaults)")
    parser.add_argument("--labels", default=None, help="labels.jsonl or a `deliberate label mc` output directory")
    parser.add_argument("--samples", default=None,
                        help="ORM only: a `deliberate eval` output directory (outcome labels from its samples)")
    parser.add_argument("--label-type", choices=("soft", "hard"), default=d.label_type,
                        help="PRM/GenRM step targets: Monte-Carlo fraction (soft) or any-correct (hard)")
    parser.add_argument("--task", default=d.task)
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--init-from", default=None, help="tiny policy checkpoint to start from (recommended)")
    parser.add_argument("--d-model", type=int, default=None, help="fresh model size (without --init-from)")
    parser.add_argument("--n-layers", type=int, default=None)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult,
                        help="prm/orm: learning-rate multiplier of the fresh classification head")
    parser.add_argument("--val-frac", type=float, default=d.val_frac)
    parser.add_argument("--sft-mix", type=float, default=d.sft_mix, help="genrm: fraction of each batch from SFT data")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<kind>)")
    parser.add_argument("--device", default="auto",
                        help="where to train: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N "
                             "(default: %(default)s)")


def main(args) -> int:
    kind = args.recipe
    set_threads(args.threads or None)
    model = {}
    if args.d_model:
        model.update(d_model=args.d_model)
    if args.n_layers:
        model.update(n_layers=args.n_layers)
    cfg = VerifierTrainConfig(kind=kind, labels=args.labels, samples=args.samples, label_type=args.label_type,
                              task=args.task, task_options=parse_kv(args.task_arg, "--task-arg"),
                              init_from=args.init_from, model=model, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, warmup=args.warmup,
                              head_lr_mult=args.head_lr_mult, val_frac=args.val_frac, sft_mix=args.sft_mix,
                              seed=args.seed, checkpoint_every=args.checkpoint_every, out=args.out or f"runs/{kind}")
    t0 = time.perf_counter()
    final = train_verifier(cfg, device=args.device)
    write_run_config(cfg.out, args)
    m = json.loads((Path(cfg.out) / "metrics.json").read_text())
    extra = "" if m.get("val_loss") is None else f", val loss {m['val_loss']:.4f}, val AUC {m.get('val_auc_vs_hard')}"
    print(f"{kind} written to {final} (loss {m['first_loss']:.4f} -> {m['final_loss_ema']:.4f}{extra}; "
          f"{time.perf_counter() - t0:.0f}s)")
    return 0
