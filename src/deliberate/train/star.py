"""STaR — Self-Taught Reasoner (Zelikman et al., 2022), with and without rationalization.

    deliberate train star --out runs/star                 # with rationalization
    deliberate train star --no-rationalize --out runs/star-norat

The paper's setting, on ``addition`` with the tiny model:

* **Seed.** A tiny model trained from scratch on gold scratchpads of *short* sums (``seed_digits``,
  default 1-3 digits); a fraction of its examples carry the answer as a hint in the question
  (``Q: a+b (hint: s)``), so the model learns what a hint is — the role few-shot prompting plays for
  the paper's GPT-J.
* **Iteration t.** The policy M_{t-1} (the seed for t = 1) writes a rationale for each training
  problem (``train_digits``, default 1-5 digits; greedy). Correct ones are kept. With
  **rationalization**, every problem it got wrong is asked again *with the answer as a hint*; a
  rationale that then reaches the answer is kept too, with the hint removed from its prompt. M_t is
  fine-tuned **from the seed** on everything kept (the paper restarts from the base model each
  iteration, with 20% more steps each time).
* **Eval.** Greedy accuracy on held-out problems of each digit count in ``eval_digits`` (no hints).

The finding to reproduce: with rationalization the model reaches a given accuracy on the longer sums
in fewer iterations than without. Per-iteration rows with compute (tokens sampled / trained, FLOPs) go
to ``OUT/iterations/``; ``OUT/summary.json`` and ``OUT/curve.png`` hold the curves. Finished
iterations are not redone; an interrupted one is redone from its saved samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci
from deliberate.eval.records import write_json_atomic
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.tasks import get_task
from deliberate.train.selfimprove import (
    FinetuneSettings,
    IterationLog,
    Stopwatch,
    add_config_arguments,
    cached_rollouts,
    config_from_args,
    finetune,
    load_sampler,
    n_params_of,
    rollouts,
    sampled_tokens,
    save_model,
    start_run,
)


def hinted(prompt: str, answer: str) -> str:
    """``Q: <question>\\nA:\\n`` -> ``Q: <question> (hint: <answer>)\\nA:\\n``."""
    head, sep, tail = prompt.partition("\nA:")
    if not sep:
        raise DeliberateError(f"cannot place a hint in prompt {prompt!r} (expected the 'Q: ...\\nA:' format)")
    return f"{head} (hint: {answer}){sep}{tail}"


@dataclass(frozen=True)
class StarConfig:
    task: str = "addition"
    seed_digits: str = "1-3"
    # a few gold examples of the longer sums, so the seed is weak but not at zero there (the paper's
    # few-shot GPT-J also starts with some accuracy at every digit count; without any, neither variant
    # can get off the ground: a tiny transformer does not extrapolate to unseen lengths)
    seed_long_digits: str = "4-5"
    seed_long_examples: int = 200
    train_digits: str = "1-5"
    eval_digits: tuple[int, ...] = (3, 4, 5)
    rationalize: bool = True
    iterations: int = 6
    n_train: int = 2000
    seed_examples: int = 6000
    seed_hint_fraction: float = 0.5
    # fraction of the long seed examples that carry the hint too: a seed that has seen hints only on sums
    # it can do anyway learns to ignore them, and then rationalization rescues nothing
    seed_long_hint_fraction: float = 0.0
    # rationalization attempts per failed problem: 1 = one greedy try; more = that many samples at
    # rationalize_temperature, the first correct one kept
    rationalize_samples: int = 1
    rationalize_temperature: float = 0.7
    seed_sft: FinetuneSettings = field(
        default_factory=lambda: FinetuneSettings(steps=500, lr=3e-3, warmup=50))
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=3.0, lr=3e-3, warmup=20))
    step_growth: float = 1.2  # the paper's 20% more training steps per outer iteration
    model: TinyConfig = field(default_factory=TinyConfig)
    eval_problems: int = 100
    seed: int = 0
    out: str = "runs/star"

    def __post_init__(self) -> None:
        for name in ("seed_sft", "finetune"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, FinetuneSettings(**getattr(self, name)))
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", TinyConfig(**self.model))
        object.__setattr__(self, "eval_digits", tuple(self.eval_digits))
        problems = []
        if not isinstance(self.seed_long_examples, int) or self.seed_long_examples < 0:
            problems.append(f"seed_long_examples must be an integer >= 0 (got {self.seed_long_examples!r})")
        for name in ("iterations", "n_train", "seed_examples", "eval_problems", "rationalize_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        for name in ("seed_hint_fraction", "seed_long_hint_fraction"):
            if not (0 <= getattr(self, name) <= 1):
                problems.append(f"{name} must be in [0, 1] (got {getattr(self, name)!r})")
        if not self.rationalize_temperature > 0:
            problems.append(f"rationalize_temperature must be > 0 (got {self.rationalize_temperature!r})")
        if not self.eval_digits:
            problems.append("eval_digits must name at least one digit count")
        if problems:
            raise DeliberateError("star: " + "; ".join(problems))


def build_seed(cfg: StarConfig, out: Path, progress: bool) -> tuple[Path, int]:
    """The seed policy: a fresh tiny model fine-tuned on short gold scratchpads, some of them hinted."""
    init = out / "seed" / "init"
    if not (init / "char_tokenizer.json").exists():
        tok = CharTokenizer()
        save_model(build_tiny_model(cfg.model, tok, seed=cfg.seed), tok, init)
    task = get_task(cfg.task, digits=cfg.seed_digits)
    probs = task.problems("train", cfg.seed_examples, seed=10_000 + cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    hint = (torch.rand(len(probs), generator=g) < cfg.seed_hint_fraction).tolist()
    pairs = [(hinted(task.prompt(p), p.answer) if h else task.prompt(p), task.rationale(p)) for p, h in zip(probs, hint)]
    if cfg.seed_long_examples:
        long_task = get_task(cfg.task, digits=cfg.seed_long_digits)
        longs = long_task.problems("train", cfg.seed_long_examples, seed=20_000 + cfg.seed)
        g_long = torch.Generator().manual_seed(30_000 + cfg.seed)
        hint = (torch.rand(len(longs), generator=g_long) < cfg.seed_long_hint_fraction).tolist()
        pairs += [(hinted(long_task.prompt(p), p.answer) if h else long_task.prompt(p), long_task.rationale(p))
                  for p, h in zip(longs, hint)]
    return finetune(init, pairs, out / "seed", cfg.seed_sft, seed=cfg.seed, progress=progress, desc="seed SFT")


def eval_by_digits(model_dir: Path, cfg: StarConfig) -> dict[str, Any]:
    model, tok = load_sampler(model_dir, what="star eval")
    res = {}
    for d in cfg.eval_digits:
        task = get_task(cfg.task, digits=str(d))
        probs = task.problems("test", cfg.eval_problems, seed=cfg.seed)
        rows = rollouts(model, tok, task, probs, 1, temperature=0.0, progress=False)
        v = [float(rs[0].correct) for rs in rows]
        res[str(d)] = {"accuracy": sum(v) / len(v), "ci": list(bootstrap_ci(v)), "n": len(v)}
    return res


def run_star(cfg: StarConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    clock = Stopwatch()
    seed_dir, seed_tokens = build_seed(cfg, out, progress)
    log = IterationLog(out, n_params_of(seed_dir))
    if log.done(0) is None:
        t_train = clock()
        log.write(0, {"model": str(seed_dir), "tokens_sampled": 0, "tokens_trained": seed_tokens,
                      "eval": eval_by_digits(seed_dir, cfg), "wall_s": t_train})
    task = get_task(cfg.task, digits=cfg.train_digits)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    policy = seed_dir
    bar = tqdm(range(1, cfg.iterations + 1), desc="star" + ("" if cfg.rationalize else " (no rationalization)"),
               disable=not progress, dynamic_ncols=True)
    for it in bar:
        row = log.done(it)
        if row is not None:
            policy = Path(row["model"])
            continue
        d = out / f"it{it:03d}"
        d.mkdir(parents=True, exist_ok=True)
        clock = Stopwatch()
        model, tok = load_sampler(policy, what="star rationales")
        rows = cached_rollouts(d / "samples.jsonl", lambda m=model, t=tok, it=it: rollouts(
            m, t, task, train, 1, temperature=0.0, progress=progress, desc=f"rationales {it}"))
        gen, prompt = sampled_tokens(rows)
        pairs = [(rs[0].prompt, rs[0].text) for rs in rows if rs[0].correct]
        n_direct = len(pairs)
        n_rat = 0
        if cfg.rationalize:
            failed = [i for i, rs in enumerate(rows) if not rs[0].correct]
            k = cfg.rationalize_samples
            rat = cached_rollouts(d / "rationalized.jsonl", lambda m=model, t=tok, it=it, failed=failed, k=k: rollouts(
                m, t, task, [train[i] for i in failed], k, temperature=0.0 if k == 1 else cfg.rationalize_temperature,
                seed=cfg.seed * 1000 + it, prompts=[hinted(task.prompt(train[i]), train[i].answer) for i in failed],
                progress=progress, desc=f"rationalize {it}"))
            g2, p2 = sampled_tokens(rat)
            gen, prompt = gen + g2, prompt + p2
            for i, rs in zip(failed, rat):
                good = next((r for r in rs if r.correct), None)
                if good is not None:  # keep the rationale, drop the hint from its prompt
                    pairs.append((task.prompt(train[i]), good.text))
                    n_rat += 1
        t_sample = clock()
        settings = dataclasses.replace(cfg.finetune, max_steps=int(cfg.finetune.max_steps * cfg.step_growth ** (it - 1)))
        if pairs:
            model_dir, trained = finetune(seed_dir, pairs, d, settings, seed=cfg.seed * 1000 + it, progress=progress,
                                          desc=f"fine-tune {it}")
        else:
            model_dir, trained = policy, 0
        t_train = clock() - t_sample
        ev = eval_by_digits(model_dir, cfg)
        log.write(it, {"model": str(model_dir), "tokens_sampled": gen, "prompt_tokens": prompt, "tokens_trained": trained,
                       "kept": len(pairs), "kept_direct": n_direct, "kept_rationalized": n_rat,
                       "train_accuracy": n_direct / len(rows), "eval": ev, "sample_wall_s": t_sample,
                       "train_wall_s": round(t_train, 3), "wall_s": round(t_sample + t_train, 3)})
        bar.set_postfix({f"acc{k}": f"{v['accuracy']:.2f}" for k, v in ev.items()})
        policy = model_dir
    bar.close()
    rows = log.cumulative()
    summary = {"recipe": "star", "rationalize": cfg.rationalize, "config": cfg_dict, "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    plot_by_group(rows, out / "curve.png", "STaR on addition" + ("" if cfg.rationalize else " (no rationalization)"))
    return summary


def plot_by_group(rows, path: Path, title: str) -> None:
    """Held-out greedy accuracy per iteration, one line per key of the rows' ``eval`` (digit counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for g in (rows[0]["eval"] if rows else {}):
        ax.plot([r["iteration"] for r in rows], [r["eval"][g]["accuracy"] for r in rows], marker="o",
                label=(f"{g} digit" + "s" * (g != "1")) if g.isdigit() else g, linestyle=":" if g == "all" else "-")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("STaR iteration")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_star(rows) -> str:
    digits = list(rows[0]["eval"]) if rows else []
    lines = [f"{'iter':>4} " + " ".join(f"{d + ' digits' if d.isdigit() else d:>10}" for d in digits) + f" {'kept':>6} {'rationalized':>12}"]
    for r in rows:
        lines.append(f"{r['iteration']:>4} " + " ".join(f"{r['eval'][d]['accuracy']:>10.3f}" for d in digits)
                     + f" {r.get('kept', '-'):>6} {r.get('kept_rationalized', '-'):>12}")
    return "\n".join(lines)


HELP = {
    "rationalize": "retry failed problems with the answer as a hint (--no-rationalize: plain STaR)",
    "seed_long_examples": "gold examples of seed_long_digits in the seed's training set",
    "seed_long_hint_fraction": "fraction of the long seed examples shown with the answer as a hint",
    "rationalize_samples": "hinted attempts per failed problem (1: greedy; more: sampled, first correct kept)",
    "eval_digits": "digit counts evaluated (comma-separated)",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, StarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(StarConfig, args)
    summary = run_star(cfg)
    print(format_star(summary["iterations"]))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0
