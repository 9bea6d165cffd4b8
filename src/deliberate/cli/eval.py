"""``deliberate eval``: greedy / sampling / majority vote of a model on a task, with pass@k, maj@k and CIs.

    deliberate eval --task arith --model runs/quickstart/sft/model --n 16 --out runs/eval
    deliberate eval --config runs/eval/config.yaml --out runs/eval-again   # the same records again
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from deliberate.cli.common import add_backend_arguments, backend_from_args
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.eval.evaluate import (
    IDENTITY,
    RECORDS_FILE,
    SUMMARY_FILE,
    EvalConfig,
    check_config,
    format_table,
    run_eval,
)
from deliberate.tasks.base import SPLITS, get_task


#: ``deliberate eval``'s flags: :class:`EvalConfig`'s fields (the backend's: :mod:`deliberate.cli.common`)
FLAGS = ConfigFlags(
    EvalConfig,
    helps={
        "task": "task name, e.g. arith, addition, gsm8k, gym:<name>",
        "task_options": "task option (repeatable), e.g. --task-arg max_ops=4",
        "split": "problem split",
        "n_problems": "problems to evaluate",
        "n": "samples per problem",
        "ns": "k values for pass@k/maj@k, e.g. 1,2,4 (default: powers of two up to n)",
        "temperature": "sampling temperature",
        "top_p": "nucleus sampling mass",
        "max_tokens": "max generated tokens (default: the task's)",
        "seed": "problem and sampling seed",
        "prompt_style": "plain (tiny model) or instruct",
        "greedy": "one greedy sample per problem besides the sampled ones (--no-greedy skips it)",
        "batch_size": "problems per backend call",
        "out_dir": "output directory; rerun with the same one to resume (default: runs/eval-<task>-<timestamp>)",
    },
    names={"out_dir": "out"},
    choices={"split": SPLITS},
    defaults={"out_dir": None},
    threads=None,
)


def add_arguments(parser) -> None:
    """Flags of ``deliberate eval``."""
    FLAGS.add_to(parser)
    add_backend_arguments(parser)


def main(args) -> int:
    """Run ``deliberate eval`` from parsed :func:`add_arguments` flags; print the table."""
    out = args.out or f"runs/eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.task)}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = out  # config.yaml names the directory this run went to
    config = FLAGS.config(args, out_dir=out)
    task = get_task(config.task, **config.task_options)
    task.problems(config.split, config.n_problems, config.seed)  # bad data fails here, before a model loads
    # so does resuming into a directory of a different run (the model name is checked once loaded)
    max_tokens = config.max_tokens if config.max_tokens is not None else task.max_tokens
    check_config(Path(out), {**config.to_dict(), "max_tokens": max_tokens},
                 keys=[k for k in IDENTITY if k != "model"])
    backend = backend_from_args(args)
    try:
        summary = run_eval(config, backend, task=task)
    finally:
        backend.close()
    write_run_config(out, args)
    print(format_table(summary))
    print(f"wrote {Path(out) / SUMMARY_FILE}, {Path(out) / RECORDS_FILE} and plots")
    return 0
