"""``deliberate suspects``: the four suspects of o1-style reasoning, plus plain GRPO, from one seed under one
train-compute budget (see :mod:`deliberate.experiments.suspects`).

    deliberate suspects --init runs/quickstart/sft/model --train-tflops 8 --out runs/suspects
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.experiments.suspects import SUSPECTS, SuspectsConfig, format_table, run_suspects
from deliberate.policy import FinetuneSettings


#: the flags: :class:`SuspectsConfig`'s fields, of its fine-tune settings only ``--epochs`` (the task options are
#: the suspects' fixed recipe, no flag)
FLAGS = ConfigFlags(
    SuspectsConfig,
    helps={"init": "the SFT seed policy every suspect starts from",
           "suspects": f"comma-separated subset of {', '.join(SUSPECTS)} (default: all)",
           "train_tflops": "train-compute budget per suspect, in TFLOPs",
           "epochs": "fine-tuning epochs over kept samples"},
    skip={"task_options"} | {f.name for f in dataclasses.fields(FinetuneSettings)} - {"epochs"},
)


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)


def main(args) -> int:
    cfg = FLAGS.config(args)
    summary = run_suspects(cfg)
    write_run_config(cfg.out, args)
    print(format_table(summary))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'suspects.png'}   "
          f"report: {Path(cfg.out) / 'report.html'}")
    return 0
