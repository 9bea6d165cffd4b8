"""``deliberate train lprm``: a likelihood PRM / ORM: a frozen LM's step log-probs calibrated on Monte-Carlo
step labels or outcomes (see :mod:`deliberate.rewards.likelihood`).

    deliberate train lprm --model runs/quickstart/sft/model --labels runs/labels --out runs/lprm
    deliberate train lprm --model smollm2 --labels runs/labels --target outcome --out runs/lorm-smollm2

``--model`` (alias ``--lm``) is a tiny checkpoint, an HF causal-LM directory, a ``.gguf`` file or ``smollm2``.
"""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import write_run_config
from deliberate.errors import DeliberateError
from deliberate.models.base import parse_kv
from deliberate.models.hf import ALIASES
from deliberate.rewards.likelihood import KIND, TARGETS, train_lprm
from deliberate.tasks import get_task


def add_arguments(parser) -> None:
    # dest stays "lm": config.yaml files written before --model existed keep rerunning
    parser.add_argument("--model", "--lm", dest="lm", required=True, metavar="MODEL",
                        help="the LM (kept frozen) whose log-probs are the features: a tiny checkpoint, an HF "
                             f"causal-LM directory, a .gguf file or {', '.join(ALIASES)}")
    parser.add_argument("--labels", required=True, help="labels.jsonl or a `deliberate label mc` output")
    parser.add_argument("--task", default="arith", help="the labels' task (its prompt format; default: arith)")
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task option (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--target", choices=TARGETS, default="step",
                        help="fit to every step's MC soft label (step: a PRM, `lprm:OUT`) or to each solution's "
                             "outcome from its last step (outcome: an ORM, `lorm:OUT`; select with aggregation=last)")
    parser.add_argument("--device", default="auto",
                        help="where an HF LM runs (auto: a CUDA GPU when there is one); a tiny LM runs on the CPU")
    parser.add_argument("--out", default="runs/lprm", help="output directory (default: runs/lprm)")


def main(args) -> int:
    set_threads(args.threads or None)
    if str(args.lm).strip().lower() not in ALIASES and not Path(args.lm).expanduser().exists():
        raise DeliberateError(f"--model {args.lm} does not exist (a tiny or HF checkpoint directory, a .gguf file, "
                              f"or {', '.join(ALIASES)})")
    task = get_task(args.task, **parse_kv(args.task_arg, "--task-arg"))
    cal = train_lprm(args.lm, args.labels, args.out, task=task, target=args.target, device=args.device)
    write_run_config(args.out, args)
    kind, what = KIND[args.target], "solution outcomes" if args.target == "outcome" else "labelled steps"
    print(f"{kind} written to {args.out}: weights {[round(v, 3) for v in cal['w']]}, bias {cal['b']:.3f}, "
          f"train BCE {cal['train_bce']:.4f} on {cal.get('n_steps', cal['n_solutions'])} {what}; use --verifier {kind}:{args.out}")
    return 0
