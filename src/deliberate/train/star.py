"""STaR — Self-Taught Reasoner (Zelikman et al., 2022), with and without rationalization, on any policy.

    deliberate train star --out runs/star                 # the tiny model, with rationalization
    deliberate train star --no-rationalize --out runs/star-norat
    deliberate train star --model smollm2 --task-arg extract=last_number --train-digits 1-3 --eval-digits "" \
        --prompt "What is {question}?" --iterations 4 --n-train 200 --max-tokens 64 --epochs 2 --lr 3e-5 \
        --batch-size 8 --warmup 0 --weight-decay 0 --step-growth 1 --eval-problems 150 \
        --out runs/star-hf                                 # the former `train star-hf`

* **Seed.** Without ``--model`` the seed is the paper's setting on ``addition`` with the tiny model: a
  tiny model trained from scratch on gold scratchpads of *short* sums (``seed_digits``, default 1-3
  digits); a fraction of its examples carry the answer as a hint in the question (``Q: a+b (hint:
  s)``), so the model learns what a hint is — the role few-shot prompting plays for the paper's GPT-J.
  With ``--model`` (alias ``--init``: a tiny or HF checkpoint, a ``.gguf``, ``smollm2``) that model is
  the seed; a pretrained model reads a hint in context the way GPT-J does.
* **Iteration t.** The policy M_{t-1} (the seed for t = 1) answers each training problem greedily
  (``train_digits``, default 1-5 digits; the prompt is ``prompt`` with ``{question}`` filled in, or the
  task's own prompt in ``prompt_style``). Correct ones are kept. With **rationalization**, every problem
  it got wrong is asked again *with the answer as a hint* (``hint``; default: the policy's — the tiny
  model's ``(hint: N)`` inside its question line, a pretrained model's ``(Hint: the answer is N.)``
  sentence after the prompt); a rationale that then reaches the answer is kept too, with the hint
  removed from its prompt. Completions that mention an in-context hint ("as the hint says ...") are
  dropped: trained without the hint they would teach the model to cite one that is not there. M_t is
  fine-tuned **from the seed** on everything kept, in the text the model was given (chat template
  applied), with ``step_growth`` times more steps each iteration (the paper's 20%).
* **Eval.** Greedy accuracy on ``eval_problems`` held-out problems of each digit count in
  ``eval_digits`` (no hints); with no ``eval_digits``, on the task's test problems overall and per value
  of their ``eval_by`` metadata, with bootstrap CIs.

The finding to reproduce: with rationalization the model reaches a given accuracy on the longer sums
in fewer iterations than without. Per-iteration rows with compute (tokens sampled / trained, FLOPs) go
to ``OUT/iterations/``; ``OUT/summary.json`` and ``OUT/curve.png`` hold the curves. Finished
iterations are not redone; samples are saved per batch, so an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci
from deliberate.records import write_json_atomic
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.policy import FinetuneSettings, Policy, TinyPolicy, load_policy
from deliberate.policy.tiny import save_model
from deliberate.tasks import get_task
from deliberate.tasks.base import Task
from deliberate.train.selfimprove import IterationLog, Rollout, Stopwatch, rollouts, sampled_tokens, start_run
from deliberate.types import Problem

#: the in-context hint a pretrained policy gets by default
IN_CONTEXT_HINT = "(Hint: the answer is {answer}.)"
MENTIONS_HINT = re.compile(r"\bhint", re.IGNORECASE)


def hinted(prompt: str, answer: str) -> str:
    """The tiny model's hint: ``Q: <question>\\nA:\\n`` -> ``Q: <question> (hint: <answer>)\\nA:\\n``."""
    head, sep, tail = prompt.partition("\nA:")
    if not sep:
        raise DeliberateError(f"cannot place a hint in prompt {prompt!r} (expected the 'Q: ...\\nA:' format)")
    return f"{head} (hint: {answer}){sep}{tail}"


def hinted_in_context(prompt: str, answer: str, hint: str) -> str:
    """``prompt`` with the hint sentence (``hint`` with ``{answer}`` filled in) appended on its own line."""
    return f"{prompt.rstrip()}\n{hint.format(answer=answer)}"


def template_errors(name: str, template: str, key: str) -> list[str]:
    """The error message for a ``template`` that is not a format string whose only placeholder is ``{key}``
    (a one-item list), or an empty list for a valid template."""
    if not isinstance(template, str) or f"{{{key}}}" not in template:
        why = f"no {{{key}}}"
    else:
        try:
            template.format(**{key: "0"})
            return []
        except (KeyError, IndexError, ValueError) as e:  # format() rejects other placeholders and stray braces
            why = repr(e)
    return [f"{name} must be a format string with {{{key}}} only ({why} in {template!r})"]


@dataclass(frozen=True)
class StarConfig:
    init: str | None = None  # the seed policy (--model, alias --init); None: train the tiny seed below
    chat: bool | None = None  # chat template: None = when the model's tokenizer has one
    task: str = "addition"
    task_options: dict[str, Any] = field(default_factory=dict)
    prompt: str = ""  # "{question}" template for the prompt; "" = the task's prompt in prompt_style
    prompt_style: str = "plain"
    hint: str | None = None  # "{answer}" sentence appended to the prompt; None = the policy's default
    seed_digits: str = "1-3"
    # a few gold examples of the longer sums, so the seed is weak but not at zero there (the paper's
    # few-shot GPT-J also starts with some accuracy at every digit count; without any, neither variant
    # can get off the ground: a tiny transformer does not extrapolate to unseen lengths)
    seed_long_digits: str = "4-5"
    seed_long_examples: int = 200
    train_digits: str = "1-5"  # "": the task's problems as task_options give them
    eval_digits: tuple[int, ...] = (3, 4, 5)  # (): the task's test problems, broken down by eval_by
    eval_by: str = "digits"
    rationalize: bool = True
    iterations: int = 6
    n_train: int = 2000
    max_tokens: int | None = None  # None: the task's default
    batch_problems: int = 64  # problems per sampling call
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
    eval_seed: int = 0  # test problems without eval_digits (with them: seed)
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
        for name in ("iterations", "n_train", "seed_examples", "eval_problems", "rationalize_samples",
                     "batch_problems"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        for name in ("seed_hint_fraction", "seed_long_hint_fraction"):
            if not (0 <= getattr(self, name) <= 1):
                problems.append(f"{name} must be in [0, 1] (got {getattr(self, name)!r})")
        if not self.rationalize_temperature > 0:
            problems.append(f"rationalize_temperature must be > 0 (got {self.rationalize_temperature!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if self.init is None and not self.eval_digits:
            problems.append("eval_digits must name at least one digit count for the tiny seed")
        if self.prompt:
            problems += template_errors("prompt", self.prompt, "question")
        if self.hint is not None:
            problems += template_errors("hint", self.hint, "answer")
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
    r = TinyPolicy(init).finetune(pairs, out / "seed", cfg.seed_sft, seed=cfg.seed, progress=progress,
                                  desc="seed SFT")
    return r.model_dir, r.tokens_trained


def task_for(cfg: StarConfig, digits: str) -> Task:
    """The task with ``cfg.task_options``, at ``digits`` digits when given."""
    return get_task(cfg.task, **{**cfg.task_options, **({"digits": digits} if digits else {})})


def prompts_for(cfg: StarConfig, task: Task, problems: Sequence[Problem]) -> list[str]:
    return [cfg.prompt.format(question=p.question) if cfg.prompt else task.prompt(p, cfg.prompt_style)
            for p in problems]


def greedy(cfg: StarConfig, policy: Policy, task: Task, problems: Sequence[Problem], path: Path | None,
           desc: str, progress: bool) -> list[list[Rollout]]:
    return rollouts(policy, task, problems, 1, temperature=0.0, max_tokens=cfg.max_tokens,
                    prompts=prompts_for(cfg, task, problems), batch_problems=cfg.batch_problems,
                    progress=progress, desc=desc, path=path)


def accuracy_ci(values: list[float]) -> dict[str, Any]:
    return {"accuracy": sum(values) / len(values), "ci": list(bootstrap_ci(values)), "n": len(values)}


def evaluate(cfg: StarConfig, policy: Policy, d: Path, progress: bool) -> dict[str, Any]:
    """Held-out greedy accuracy per digit count in ``eval_digits``; without them, over the task's test
    problems (``all``) and per value of ``problem.metadata[eval_by]``."""
    d.mkdir(parents=True, exist_ok=True)
    if cfg.eval_digits:
        res = {}
        for n in cfg.eval_digits:
            task = task_for(cfg, str(n))
            probs = task.problems("test", cfg.eval_problems, seed=cfg.seed)
            rows = greedy(cfg, policy, task, probs, d / f"eval-{n}digits.jsonl", "eval", False)
            res[str(n)] = accuracy_ci([float(rs[0].correct) for rs in rows])
        return res
    task = task_for(cfg, cfg.train_digits)
    test = task.problems("test", cfg.eval_problems, seed=cfg.eval_seed)
    rows = greedy(cfg, policy, task, test, d / "eval.jsonl", "eval", progress)
    groups: dict[str, list[float]] = defaultdict(list)
    for p, rs in zip(test, rows):
        groups["all"].append(float(rs[0].correct))
        if cfg.eval_by and cfg.eval_by in p.metadata:
            groups[str(p.metadata[cfg.eval_by])].append(float(rs[0].correct))
    order = ["all"] + sorted((g for g in groups if g != "all"), key=lambda g: (len(g), g))
    return {g: accuracy_ci(groups[g]) for g in order}


def run_star(cfg: StarConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    clock = Stopwatch()
    if cfg.init is None:
        seed_dir, seed_tokens = build_seed(cfg, out, progress)
        seed = load_policy(seed_dir)
    else:
        seed, seed_tokens = load_policy(cfg.init, chat=cfg.chat), 0
    try:
        return _run(cfg, out, cfg_dict, seed, seed_tokens, clock, progress)
    finally:
        seed.close()


def _run(cfg: StarConfig, out: Path, cfg_dict: dict[str, Any], seed: Policy, seed_tokens: int, clock: Stopwatch,
         progress: bool) -> dict[str, Any]:
    in_context = cfg.hint is not None or seed.pretrained
    hint = cfg.hint or IN_CONTEXT_HINT
    log = IterationLog(out, seed.n_params)
    if log.done(0) is None:
        t_train = clock() if cfg.init is None else 0.0
        log.write(0, {"model": str(cfg.init or seed.path), "tokens_sampled": 0, "tokens_trained": seed_tokens,
                      "eval": evaluate(cfg, seed, out / "it000", progress), "wall_s": t_train})
    task = task_for(cfg, cfg.train_digits)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    policy = seed
    title = "STaR" + ("" if cfg.rationalize else " (no rationalization)")
    bar = tqdm(range(1, cfg.iterations + 1), desc=title, disable=not progress, dynamic_ncols=True)
    for it in bar:
        row = log.done(it)
        if row is not None:
            policy = switch(policy, seed.with_checkpoint(row["model"]), seed)
            continue
        d = out / f"it{it:03d}"
        d.mkdir(parents=True, exist_ok=True)
        clock = Stopwatch()
        rows = greedy(cfg, policy, task, train, d / "samples.jsonl", f"rationales {it}", progress)
        gen, prompt = sampled_tokens(rows)
        # (the prompt as the model saw it, chat template applied; the completion)
        pairs = [(policy.training_prompt(rs[0].prompt), rs[0].text) for rs in rows if rs[0].correct]
        n_direct, n_rat, n_cites = len(pairs), 0, 0
        if cfg.rationalize:
            failed = [i for i, rs in enumerate(rows) if not rs[0].correct]
            k = cfg.rationalize_samples
            hinted_prompts = [hinted_in_context(rows[i][0].prompt, train[i].answer, hint) if in_context
                              else hinted(rows[i][0].prompt, train[i].answer) for i in failed]
            rat = rollouts(policy, task, [train[i] for i in failed], k,
                           temperature=0.0 if k == 1 else cfg.rationalize_temperature, max_tokens=cfg.max_tokens,
                           seed=cfg.seed * 1000 + it, prompts=hinted_prompts, batch_problems=cfg.batch_problems,
                           progress=progress, desc=f"rationalize {it}", path=d / "rationalized.jsonl")
            g2, p2 = sampled_tokens(rat)
            gen, prompt = gen + g2, prompt + p2
            for i, rs in zip(failed, rat):
                good = next((r for r in rs if r.correct), None)
                if good is None:
                    continue
                if in_context and MENTIONS_HINT.search(good.text):
                    n_cites += 1
                    continue
                pairs.append((policy.training_prompt(rows[i][0].prompt), good.text))  # the hint dropped
                n_rat += 1
        t_sample = clock()
        settings = dataclasses.replace(cfg.finetune, max_steps=int(cfg.finetune.max_steps * cfg.step_growth ** (it - 1)))
        if pairs:
            r = seed.finetune(pairs, d, settings, seed=cfg.seed * 1000 + it, progress=progress, desc=f"fine-tune {it}")
            model_dir, trained = r.model_dir, r.tokens_trained
        else:
            tqdm.write(f"star: iteration {it}: nothing passed the checker; keeping the policy")
            model_dir, trained = policy.path, 0
        t_train = clock() - t_sample
        policy = switch(policy, seed if model_dir == seed.path else seed.with_checkpoint(model_dir), seed)
        ev = evaluate(cfg, policy, d, progress)
        extra = {"rationalized_citing_hint": n_cites, "eval_wall_s": round(clock() - t_sample - t_train, 3)} \
            if in_context else {}
        log.write(it, {"model": str(model_dir), "tokens_sampled": gen, "prompt_tokens": prompt, "tokens_trained": trained,
                       "kept": len(pairs), "kept_direct": n_direct, "kept_rationalized": n_rat,
                       "train_accuracy": n_direct / len(rows), "eval": ev, "sample_wall_s": t_sample,
                       "train_wall_s": round(t_train, 3), "wall_s": round(t_sample + t_train, 3), **extra})
        bar.set_postfix({f"acc{k}": f"{v['accuracy']:.2f}" for k, v in ev.items()})
    bar.close()
    switch(policy, seed, seed)
    rows = log.cumulative()
    summary = {"recipe": "star", "rationalize": cfg.rationalize, "config": cfg_dict, "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    plot_by_group(rows, out / "curve.png", f"{title} on {cfg.task}")
    return summary


def switch(old: Policy, new: Policy, seed: Policy) -> Policy:
    """``new``, after closing ``old`` unless it is ``new`` or the seed (which the run closes last)."""
    if old is not new and old is not seed:
        old.close()
    return new


def plot_by_group(rows, path: Path, title: str) -> None:
    """Held-out greedy accuracy per iteration, one line per key of the rows' ``eval`` (digit counts)."""
    import matplotlib  # lazy: matplotlib, only this plot needs it and `deliberate --help` imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after use("Agg"), so pyplot never picks a display backend
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
    "init": "seed policy: a tiny or HF checkpoint directory, a .gguf or smollm2 (default: train a tiny seed on "
            "addition)",
    "prompt": "prompt template with {question}; '' uses the task's prompt in --prompt-style",
    "hint": "sentence with {answer} appended to a failed problem's prompt for rationalization (default: the "
            "policy's: inline '(hint: N)' for the tiny model, '(Hint: the answer is N.)' for a pretrained one)",
    "eval_by": "without --eval-digits: problem metadata key the held-out accuracy is broken down by",
    "rationalize": "retry failed problems with the answer as a hint (--no-rationalize: plain STaR)",
    "seed_long_examples": "gold examples of seed_long_digits in the seed's training set",
    "seed_long_hint_fraction": "fraction of the long seed examples shown with the answer as a hint",
    "rationalize_samples": "hinted attempts per failed problem (1: greedy; more: sampled, first correct kept)",
    "eval_digits": "digit counts evaluated (comma-separated; '' evaluates the task's test problems, by --eval-by)",
}
