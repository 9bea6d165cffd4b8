"""MCTS expert iteration: search with the current policy + PRM, train both on what the trees found.

    deliberate train mcts-ei --model runs/quickstart/sft/model --out runs/mcts-ei

The AlphaZero loop, as the LLM papers run it (ReST-MCTS*, Zhang et al. 2024; AlphaMath, Chen et al.
2024; "Toward Self-Improvement of LLMs via Imagination, Searching, and Criticizing", Tian et al.
2024). Iteration t:

* **Search** — MCTS (PUCT over whole steps; :mod:`deliberate.search.mcts`) on each of ``n_train``
  training problems with the policy of iteration t-1 (the seed policy for t = 1). The value of a new
  node is the **PRM** of iteration t-1 (``value=prm``). Before any PRM exists (t = 1 without
  ``--prm-init``), or with ``value=rollout``, a node is valued by one rollout from it scored by the
  task's **outcome checker** against the training problem's gold answer (the AlphaZero terminal
  reward; no step-level ground truth is used anywhere).
* **Step values from the tree** — every finished solution the tree holds (its terminal nodes and
  rollouts) is checked against the gold answer; the soft label of a step prefix is the fraction of
  the finished solutions *through that prefix* that are correct (a Monte-Carlo value estimate from
  the tree's own statistics, the Math-Shepherd label without extra rollouts), the hard label whether
  any is. They are written as ``labels.jsonl`` in the :mod:`deliberate.rewards.mc_labels` format.
* **Policy** — fine-tuned **from the seed policy** (as in ReST-EM, so iterations do not drift) on the
  verified solutions the trees found (at most ``max_per_problem`` distinct ones per problem).
* **PRM** — trained from the seed policy's weights (``deliberate train prm``'s recipe) on the step
  labels of all iterations so far.
* **Evaluation** on held-out problems: the policy alone (greedy / maj@n / pass@n) and, with
  ``eval_mcts_n > 0``, MCTS with this iteration's policy + PRM at that many MCTS iterations.

Compute per iteration: tokens sampled in search, prompt tokens prefilled (after the engine's prefix
cache; the tokens sent are recorded too), PRM tokens scored, policy and PRM tokens trained; FLOPs = 6·N·trained + 2·N·forward. Resume: search results are appended per
batch of problems (a rerun skips finished batches and reproduces an interrupted one exactly: each
batch's seed is fixed), fine-tuning and PRM training resume or skip like their recipes, and a
finished iteration (``OUT/iterations/NNN.json``) is never redone.

``--model`` (alias ``--init``) is any policy (:func:`deliberate.policy.load_policy`): a tiny checkpoint,
an HF checkpoint directory or ``smollm2``; the search samples through its backend (chat template for
instruct models) and the policy fine-tunes through :meth:`Policy.finetune` (give HF models an HF-sized
step: ``--lr 1e-5 --batch-size 8 --warmup 0``, and the PRM one: ``--prm-lr 1e-5 --prm-batch-size 8``).
Each iteration's PRM trains from ``--prm-init-from`` (default: ``--model``; any model ``deliberate train prm``
takes: an HF one becomes a token classifier with a fresh head), reading the policy's steps as text; its
FLOPs are counted with the policy's parameter count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci
from deliberate.records import write_json_atomic
from deliberate.policy import FinetuneSettings, Policy, load_policy
from deliberate.rewards.base import get_verifier
from deliberate.rewards.oracle import OutcomeVerifier
from deliberate.search.base import SearchSettings
from deliberate.tasks import get_task
from deliberate.train.common import PolicyRecipeConfig
from deliberate.train.selfimprove import (
    IterationLog,
    Stopwatch,
    evaluate_policy,
    plot_curve,
    search_solutions,
    start_run,
    switch,
)
from deliberate.train.verifier import VerifierTrainConfig, train_verifier
from deliberate.types import Problem

VALUES = ("prm", "rollout")


@dataclass(frozen=True)
class MCTSEIConfig(PolicyRecipeConfig):
    iterations: int = 2
    n_train: int = 2000
    mcts_n: int = 16  # MCTS iterations (selection-expansion-evaluation-backup rounds) per training problem
    expansions: int = 4  # children sampled per expanded node
    mcts_c: float = 1.0
    value: str = "prm"  # prm (the previous iteration's PRM; rollouts until one exists) | rollout
    prm_init: str | None = None  # a PRM to value nodes with in iteration 1 (else rollouts)
    prm_init_from: str | None = None  # the model every PRM trains from (None: init)
    temperature: float = 1.0
    max_per_problem: int = 4
    batch_problems: int = 64
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=4.0))
    prm_steps: int = 300
    prm_lr: float = 1e-3
    prm_batch_size: int = 64
    eval_problems: int = 200
    eval_n: int = 16
    eval_mcts_n: int = 8  # 0: no MCTS evaluation
    max_train_flops: float | None = None  # stop iterating once the cumulative train FLOPs reach this
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/mcts-ei"

    def __post_init__(self) -> None:
        problems = []
        for name in ("iterations", "n_train", "mcts_n", "expansions", "max_per_problem", "batch_problems",
                     "prm_steps", "prm_batch_size", "eval_problems", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not isinstance(self.eval_mcts_n, int) or self.eval_mcts_n < 0:
            problems.append(f"eval_mcts_n must be an integer >= 0 (got {self.eval_mcts_n!r})")
        if self.value not in VALUES:
            problems.append(f"value must be one of {', '.join(VALUES)} (got {self.value!r})")
        for name in ("prm_init", "prm_init_from"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).exists():
                problems.append(f"{name} {getattr(self, name)} does not exist")
        if not (self.temperature > 0):
            problems.append(f"temperature must be > 0 (got {self.temperature!r})")
        if not (self.mcts_c >= 0):
            problems.append(f"mcts_c must be >= 0 (got {self.mcts_c!r})")
        if self.max_train_flops is not None and not self.max_train_flops > 0:
            problems.append(f"max_train_flops must be > 0 (got {self.max_train_flops!r})")
        if not (0 < self.prm_lr < 1):
            problems.append(f"prm_lr must be in (0, 1) (got {self.prm_lr!r})")
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneSettings(**self.finetune))
        if problems:
            raise DeliberateError("mcts-ei: " + "; ".join(problems))


def search_settings(cfg: MCTSEIConfig, n: int, value: str) -> SearchSettings:
    return SearchSettings(n=n, expansions=cfg.expansions, mcts_c=cfg.mcts_c, mcts_value=value, aggregation="last",
                          temperature=cfg.temperature)


def tree_labels(row: dict) -> list[dict]:
    """Step labels from one problem's finished solutions: the soft label of a prefix is the fraction of
    solutions through it that are correct, the hard label whether any is (label-row format)."""
    sols = row["solutions"]
    through: dict[tuple[str, ...], list[bool]] = {}
    for s in sols:
        for i in range(len(s["steps"])):
            through.setdefault(tuple(s["steps"][:i + 1]), []).append(s["correct"])
    out = []
    for j, s in enumerate(sols):
        vals = [through[tuple(s["steps"][:i + 1])] for i in range(len(s["steps"]))]
        out.append({"problem_id": row["problem_id"], "index": j, "question": row["question"], "gold": row["gold"],
                    "steps": s["steps"], "answer": s["answer"], "outcome": s["correct"],
                    "soft": [sum(v) / len(v) for v in vals], "hard": [float(any(v)) for v in vals]})
    return out


def write_labels(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(path)


def mcts_eval(task, cfg: MCTSEIConfig, policy: Policy, prm: Path, d: Path, progress: bool) -> dict[str, Any]:
    test = task.problems("test", cfg.eval_problems, seed=cfg.eval_seed)
    ver = get_verifier(f"prm:{prm}", task=task)
    rows = search_solutions(task, test, policy, ver, "mcts", search_settings(cfg, cfg.eval_mcts_n, "prm"),
                            d / "eval_mcts.jsonl", cfg.eval_seed, cfg.batch_problems, progress=progress,
                            desc="MCTS eval")
    xs = [float(r["correct"]) for r in rows]
    acc = sum(xs) / len(xs)
    return {"accuracy": acc, "ci": list(bootstrap_ci(xs, seed=cfg.eval_seed)),
            "generated_tokens": sum(r["generated_tokens"] for r in rows)}


def run_mcts_ei(cfg: MCTSEIConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    base = load_policy(cfg.init, chat=cfg.chat)
    try:
        prm_from = cfg.prm_init_from if cfg.prm_init_from is not None else str(cfg.init)
        return _run(cfg, out, cfg_dict, base, prm_from, progress)
    finally:
        base.close()


def _run(cfg: MCTSEIConfig, out: Path, cfg_dict: dict[str, Any], base: Policy, prm_from: str,
         progress: bool) -> dict[str, Any]:
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    log = IterationLog(out, base.n_params)
    mcts_key = f"mcts@{cfg.eval_mcts_n}"

    def evaluate(policy: Policy, d: Path) -> dict[str, Any]:
        return evaluate_policy(policy, cfg.task, cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                               seed=cfg.eval_seed, out_dir=d / "eval", task_obj=task)

    def at(model: str | Path) -> Policy:
        return base if Path(model) == base.path else base.with_checkpoint(model)

    if log.done(0) is None:
        clock = Stopwatch()
        ev = evaluate(base, out / "it000")
        if cfg.eval_mcts_n and cfg.prm_init:
            ev[mcts_key] = mcts_eval(task, cfg, base, Path(cfg.prm_init), out / "it000", progress)
        log.write(0, {"model": str(cfg.init), "prm": cfg.prm_init, "tokens_sampled": 0, "prompt_tokens": 0,
                      "tokens_trained": 0, "eval": ev, "wall_s": 0.0, "eval_wall_s": clock()})
    policy, prm = base, (Path(cfg.prm_init) if cfg.prm_init else None)
    label_files: list[Path] = []
    bar = tqdm(range(1, cfg.iterations + 1), desc="mcts-ei", disable=not progress, dynamic_ncols=True)
    for it in bar:
        d = out / f"it{it:03d}"
        label_files.append(d / "labels.jsonl")
        row = log.done(it)
        if row is not None:
            policy, prm = switch(policy, at(row["model"]), base), Path(row["prm"])
            continue
        if cfg.max_train_flops is not None and log.spent_flops() >= cfg.max_train_flops:
            tqdm.write(f"mcts-ei: train-compute budget reached ({cfg.max_train_flops:.3g} FLOPs); stopping "
                       f"before iteration {it}")
            label_files.pop()
            break
        d.mkdir(parents=True, exist_ok=True)
        clock = Stopwatch()
        use_prm = cfg.value == "prm" and prm is not None
        verifier = get_verifier(f"prm:{prm}", task=task) if use_prm else OutcomeVerifier(task)
        rows = search_solutions(task, train, policy, verifier, "mcts",
                                search_settings(cfg, cfg.mcts_n, "prm" if use_prm else "rollout"),
                                d / "search.jsonl", cfg.seed * 1000 + it, cfg.batch_problems, progress=progress,
                                desc=f"MCTS {it}")
        t_search = clock()
        labels = [lr for r in rows for lr in tree_labels(r)]
        write_labels(d / "labels.jsonl", labels)
        pairs, solved = [], 0
        for r in rows:
            good = [s for s in r["solutions"] if s["correct"]][:cfg.max_per_problem]
            solved += bool(good)
            # the text the model was given (chat template applied), so the policy trains on what it saw
            prompt = policy.training_prompt(task.prompt(problem_of(r)))
            pairs += [(prompt, "\n".join(s["steps"])) for s in good]
        if pairs:
            res = base.finetune(pairs, d, cfg.finetune, seed=cfg.seed * 1000 + it, progress=progress,
                                desc=f"policy {it}")
            model_dir, trained = res.model_dir, res.tokens_trained
        else:
            tqdm.write(f"mcts-ei: iteration {it}: the trees found no verified solution; keeping the policy")
            model_dir, trained = policy.path, 0
        all_labels = [json.loads(x) for f in label_files for x in f.read_text().splitlines() if x.strip()]
        write_labels(d / "prm_labels.jsonl", all_labels)
        vcfg = VerifierTrainConfig(kind="prm", labels=str(d / "prm_labels.jsonl"), task=cfg.task,
                                   task_options=cfg.task_options, init_from=prm_from, steps=cfg.prm_steps,
                                   batch_size=cfg.prm_batch_size, lr=cfg.prm_lr, seed=cfg.seed * 1000 + it,
                                   checkpoint_every=max(1, cfg.prm_steps // 3), out=str(d / "prm"))
        prm_dir = train_verifier(vcfg, progress=progress)
        prm_metrics = json.loads((d / "prm" / "metrics.json").read_text())
        prm_trained = int(prm_metrics["compute"]["tokens_trained"])
        t_train = clock() - t_search
        policy = switch(policy, at(model_dir), base)
        ev = evaluate(policy, d)
        if cfg.eval_mcts_n:
            ev[mcts_key] = mcts_eval(task, cfg, policy, prm_dir, d, progress)
        n_sol = sum(len(r["solutions"]) for r in rows)
        row = log.write(it, {
            "model": str(model_dir), "prm": str(prm_dir),
            "tokens_sampled": sum(r["generated_tokens"] for r in rows),
            "prompt_tokens": int(sum(r.get("prefill_tokens", r["prompt_tokens"]) for r in rows)),
            "prompt_tokens_sent": sum(r["prompt_tokens"] for r in rows),
            "tokens_forward": int(sum(r["verifier_tokens"] for r in rows)),
            "tokens_trained": trained + prm_trained, "policy_tokens_trained": trained,
            "prm_tokens_trained": prm_trained, "kept": len(pairs), "problems_solved": solved,
            "search_accuracy": sum(r["correct"] for r in rows) / len(rows),
            "solutions_in_trees": n_sol, "correct_in_trees": sum(s["correct"] for r in rows for s in r["solutions"]),
            "labelled_solutions": len(all_labels), "prm_val": {k: prm_metrics.get(k) for k in prm_metrics
                                                              if k.startswith("val")},
            "value": "prm" if use_prm else "rollout", "search_wall_s": t_search, "train_wall_s": round(t_train, 3),
            "wall_s": round(t_search + t_train, 3), "eval": ev,
            "eval_wall_s": round(clock() - t_search - t_train, 3)})
        bar.set_postfix(greedy=f"{ev['greedy']['accuracy']:.3f}", kept=len(pairs))
        prm = prm_dir
    switch(policy, base, base)
    bar.close()
    rows = log.cumulative()
    summary = {"recipe": "mcts-ei", "config": cfg_dict, "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    keys = ("greedy", f"maj@{cfg.eval_n}") + ((mcts_key,) if cfg.eval_mcts_n else ())
    plot_curve(rows, out / "curve.png", f"MCTS expert iteration on {cfg.task}", keys=keys)
    return summary


def problem_of(r: dict) -> Problem:
    return Problem(id=r["problem_id"], question=r["question"], answer=r["gold"])
