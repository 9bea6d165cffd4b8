"""``deliberate suspects``: the four suspects of o1-style reasoning, plus plain GRPO, side by side.

    deliberate suspects                                  # seed model: runs/quickstart/sft/model
    deliberate suspects --init DIR --train-tflops 8 --out runs/suspects

From the same SFT seed policy, on the same task and training problems, each suspect improves the policy
under the same **train-compute budget** (``--train-tflops``, counted like every recipe: 6·N·tokens
trained + 2·N·tokens only run forward — sampled, prompt, scored):

* ``guess-check`` — ReST-EM: sample, keep what the checker accepts, fine-tune the seed, repeat;
* ``process-rewards`` — a PRM is trained first on Monte-Carlo step labels of the seed policy (its
  labelling and training compute count against the budget), then ReST-EM whose E-step is step-level
  beam search guided by that PRM;
* ``search`` — MCTS expert iteration (policy + PRM improved from the trees);
* ``correct`` — learning to correct: (wrong -> right) attempt pairs; one round (its compute is what
  one round costs, reported, not budgeted);
* ``grpo`` — RL with the checker as reward.

An iterative suspect stops at the first iteration boundary at or past the budget, so its last point can
overshoot it; the report gives each suspect's actual train compute. Every final policy is evaluated on
the same held-out problems at the same test-time budgets (greedy, maj@n and pass@n for n = 1..eval_n);
the corrector additionally with one revision vs one resample at equal tokens.

``OUT/<suspect>/`` holds each recipe's own run (resumable: rerunning the command skips what finished);
``OUT/summary.json`` the comparison; ``OUT/suspects.png`` the train-time curves (held-out accuracy vs
cumulative train FLOPs) beside the test-time curves (accuracy vs samples); ``OUT/report.html`` both
plus the tables, the config and the compute.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.models.tiny import TinyBackend
from deliberate.policy import FinetuneSettings
from deliberate.records import write_json_atomic
from deliberate.rewards.mc_labels import MCConfig, label_mc
from deliberate.train.grpo import GRPOConfig, run_grpo
from deliberate.train.mcts_ei import MCTSEIConfig, run_mcts_ei
from deliberate.train.rest_em import RestEMConfig, run_rest_em
from deliberate.train.self_correct import SelfCorrectConfig, run_self_correct
from deliberate.train.selfimprove import acc_cell, evaluate_policy, n_params_of
from deliberate.train.verifier import VerifierTrainConfig, train_verifier

SUSPECTS = ("guess-check", "process-rewards", "search", "correct", "grpo")


@dataclass(frozen=True)
class SuspectsConfig:
    init: str = "runs/quickstart/sft/model"
    task_options: dict[str, Any] = field(default_factory=lambda: {"min_ops": 1, "max_ops": 3, "max_operand": 15})
    suspects: tuple[str, ...] = SUSPECTS
    train_tflops: float = 6.0  # per suspect
    n_train: int = 1000  # training problems (the same list for every suspect)
    k: int = 8  # samples (ReST-EM) / beams (PRM-guided E-step) per problem
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=4.0))
    mcts_n: int = 16
    prm_steps: int = 100
    label_problems: int = 200  # process-rewards: problems labelled by Monte-Carlo rollouts for its PRM
    label_rollouts: int = 4
    grpo_steps: int = 200  # an upper bound; the budget stops it first
    grpo_eval_every: int = 10
    eval_problems: int = 200
    eval_n: int = 16
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/suspects"

    def __post_init__(self) -> None:
        bad = [s for s in self.suspects if s not in SUSPECTS]
        problems = [f"unknown suspect(s) {', '.join(bad)}; valid: {', '.join(SUSPECTS)}"] if bad else []
        if not self.suspects:
            problems.append("name at least one suspect")
        if not (self.train_tflops > 0):
            problems.append(f"train_tflops must be > 0 (got {self.train_tflops!r})")
        for name in ("n_train", "k", "mcts_n", "prm_steps", "label_problems", "label_rollouts", "grpo_steps",
                     "grpo_eval_every", "eval_problems", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneSettings(**self.finetune))
        object.__setattr__(self, "suspects", tuple(self.suspects))
        if problems:
            raise DeliberateError("suspects: " + "; ".join(problems))

    @property
    def budget(self) -> float:
        return self.train_tflops * 1e12


# --------------------------------------------------------------------------------------------
# the suspects: each returns its train-time curve (rows with cum_flops and eval) and final eval dir
# --------------------------------------------------------------------------------------------

def _common(cfg: SuspectsConfig, name: str) -> dict[str, Any]:
    return {"init": cfg.init, "task_options": cfg.task_options, "eval_problems": cfg.eval_problems,
            "eval_n": cfg.eval_n, "eval_seed": cfg.eval_seed, "seed": cfg.seed, "out": str(Path(cfg.out) / name)}


def _curve(rows: list[dict], offset: float = 0.0) -> list[dict]:
    return [{"iteration": r["iteration"], "cum_flops": r["cum_flops"] + (offset if r["iteration"] else 0.0),
             "cum_tokens_trained": r["cum_tokens_trained"], "eval": r["eval"]} for r in rows]


def _guess_check(cfg: SuspectsConfig, progress: bool) -> tuple[list[dict], Path, dict]:
    rc = RestEMConfig(**_common(cfg, "guess-check"), iterations=20, n_train=cfg.n_train, k=cfg.k, keep="outcome",
                      finetune=cfg.finetune, max_train_flops=cfg.budget)
    rows = run_rest_em(rc, progress=progress)["iterations"]
    return _curve(rows), Path(rc.out) / f"it{rows[-1]['iteration']:03d}" / "eval", {}


def _process_rewards(cfg: SuspectsConfig, progress: bool) -> tuple[list[dict], Path, dict]:
    out = Path(cfg.out) / "process-rewards"
    mc = MCConfig(task="arith", task_options=cfg.task_options, n_problems=cfg.label_problems, samples=4,
                  rollouts=cfg.label_rollouts, seed=cfg.seed + 7, model=cfg.init, out=str(out / "labels"))
    backend = TinyBackend(cfg.init)
    try:
        meta = label_mc(mc, backend, progress=progress)
    finally:
        backend.close()
    vc = VerifierTrainConfig(kind="prm", labels=str(out / "labels"), task="arith", task_options=cfg.task_options,
                             init_from=cfg.init, steps=cfg.prm_steps, seed=cfg.seed, out=str(out / "prm"))
    prm = train_verifier(vc, progress=progress)
    n = n_params_of(cfg.init)
    spent = meta["compute"]
    prm_trained = json.loads((out / "prm" / "metrics.json").read_text())["compute"]["tokens_trained"]
    prm_flops = 2.0 * n * (spent["generated_tokens"] + spent["prompt_tokens"]) + 6.0 * n * prm_trained
    rc = RestEMConfig(**{**_common(cfg, "process-rewards"), "out": str(out / "rest-em")}, iterations=20,
                      n_train=cfg.n_train, k=cfg.k, e_step="beam", prm=str(prm), keep="outcome", finetune=cfg.finetune,
                      max_train_flops=max(1.0, cfg.budget - prm_flops))
    rows = run_rest_em(rc, progress=progress)["iterations"]
    return (_curve(rows, prm_flops), out / "rest-em" / f"it{rows[-1]['iteration']:03d}" / "eval",
            {"prm_flops": prm_flops, "label_rows": meta.get("rows"), "prm": str(prm)})


def _search(cfg: SuspectsConfig, progress: bool) -> tuple[list[dict], Path, dict]:
    mc = MCTSEIConfig(**_common(cfg, "search"), iterations=20, n_train=cfg.n_train, mcts_n=cfg.mcts_n,
                      finetune=cfg.finetune, prm_steps=cfg.prm_steps, eval_mcts_n=0, max_train_flops=cfg.budget)
    rows = run_mcts_ei(mc, progress=progress)["iterations"]
    return _curve(rows), Path(mc.out) / f"it{rows[-1]['iteration']:03d}" / "eval", {}


def _correct(cfg: SuspectsConfig, progress: bool) -> tuple[list[dict], Path, dict]:
    c = _common(cfg, "correct")
    sc = SelfCorrectConfig(init=c["init"], task_options=cfg.task_options, n_train=cfg.n_train, k=4,
                           finetune=replace(cfg.finetune, epochs=3.0), eval_problems=cfg.eval_problems,
                           eval_seed=cfg.eval_seed, seed=cfg.seed, out=c["out"])
    s = run_self_correct(sc, progress=progress)
    out = Path(c["out"])
    seed_eval = evaluate_policy(cfg.init, "arith", cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                                seed=cfg.eval_seed, out_dir=out / "eval_seed")
    ev = evaluate_policy(out / "corrector" / "model", "arith", cfg.task_options, n_problems=cfg.eval_problems,
                         n=cfg.eval_n, seed=cfg.eval_seed, out_dir=out / "eval_policy")
    comp = s["compute"]
    rows = [{"iteration": 0, "cum_flops": 0.0, "cum_tokens_trained": 0, "eval": seed_eval},
            {"iteration": 1, "cum_flops": comp["flops"], "cum_tokens_trained": comp["tokens_trained"], "eval": ev}]
    e = s["eval"]
    extra = {"revision": {k: {"fixed": e[k]["fixed"], "accuracy": e[k]["accuracy"],
                              "accuracy_ci": e[k]["accuracy_ci"]} for k in ("revise", "resample")},
             "first_attempt_accuracy": e["first_attempt_accuracy"]}
    return rows, out / "eval_policy", extra


def _grpo(cfg: SuspectsConfig, progress: bool) -> tuple[list[dict], Path, dict]:
    gc = GRPOConfig(**_common(cfg, "grpo"), n_train=cfg.n_train, steps=cfg.grpo_steps,
                    eval_every=cfg.grpo_eval_every, checkpoint_every=cfg.grpo_eval_every,
                    max_train_flops=cfg.budget)
    rows = run_grpo(gc, progress=progress)["iterations"]
    return _curve(rows), Path(gc.out) / f"eval{rows[-1]['iteration']:03d}" / "eval", {"steps": rows[-1].get("step")}


RUNNERS = {"guess-check": _guess_check, "process-rewards": _process_rewards, "search": _search,
           "correct": _correct, "grpo": _grpo}


# --------------------------------------------------------------------------------------------
# the whole comparison
# --------------------------------------------------------------------------------------------

def _test_time(eval_dir: Path) -> dict[str, list[dict]]:
    s = json.loads((eval_dir / "summary.json").read_text())
    out: dict[str, list[dict]] = {"greedy": [], "maj": [], "pass": []}
    for r in s["results"]:
        key = {"greedy": "greedy", "maj@k": "maj", "pass@k": "pass"}.get(r["strategy"])
        if key:
            out[key].append({"n": r["n"], "accuracy": r["accuracy"], "ci": r["ci"],
                             "generated_tokens": r.get("generated_tokens")})
    return out


def run_suspects(cfg: SuspectsConfig, progress: bool = True) -> dict[str, Any]:
    if not Path(cfg.init).exists():
        raise DeliberateError(f"--init {cfg.init} does not exist (train a seed model first: `deliberate quickstart` "
                              f"writes runs/quickstart/sft/model)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = json.loads(json.dumps(asdict(cfg)))
    p = out / "config.json"
    if p.exists() and json.loads(p.read_text()) != cfg_dict:
        raise DeliberateError(f"{out} holds a suspects run with a different config; use another --out or delete it")
    write_json_atomic(p, cfg_dict)
    results: dict[str, Any] = {}
    for name in cfg.suspects:
        done = out / name / "suspect.json"
        if done.exists():
            results[name] = json.loads(done.read_text())
            continue
        tqdm.write(f"suspects: {name}")
        t0 = time.perf_counter()
        curve, eval_dir, extra = RUNNERS[name](cfg, progress)
        res = {"curve": curve, "train_flops": curve[-1]["cum_flops"], "final": curve[-1]["eval"],
               "test_time": _test_time(eval_dir), "eval_dir": str(eval_dir), **extra,
               "wall_s": round(time.perf_counter() - t0, 1)}
        write_json_atomic(done, res)
        results[name] = res
    summary = {"config": cfg_dict, "budget_flops": cfg.budget, "suspects": results}
    write_json_atomic(out / "summary.json", summary)
    plot_suspects(summary, out / "suspects.png")
    write_report(summary, out / "report.html", out / "suspects.png")
    return summary


def plot_suspects(summary: dict[str, Any], path: Path) -> None:
    import matplotlib  # lazy: matplotlib, only this plot needs it and `deliberate --help` imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after use("Agg"), so pyplot never picks a display backend

    n = summary["config"]["eval_n"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in summary["suspects"].items():
        xs = [max(c["cum_flops"], 1.0) / 1e12 for c in r["curve"]]
        ys = [c["eval"]["greedy"]["accuracy"] for c in r["curve"]]
        line, = a.plot(xs, ys, marker="o", label=f"{name} greedy")
        ys = [c["eval"].get(f"maj@{n}", {}).get("accuracy") for c in r["curve"]]
        a.plot(xs, ys, marker="s", ls="--", color=line.get_color(), alpha=0.6, label=f"{name} maj@{n}")
        tt = r["test_time"]
        b.errorbar([c["n"] for c in tt["maj"]], [c["accuracy"] for c in tt["maj"]],
                   yerr=[[c["accuracy"] - c["ci"][0] for c in tt["maj"]], [c["ci"][1] - c["accuracy"] for c in tt["maj"]]],
                   marker="o", capsize=3, color=line.get_color(), label=f"{name} maj@n")
        b.plot([c["n"] for c in tt["pass"]], [c["accuracy"] for c in tt["pass"]], ls=":", color=line.get_color(),
               alpha=0.7)
    a.axvline(summary["budget_flops"] / 1e12, color="grey", lw=0.8)
    a.set_xlabel("cumulative train TFLOPs (6ND trained + 2ND forward)")
    a.set_ylabel("held-out accuracy")
    a.set_title("train time: accuracy vs train compute")
    a.legend(fontsize=7)
    b.set_xscale("log", base=2)
    b.set_xlabel("samples per problem n (dotted: pass@n)")
    b.set_ylabel("held-out accuracy")
    b.set_title("test time: final policies, maj@n")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    n = summary["config"]["eval_n"]
    keys = ("greedy", f"maj@{n}", f"pass@{n}")
    lines = [f"{'suspect':16s} {'train TFLOPs':>12} " + " ".join(f"{k:>19}" for k in keys) + f" {'wall s':>7}"]
    seed_ev = next(iter(summary["suspects"].values()))["curve"][0]["eval"]
    cells = [acc_cell(seed_ev.get(k)) for k in keys]
    lines.append(f"{'(seed policy)':16s} {0:>12.2f} " + " ".join(f"{c:>19}" for c in cells))
    for name, r in summary["suspects"].items():
        ev = r["final"]
        cells = [acc_cell(ev.get(k)) for k in keys]
        lines.append(f"{name:16s} {r['train_flops'] / 1e12:>12.2f} " + " ".join(f"{c:>19}" for c in cells)
                     + f" {r['wall_s']:>7.0f}")
    return "\n".join(lines)


def write_report(summary: dict[str, Any], path: Path, png: Path) -> None:
    img = base64.b64encode(png.read_bytes()).decode()
    rev = ""
    c = summary["suspects"].get("correct")
    if c and "revision" in c:
        r = c["revision"]
        rev = (f"<h2>Learning to correct: second attempt at equal tokens</h2><p>(The table's <code>correct</code> row "
               f"is the corrector used as a first-attempt policy; this is its use as a reviser.) First attempt accuracy "
               f"{c['first_attempt_accuracy']:.3f}; revise: accuracy {r['revise']['accuracy']:.3f} (fixed "
               f"{r['revise']['fixed']:.3f} of wrong first attempts); resample: accuracy "
               f"{r['resample']['accuracy']:.3f} (fixed {r['resample']['fixed']:.3f})</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>deliberate suspects</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}pre{{background:#f4f4f4;padding:1em}}</style>
</head><body><h1>The suspects, side by side</h1>
<p>Same seed policy, same training problems, train-compute budget {summary['budget_flops'] / 1e12:.2f} TFLOPs per
suspect. Left: held-out accuracy against cumulative train compute; right: the final policies at test-time
budgets n (maj@n with 95% CIs, pass@n dotted).</p>
<img src="data:image/png;base64,{img}" style="width:100%">
<h2>Final policies</h2><pre>{html.escape(format_table(summary))}</pre>
<p>Wall time of all suspects: {sum(r['wall_s'] for r in summary['suspects'].values()):.0f} s.</p>{rev}
<h2>Config</h2><pre>{html.escape(json.dumps(summary['config'], indent=2))}</pre>
</body></html>"""
    path.write_text(page)

