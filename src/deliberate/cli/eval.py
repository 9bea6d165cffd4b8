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
from deliberate.errors import DeliberateError
from deliberate.eval.evaluate import (
    IDENTITY,
    RECORDS_FILE,
    SUMMARY_FILE,
    EvalConfig,
    check_config,
    format_table,
    run_eval,
)
from deliberate.models.base import parse_kv
from deliberate.tasks.base import SPLITS, get_task


def _parse_ns(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise DeliberateError(f"--ns must be a comma-separated list of integers (got {text!r})") from None


def add_arguments(parser) -> None:
    """Flags of ``deliberate eval``."""
    d = EvalConfig(task="_", out_dir="_")
    parser.add_argument("--task", required=True, help="task name, e.g. arith, addition, gsm8k, gym:<name>")
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="task option (repeatable), e.g. --task-arg max_ops=4")
    parser.add_argument("--split", default=d.split, choices=SPLITS, help="problem split (default: %(default)s)")
    parser.add_argument("--n-problems", type=int, default=d.n_problems, help="problems to evaluate (default: %(default)s)")
    parser.add_argument("--n", type=int, default=d.n, help="samples per problem (default: %(default)s)")
    parser.add_argument("--ns", default=None, help="k values for pass@k/maj@k, e.g. 1,2,4 (default: powers of two up to n)")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None, help="max generated tokens (default: the task's)")
    parser.add_argument("--seed", type=int, default=d.seed, help="problem and sampling seed (default: %(default)s)")
    parser.add_argument("--prompt-style", default=d.prompt_style, help="plain (tiny model) or instruct (default: %(default)s)")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy sample per problem")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="problems per backend call (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output directory; rerun with the same one to resume "
                                                    "(default: runs/eval-<task>-<timestamp>)")
    add_backend_arguments(parser)


def main(args) -> int:
    """Run ``deliberate eval`` from parsed :func:`add_arguments` flags; print the table."""
    out = args.out or f"runs/eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.task)}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = out  # config.yaml names the directory this run went to
    config = EvalConfig(task=args.task, task_options=parse_kv(args.task_arg, "--task-arg"), split=args.split,
                        n_problems=args.n_problems, n=args.n, ns=_parse_ns(args.ns), temperature=args.temperature,
                        top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
                        prompt_style=args.prompt_style, greedy=not args.no_greedy, batch_size=args.batch_size,
                        out_dir=out)
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
