"""Supervised fine-tuning of the tiny model on a task's gold rationales (see :mod:`deliberate.train.sft`);
runs data-parallel under ``accelerate launch``.

    deliberate train sft --task arith --steps 450 --out runs/sft
"""

from __future__ import annotations

import time

from deliberate.cli.common import add_device_argument, set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.policy.distributed import setup
from deliberate.train.sft import SFTConfig, train_sft


#: the flags: :class:`SFTConfig`'s fields, the model's size among them (its KV heads follow ``--n-heads``)
FLAGS = ConfigFlags(
    SFTConfig,
    helps={"n_train": "number of generated training problems",
           "init_from": "fine-tune this checkpoint instead of training from scratch",
           "task_options": "task option (repeatable)"},
    skip={"weight_decay", "grad_clip", "data_seed", "n_kv_heads", "mlp_ratio", "max_len", "rope_theta"},
    flatten=("model",),
    threads=("torch threads per process (default: all cores; the thread count changes float rounding, so the same "
             "seed on another thread count gives a different model)"),
)


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)
    add_device_argument(parser)


def main(args) -> int:
    set_threads(args.threads)
    cfg = FLAGS.config(args, n_kv_heads=args.n_heads)
    t0 = time.perf_counter()
    dist = setup("sft", args.device)
    final = train_sft(cfg, dist=dist)
    dist.close()  # on an error the launcher stops the other ranks
    write_run_config(cfg.out, args)
    if dist.is_main:
        print(f"model written to {final} ({time.perf_counter() - t0:.0f}s)"
              + (f" by {dist.world_size} processes" if dist.world_size > 1 else ""))
    return 0
