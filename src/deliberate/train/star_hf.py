"""STaR on Hugging Face models (Zelikman et al., 2022): greedy rationales, rationalization with the
answer as a hint, TRL's ``SFTTrainer`` from the base model each iteration.

    deliberate train star-hf --model smollm2 --out runs/star-hf                  # with rationalization
    deliberate train star-hf --model smollm2 --no-rationalize --out runs/star-hf-norat

The tiny-model recipe (:mod:`deliberate.train.star`) has to *teach* its seed what a hint is, and its
char-level model never learns to use one. A pretrained instruct model reads a hint in context the way
the paper's few-shot GPT-J does, so here the base model is the seed:

* **Iteration t.** The policy M_{t-1} (the base model for t = 1) answers each of ``n_train`` training
  problems greedily (our engine, chat template when ``chat``; the prompt is ``prompt`` with the
  question filled in, default ``What is {question}?``, or the task's own prompt when ``prompt`` is
  empty); answers the task's checker accepts are
  kept. With **rationalization**, every problem it got wrong is asked again with ``hint`` appended
  to its prompt (default ``(Hint: the answer is N.)``); a completion that then passes the checker is
  kept with the *unhinted* prompt. Completions that mention the hint ("as the hint says ...") are
  dropped: trained without the hint in the prompt they would teach the model to cite one that is not
  there. M_t is TRL's ``SFTTrainer`` from **the base model** on everything kept (completion-only loss);
  the number of steps grows with what is kept, as in the paper.
* **Eval.** Greedy accuracy on ``eval_problems`` held-out problems, overall and per value of the
  problems' ``eval_by`` metadata (``digits`` for ``addition``: the per-length curve of the paper),
  with bootstrap CIs.

Samples, rationalizations and eval answers are appended per batch to ``itNNN/*.jsonl`` (a killed
iteration resumes where it stopped, seeds fixed per batch); a finished M-step is never redone; per-
iteration rows with train compute (tokens sampled / trained, FLOPs, wall) go to ``OUT/iterations/``,
the curve to ``OUT/summary.json`` and ``OUT/curve.png``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci
from deliberate.eval.records import write_json_atomic
from deliberate.tasks import get_task
from deliberate.train.rest_em_hf import HELP as REST_EM_HF_HELP
from deliberate.train.rest_em_hf import e_step, m_step
from deliberate.train.selfimprove import IterationLog, Stopwatch, add_config_arguments, config_from_args, start_run
from deliberate.train.star import HELP as STAR_HELP
from deliberate.train.star import format_star, plot_by_group

_MENTIONS_HINT = re.compile(r"\bhint", re.IGNORECASE)


@dataclass(frozen=True)
class HFStarConfig:
    """Defaults: the CPU pilot of docs/RESULTS.md ("STaR on a real model"; ~15 min per iteration on 2 cores)."""

    model: str = "smollm2"
    chat: bool = True
    task: str = "addition"
    task_options: dict[str, Any] = field(default_factory=lambda: {"digits": "1-3", "extract": "last_number"})
    prompt_style: str = "instruct"
    # "{question}" template for the prompt; "" = the task's prompt in prompt_style. SmolLM2 parrots the
    # example line of addition's instruct prompt ("7+5+0=12") and answers a plain question directly
    prompt: str = "What is {question}?"
    rationalize: bool = True
    hint: str = "(Hint: the answer is {answer}.)"
    iterations: int = 4
    n_train: int = 200
    max_tokens: int = 64
    lr: float = 3e-5
    epochs: float = 2.0
    batch_size: int = 8
    batch_problems: int = 64  # problems per generate call
    eval_problems: int = 150
    eval_by: str = "digits"  # problem metadata key the held-out accuracy is broken down by ("": overall only)
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/star-hf"

    def __post_init__(self) -> None:
        problems = []
        for name in ("iterations", "n_train", "max_tokens", "batch_size", "batch_problems", "eval_problems"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if not (self.epochs > 0):
            problems.append(f"epochs must be > 0 (got {self.epochs!r})")
        if self.prompt:
            problems += _template_errors("prompt", self.prompt, "question")
        problems += _template_errors("hint", self.hint, "answer")
        if problems:
            raise DeliberateError("star-hf: " + "; ".join(problems))


def _template_errors(name: str, template: str, field: str) -> list[str]:
    """The error message for a ``template`` that is not a format string whose only placeholder is ``{field}``
    (a one-item list), or an empty list for a valid template."""
    if not isinstance(template, str) or f"{{{field}}}" not in template:
        why = f"no {{{field}}}"
    else:
        try:
            template.format(**{field: "0"})
            return []
        except (KeyError, IndexError, ValueError) as e:  # format() rejects other placeholders and stray braces
            why = repr(e)
    return [f"{name} must be a format string with {{{field}}} only ({why} in {template!r})"]


def hinted(prompt: str, answer: str, hint: str) -> str:
    """``prompt`` with the hint sentence (``hint`` with ``{answer}`` filled in) appended on its own line."""
    return f"{prompt.rstrip()}\n{hint.format(answer=answer)}"


def by_group(problems, rows, key: str) -> dict[str, Any]:
    """Greedy accuracy with a 95% bootstrap CI, over all ``problems`` (``all``) and per value of
    ``problem.metadata[key]`` (``""``: overall only)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for p, r in zip(problems, rows):
        v = float(r["samples"][0]["correct"])
        groups["all"].append(v)
        if key and key in p.metadata:
            groups[str(p.metadata[key])].append(v)
    order = ["all"] + sorted((g for g in groups if g != "all"), key=lambda g: (len(g), g))
    return {g: {"accuracy": sum(groups[g]) / len(groups[g]), "ci": list(bootstrap_ci(groups[g])),
                "n": len(groups[g])} for g in order}


def run_star_hf(cfg: HFStarConfig, progress: bool = True) -> dict[str, Any]:
    from deliberate.models.hf import HFBackend, resolve_path

    out, cfg_dict = start_run(cfg)
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    test = task.problems("test", cfg.eval_problems, seed=cfg.eval_seed)
    base, _ = resolve_path(cfg.model)
    if base.suffix.lower() == ".gguf":
        raise DeliberateError("star-hf: a raw .gguf file cannot be fine-tuned; convert it to a checkpoint "
                              "directory first (smollm2 is converted automatically)")
    greedy = {"k": 1, "temperature": 0.0}

    def prompts(problems) -> list[str]:
        return [cfg.prompt.format(question=p.question) if cfg.prompt else task.prompt(p, cfg.prompt_style)
                for p in problems]

    def evaluate(backend, it: int) -> dict[str, Any]:
        rows = e_step(backend, task, test, cfg, it, out / f"it{it:03d}" / "eval.jsonl", progress, tag="star-hf-eval",
                      prompts=prompts(test), desc=f"eval {it}", **greedy)
        return by_group(test, rows, cfg.eval_by)

    backend = HFBackend(path=base, chat=cfg.chat)
    n_params = sum(p.numel() for p in backend.model.parameters())
    log = IterationLog(out, n_params)
    title = "STaR" + ("" if cfg.rationalize else " (no rationalization)")
    try:
        if log.done(0) is None:
            clock = Stopwatch()
            log.write(0, {"model": str(base), "tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0,
                          "eval": evaluate(backend, 0), "wall_s": 0.0, "eval_wall_s": clock()})
        policy = base
        bar = tqdm(range(1, cfg.iterations + 1), desc=title, disable=not progress, dynamic_ncols=True)
        for it in bar:
            row = log.done(it)
            if row is not None:
                policy = Path(row["model"])
                continue
            d = out / f"it{it:03d}"
            d.mkdir(parents=True, exist_ok=True)
            clock = Stopwatch()
            if str(Path(backend.path or "")) != str(policy):
                backend.close()
                backend = HFBackend(path=policy, chat=cfg.chat)
            rows = e_step(backend, task, train, cfg, it, d / "samples.jsonl", progress, tag="star-hf",
                          prompts=prompts(train), desc=f"rationales {it}", **greedy)
            sampled = [rows]
            # (the prompt as the engine saw it, chat template applied; the completion)
            pairs = [(backend._wrap(r["prompt"]), r["samples"][0]["text"]) for r in rows if r["samples"][0]["correct"]]
            n_direct, n_rat, n_cites = len(pairs), 0, 0
            if cfg.rationalize:
                failed = [i for i, r in enumerate(rows) if not r["samples"][0]["correct"]]
                rat = e_step(backend, task, [train[i] for i in failed], cfg, it, d / "rationalized.jsonl", progress,
                             prompts=[hinted(rows[i]["prompt"], train[i].answer, cfg.hint) for i in failed],
                             tag="star-hf-hint", desc=f"rationalize {it}", **greedy)
                sampled.append(rat)
                for i, r in zip(failed, rat):
                    s = r["samples"][0]
                    if not s["correct"]:
                        continue
                    if _MENTIONS_HINT.search(s["text"]):
                        n_cites += 1
                        continue
                    pairs.append((backend._wrap(rows[i]["prompt"]), s["text"]))  # the hint dropped from the prompt
                    n_rat += 1
            t_sample = clock()
            if pairs:
                model_dir, trained = m_step(base, pairs, d, cfg, seed=cfg.seed * 1000 + it, progress=progress)
            else:
                tqdm.write(f"star-hf: iteration {it}: nothing passed the checker; keeping the policy")
                model_dir, trained = policy, 0
            t_train = clock() - t_sample
            backend.close()
            backend = HFBackend(path=model_dir, chat=cfg.chat)
            ev = evaluate(backend, it)
            log.write(it, {"model": str(model_dir),
                           "tokens_sampled": sum(s["completion_tokens"] for rs in sampled for r in rs
                                                 for s in r["samples"]),
                           "prompt_tokens": sum(r["prompt_tokens"] for rs in sampled for r in rs),
                           "tokens_trained": trained, "kept": len(pairs), "kept_direct": n_direct,
                           "kept_rationalized": n_rat, "rationalized_citing_hint": n_cites,
                           "train_accuracy": n_direct / len(rows), "eval": ev, "sample_wall_s": t_sample,
                           "train_wall_s": round(t_train, 3), "wall_s": round(t_sample + t_train, 3),
                           "eval_wall_s": round(clock() - t_sample - t_train, 3)})
            bar.set_postfix({f"acc{k}": f"{v['accuracy']:.2f}" for k, v in ev.items()})
            policy = Path(model_dir)
        bar.close()
    finally:
        backend.close()
    rows = log.cumulative()
    summary = {"recipe": "star-hf", "rationalize": cfg.rationalize, "config": cfg_dict, "n_params": n_params,
               "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    plot_by_group(rows, out / "curve.png", f"{title} on {cfg.task}")
    return summary


HELP = {
    **{k: REST_EM_HF_HELP[k] for k in ("model", "chat")},
    "rationalize": STAR_HELP["rationalize"],
    "task": "task with gold answers (default addition, options digits=1-3 extract=last_number; --task-arg replaces "
            "all the options: keep extract=last_number for models that do not write an 'Answer: N' line)",
    "prompt": "prompt template with {question} (the problem's question); '' uses the task's prompt in "
              "--prompt-style (do that for tasks whose question is a sentence, e.g. word problems)",
    "max_tokens": "new tokens per answer at most",
    "lr": "M-step learning rate (cosine decay, no warmup)",
    "eval_problems": "held-out problems answered greedily after each iteration",
    "hint": "sentence appended to a failed problem's prompt for rationalization; {answer} is the gold answer",
    "n_train": "training problems answered (greedily) in each iteration",
    "epochs": "M-step epochs (TRL SFTTrainer, from the base model) over the kept rationales",
    "eval_by": "problem metadata key the held-out accuracy is broken down by (digits for addition; '' for none)",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, HFStarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(HFStarConfig, args)
    summary = run_star_hf(cfg)
    print(format_star(summary["iterations"]))
    print(f"curve: {Path(cfg.out) / 'curve.png'}")
    return 0
