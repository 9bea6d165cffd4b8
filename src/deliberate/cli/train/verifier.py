"""``deliberate train prm | orm | genrm``: learned verifiers on any model (see :mod:`deliberate.train.verifier`).

    deliberate train prm --labels runs/labels --model runs/quickstart/sft/model --out runs/prm
    deliberate train prm --labels runs/labels --model smollm2 --steps 200 --batch-size 8 --lr 1e-5 --out runs/prm-smollm2

One module serves the three recipes: the kind is the recipe's name. The flags come from
:class:`~deliberate.train.verifier.VerifierTrainConfig` (:class:`~deliberate.cli.flags.ConfigFlags`); ``--model``
names its ``init_from`` (``--init-from``, the field's own flag, stays accepted); a fresh tiny model's size is
``--d-model`` / ``--n-layers``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from deliberate.cli.config_file import add_flag, write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.train.verifier import VerifierTrainConfig, train_verifier

FLAGS = ConfigFlags(
    VerifierTrainConfig,
    helps={
        "labels": "labels.jsonl or a `deliberate label mc` output directory",
        "samples": "ORM only: a `deliberate eval` output directory (outcome labels from its samples)",
        "label_type": "PRM/GenRM step targets: Monte-Carlo fraction (soft) or any-correct (hard)",
        "init_from": "model to start from: a tiny checkpoint, a Hugging Face causal-LM directory, a .gguf file "
                     "or smollm2 (default: a fresh tiny model)",
        "head_lr_mult": "prm/orm: learning-rate multiplier of the fresh classification head",
        "val_frac": "fraction of the problems held out (by a hash of the question) for metrics.json",
        "sft_mix": "genrm: fraction of each batch from SFT data",
        "out": "output directory (default: runs/<kind>)",
    },
    aliases={"init_from": ("--model",)},
    choices={"label_type": ("soft", "hard")},
    metavars={"init_from": "MODEL"},
    skip={"kind", "model"},  # the kind is the recipe's name; a fresh model's size has its own two flags
)


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)
    add_flag(parser, "--d-model", type=int, default=None, help="fresh tiny model width (without --model)")
    add_flag(parser, "--n-layers", type=int, default=None, help="fresh tiny model depth (without --model)")
    add_flag(parser, "--device", default="auto",
             help="where to train: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N "
                  "(default: %(default)s)")


def config_from_args(kind: str, args) -> VerifierTrainConfig:
    """The config of ``train <kind>`` from the parsed flags (the kind is the recipe's name, not a flag)."""
    model = {k: v for k, v in (("d_model", args.d_model), ("n_layers", args.n_layers)) if v}
    return FLAGS.config(args, kind=kind, model=model)


def main(args) -> int:
    kind = args.recipe
    cfg = config_from_args(kind, args)
    args.out = cfg.out  # config.yaml names the directory this run went to
    t0 = time.perf_counter()
    final = train_verifier(cfg, device=args.device)
    write_run_config(cfg.out, args)
    m = json.loads((Path(cfg.out) / "metrics.json").read_text())
    extra = "" if m.get("val_loss") is None else f", val loss {m['val_loss']:.4f}, val AUC {m.get('val_auc_vs_hard')}"
    print(f"{kind} written to {final} (loss {m['first_loss']:.4f} -> {m['final_loss_ema']:.4f}{extra}; "
          f"{time.perf_counter() - t0:.0f}s)")
    return 0
