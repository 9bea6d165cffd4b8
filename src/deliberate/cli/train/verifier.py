"""``deliberate train prm | orm | genrm``: learned verifiers on any model (see :mod:`deliberate.train.verifier`).

    deliberate train prm --labels runs/labels --model runs/quickstart/sft/model --out runs/prm
    deliberate train prm --labels runs/labels --model smollm2 --steps 200 --batch-size 8 --lr 1e-5 --out runs/prm-smollm2

One module serves the three recipes: the kind is the recipe's name. The flags are written here, not derived by
:mod:`deliberate.cli.flags`, because that helper needs a config that is valid with no arguments and this one
needs ``--labels`` or ``--samples``; every default still comes from
:class:`~deliberate.train.verifier.VerifierTrainConfig`. ``--model`` names its ``init_from`` (``--init-from``,
the field's own flag, stays accepted).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import config_fields, flag_name
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
    parser.add_argument("--model", "--init-from", dest="init_from", default=d.init_from, metavar="MODEL",
                        help="model to start from: a tiny checkpoint, a Hugging Face causal-LM directory, a .gguf file "
                             "or smollm2 (default: a fresh tiny model)")
    parser.add_argument("--d-model", type=int, default=None, help="fresh tiny model width (without --model)")
    parser.add_argument("--n-layers", type=int, default=None, help="fresh tiny model depth (without --model)")
    for name in ("steps", "batch_size", "warmup", "seed", "checkpoint_every"):
        parser.add_argument(flag_name(name), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "grad_clip", "val_frac"):
        parser.add_argument(flag_name(name), type=float, default=getattr(d, name))
    parser.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult,
                        help="prm/orm: learning-rate multiplier of the fresh classification head")
    parser.add_argument("--sft-mix", type=float, default=d.sft_mix, help="genrm: fraction of each batch from SFT data")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<kind>)")
    parser.add_argument("--device", default="auto",
                        help="where to train: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N "
                             "(default: %(default)s)")


def config_from_args(kind: str, args) -> VerifierTrainConfig:
    """The config of ``train <kind>`` from the parsed flags (the kind is the recipe's name, not a flag)."""
    values = {dest: getattr(args, dest) for dest, _f, _t, _p in config_fields(VerifierTrainConfig) if hasattr(args, dest)}
    model = {k: v for k, v in (("d_model", args.d_model), ("n_layers", args.n_layers)) if v}
    return VerifierTrainConfig(**values, kind=kind, task_options=parse_kv(args.task_arg or [], "--task-arg"),
                               model=model)


def main(args) -> int:
    kind = args.recipe
    set_threads(args.threads or None)
    cfg = config_from_args(kind, args)
    t0 = time.perf_counter()
    final = train_verifier(cfg, device=args.device)
    write_run_config(cfg.out, args)
    m = json.loads((Path(cfg.out) / "metrics.json").read_text())
    extra = "" if m.get("val_loss") is None else f", val loss {m['val_loss']:.4f}, val AUC {m.get('val_auc_vs_hard')}"
    print(f"{kind} written to {final} (loss {m['first_loss']:.4f} -> {m['final_loss_ema']:.4f}{extra}; "
          f"{time.perf_counter() - t0:.0f}s)")
    return 0
