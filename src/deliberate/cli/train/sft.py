"""Supervised fine-tuning of the tiny model on a task's gold rationales (see :mod:`deliberate.train.sft`);
runs data-parallel under ``accelerate launch``.

    deliberate train sft --task arith --steps 450 --out runs/sft
"""

from __future__ import annotations

import time

from deliberate.cli.common import add_device_argument, set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.models.base import parse_kv
from deliberate.models.tiny import TinyConfig
from deliberate.policy.distributed import setup
from deliberate.train.sft import SFTConfig, train_sft


def add_arguments(parser) -> None:
    d = SFTConfig()
    m = TinyConfig()
    parser.add_argument("--task", default=d.task)
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--n-train", type=int, default=d.n_train, help="number of generated training problems")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--d-model", type=int, default=m.d_model)
    parser.add_argument("--n-layers", type=int, default=m.n_layers)
    parser.add_argument("--n-heads", type=int, default=m.n_heads)
    parser.add_argument("--init-from", default=None, help="fine-tune this checkpoint instead of training from scratch")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--out", default=d.out)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: all cores; the thread count changes float rounding, "
                             "so the same seed on another thread count gives a different model)")
    add_device_argument(parser)


def main(args) -> int:
    set_threads(args.threads)
    cfg = SFTConfig(
        task=args.task, task_options=parse_kv(args.task_arg, "--task-arg"), n_train=args.n_train,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        model=TinyConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_heads),
        init_from=args.init_from, seed=args.seed, checkpoint_every=args.checkpoint_every, out=args.out,
    )
    t0 = time.perf_counter()
    dist = setup("sft", args.device)
    final = train_sft(cfg, dist=dist)
    dist.close()  # on an error the launcher stops the other ranks
    write_run_config(cfg.out, args)
    if dist.is_main:
        print(f"model written to {final} ({time.perf_counter() - t0:.0f}s)"
              + (f" by {dist.world_size} processes" if dist.world_size > 1 else ""))
    return 0
