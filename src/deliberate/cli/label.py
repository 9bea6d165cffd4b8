"""``deliberate label``: step labels for PRMs: Monte-Carlo rollouts (``mc``), PRM800K ``export`` / ``import``
(see :mod:`deliberate.rewards.mc_labels`).

    deliberate label mc --model runs/quickstart/sft/model --task arith --out runs/labels
"""

from __future__ import annotations

import json
from pathlib import Path

from deliberate.cli.common import (
    add_backend_arguments,
    add_executor_arguments,
    backend_from_args,
    backend_spec_from_args,
    ray_options,
)
from deliberate.cli.config_file import add_flag, write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.errors import DeliberateError
from deliberate.executor import RayExecutor, WorkerSpec
from deliberate.rewards.mc_labels import (
    LABELS_FILE,
    MCConfig,
    check_resume,
    label_mc,
    read_labels,
    read_prm800k,
    write_prm800k,
)
from deliberate.tasks import get_task


#: ``deliberate label mc``'s flags: :class:`MCConfig`'s fields (its ``model`` is the backend's ``--model``)
MC_FLAGS = ConfigFlags(
    MCConfig,
    helps={"samples": "sampled solutions per problem", "rollouts": "rollouts per step prefix (k)",
           "task_options": "task option (repeatable)"},
    skip={"rollout_batch", "model"},
)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="label_command", metavar="SOURCE")
    mc = sub.add_parser("mc", help="Math-Shepherd Monte-Carlo step labels from policy rollouts",
                        description="Math-Shepherd Monte-Carlo step labels from policy rollouts")
    add_backend_arguments(mc)
    MC_FLAGS.add_to(mc)
    add_executor_arguments(mc)
    ex = sub.add_parser("export", help="write a labels file as PRM800K JSONL",
                        description="write a labels file as PRM800K JSONL")
    add_flag(ex, "labels", help="labels.jsonl or a `label mc` output directory")
    add_flag(ex, "--out", required=True, help="PRM800K JSONL file to write")
    im = sub.add_parser("import", help="convert PRM800K JSONL into a labels file for `train prm`",
                        description="convert PRM800K JSONL into a labels file for `train prm`")
    add_flag(im, "prm800k", help="PRM800K JSONL file")
    add_flag(im, "--out", required=True, help="labels JSONL file to write")
    add_flag(im, "--neutral", type=float, default=1.0, help="label of a rating-0 step (default 1.0)")


def main(args) -> int:
    cmd = getattr(args, "label_command", None)
    if cmd == "export":
        n = write_prm800k(read_labels(args.labels), args.out)
        print(f"wrote {n} PRM800K rows to {args.out}")
        return 0
    if cmd == "import":
        rows = read_prm800k(args.prm800k, neutral=args.neutral)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} label rows to {out}")
        return 0
    if cmd != "mc":
        raise DeliberateError("choose a label source: `deliberate label mc|export|import ...` (see --help)")
    cfg = MC_FLAGS.config(args, model=args.model)
    task = get_task(cfg.task, **cfg.task_options)
    task.problems(cfg.split, 1, cfg.seed)  # bad task options / split fail here, before a model loads
    check_resume(cfg)  # and so does an --out holding labels of a different config
    opts = ray_options(args)
    if opts is not None:
        name, kwargs = backend_spec_from_args(args)
        executor = RayExecutor(WorkerSpec(name, kwargs, cfg.task, dict(cfg.task_options)), **opts)
        try:
            meta = label_mc(cfg, task=task, executor=executor)
        finally:
            executor.close()
    else:
        backend = backend_from_args(args)
        meta = label_mc(cfg, backend, task=task)
    write_run_config(cfg.out, args)
    rows = read_labels(Path(cfg.out) / LABELS_FILE)
    n_steps = sum(len(r["steps"]) for r in rows)
    mean_soft = sum(sum(r["soft"]) for r in rows) / max(1, n_steps)
    comp = meta["compute"]
    print(f"{len(rows)} labelled solutions, {n_steps} steps (mean soft label {mean_soft:.3f}, "
          f"outcome rate {sum(bool(r['outcome']) for r in rows) / len(rows):.3f}); "
          f"{comp['generated_tokens']} generated tokens, {comp['wall_s']:.0f}s model time -> {cfg.out}")
    return 0
