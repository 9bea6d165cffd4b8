"""Held-out evaluation of a Quiet-STaR run, and the paired comparison of thought vs no-thought runs.

Per held-out problem (``validation``: drawn with seed ``eval_seed + 1``; ``test``: seed ``eval_seed``, less
any question also in validation or training), on its text ``prompt + gold rationale``:

* per-token log-likelihood of every next token (``x_t+1`` given ``x_0..x_t``): for a model with a
  thinking head the mixed prediction after a sampled thought (mean over ``eval_thoughts`` thoughts) and
  its own plain prediction; for a plain model its plain prediction. The answer tokens are the characters
  (tokens) of the final answer after ``Answer: ``;
* zero-shot greedy accuracy on the task prompt: plain greedy decoding, and for a thinking model also
  think-then-predict greedy decoding (:class:`~deliberate.models.thinking.ThinkingDecoder`), with the
  generated tokens each spends (thoughts counted).

``python -m deliberate.train.quiet_star_eval --thought RUN... --plain RUN... --split test`` pairs runs
by position (same seed), pairs by problem, and puts 95% intervals on the mean differences by a
hierarchical bootstrap (:func:`~deliberate.eval.metrics.pooled_pipelines_ci`: seeds, then problems, one
problem draw shared by the seeds when all saw the same problems); it also splits all tokens and the answer
tokens by the no-thought model's loss (quartiles) to check the paper's "helps most on hard tokens".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deliberate.eval.metrics import pooled_pipelines_ci
from deliberate.models.engine import Engine
from deliberate.models.sampling import SamplingParams
from deliberate.models.thinking import HEAD_FILE, ThinkingDecoder, load_head
from deliberate.policy.thinking import (Streams, ThoughtSettings, load_lm, pick_positions, sample_thoughts,
                                        thought_forward)
from deliberate.records import write_json_atomic
from deliberate.tasks import get_task
from deliberate.types import Problem

ANSWER_MARK = "Answer: "


def heldout_problems(cfg, split: str) -> list[Problem]:
    """The held-out problems of ``split`` (validation or test), disjoint from each other and from training."""
    task = get_task(cfg.task, **cfg.task_options)
    val = task.problems("test", cfg.eval_problems, seed=cfg.eval_seed + 1)
    if split == "validation":
        return val
    seen = {p.question for p in val} | {p.question for p in task.problems("train", cfg.n_train, seed=cfg.seed)}
    return [p for p in task.problems("test", 2 * cfg.eval_problems, seed=cfg.eval_seed)
            if p.question not in seen][:cfg.eval_problems]


@torch.no_grad()
def token_logliks(lm, head, text: str, settings: ThoughtSettings, n_thoughts: int, seed: int
                  ) -> tuple[list[float], list[float] | None, tuple[int, int]]:
    """(per-token log-likelihood: mixed after a thought when ``head`` else plain; the plain one when
    ``head``; the answer tokens' span in that list)."""
    max_len = lm.model.config.max_position_embeddings
    ids_l = lm.encode_text(text, max_len)
    cut = text.rindex(ANSWER_MARK) + len(ANSWER_MARK)
    a0 = len(lm.encode_text(text[:cut], max_len)) - 2  # the list index of the first answer token (no EOS, no BOS)
    a1 = len(ids_l) - 2  # the answer ends before EOS
    dev = next(lm.model.parameters()).device
    ids = torch.tensor([ids_l], device=dev)
    lengths = torch.tensor([len(ids_l)])
    if head is None:
        lp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), -1)
        return lp.gather(-1, ids[0, 1:, None]).squeeze(-1).tolist(), None, (a0, a1)
    s = ThoughtSettings(settings.thought_len, n_thoughts, 0, 1, settings.temperature)
    g = torch.Generator().manual_seed(seed)
    pos, valid = pick_positions(lengths, 0, g)
    streams = Streams.at(pos.to(dev), valid.to(dev), n_thoughts)
    thoughts = sample_thoughts(lm.model, head, ids, lengths, streams, s, g)
    p = thought_forward(lm.model, head, ids, lengths, streams, thoughts, s)
    mixed = p.mixed_lp[0, :, 0].reshape(-1, n_thoughts).mean(-1)
    plain = p.plain_lp[0, :, 0].reshape(-1, n_thoughts)[:, 0]
    return mixed.tolist(), plain.tolist(), (a0, a1)


def evaluate_run(cfg, model_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Score ``model_dir`` on ``cfg.eval_split``; per-problem records to ``OUT/eval_<split>.jsonl``,
    the means returned."""
    out = Path(cfg.out) / f"eval_{cfg.eval_split}.jsonl"
    done = out.with_suffix(".json")
    if done.exists():
        return json.loads(done.read_text())
    task = get_task(cfg.task, **cfg.task_options)
    problems = heldout_problems(cfg, cfg.eval_split)
    lm = load_lm(model_dir, cfg.device)
    lm.model.eval()
    head, meta = load_head(model_dir) if (model_dir / HEAD_FILE).exists() else (None, {})
    if head is not None:
        head.to(next(lm.model.parameters()).device)
    rows = []
    for i, p in enumerate(tqdm(problems, desc="score held-out text", disable=not progress, leave=False)):
        mixed, plain, span = token_logliks(lm, head, task.prompt(p) + task.rationale(p), cfg.settings,
                                           cfg.eval_thoughts, cfg.eval_seed * 1_000_003 + i)
        rows.append({"id": p.id, "token_lp": mixed, "own_plain_lp": plain, "answer_span": list(span)})
    prompts = [task.prompt(p) for p in problems]
    params = SamplingParams(temperature=0.0, max_tokens=task.max_tokens, stop=task.stop, seed=cfg.eval_seed)
    tok = lm.tokenizer
    eos = getattr(tok, "eos_token_ids", None) or [tok.eos_token_id]
    decoders = {"greedy": Engine(lm.model, tok, max_batch_size=64, eos_token_ids=eos, prefix_cache_bytes=0)}
    if head is not None:
        decoders["think_greedy"] = ThinkingDecoder(lm.model, tok, head, int(meta["thought_len"]),
                                                   think_temperature=cfg.temperature, eos_token_ids=eos)
    for name, dec in decoders.items():
        comps = dec.generate(prompts, params)
        for r, p, (c,) in zip(rows, problems, comps):
            r[name] = task.is_correct(task.extract_answer(c.text), p)
            r[f"{name}_tokens"] = c.completion_tokens
    with out.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = {"split": cfg.eval_split, "problems": len(rows),
               "answer_ll": mean([answer_ll(r) for r in rows]),
               "token_ll": mean([float(np.mean(r["token_lp"])) for r in rows])}
    if head is not None:
        summary["own_plain_answer_ll"] = mean([answer_ll(r, "own_plain_lp") for r in rows])
    for name in decoders:
        summary[name] = mean([float(r[name]) for r in rows])
        summary[f"{name}_tokens"] = mean([float(r[f"{name}_tokens"]) for r in rows])
    write_json_atomic(done, summary)
    return summary


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def answer_ll(r: dict[str, Any], key: str = "token_lp") -> float:
    """Mean log-likelihood per answer token of one problem."""
    a0, a1 = r["answer_span"]
    return float(np.mean(r[key][a0:a1]))


def load_rows(run: str | Path, split: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, Path(run, f"eval_{split}.jsonl").read_text().splitlines())}


def compare(thought_runs: Sequence[str], plain_runs: Sequence[str], split: str) -> dict[str, Any]:
    """Paired thought - plain differences over seeds (runs paired by position) and problems."""
    pairs = [(load_rows(t, split), load_rows(p, split)) for t, p in zip(thought_runs, plain_runs)]
    res: dict[str, Any] = {"split": split, "seeds": len(pairs), "problems": [len(t) for t, _ in pairs]}

    def paired(f) -> dict[str, Any]:
        m, ci = pooled_pipelines_ci([{i: f(t[i], p[i]) for i in t if i in p} for t, p in pairs])
        return {"mean": m, "ci": list(ci), "per_seed": [float(np.mean([f(t[i], p[i]) for i in t if i in p]))
                                                       for t, p in pairs]}

    res["answer_ll_diff"] = paired(lambda t, p: answer_ll(t) - answer_ll(p))
    res["answer_ll_within_model"] = paired(lambda t, p: answer_ll(t) - answer_ll(t, "own_plain_lp"))
    res["token_ll_diff"] = paired(lambda t, p: float(np.mean(np.array(t["token_lp"]) - np.array(p["token_lp"]))))
    for name in ("greedy", "think_greedy"):
        res[f"{name}_minus_plain_greedy"] = paired(lambda t, p, n=name: float(t[n]) - float(p["greedy"]))
        res[f"{name}_accuracy"] = float(np.mean([np.mean([float(r[name]) for r in t.values()]) for t, _ in pairs]))
        res[f"{name}_tokens"] = float(np.mean([np.mean([r[f"{name}_tokens"] for r in t.values()]) for t, _ in pairs]))
    res["plain_greedy_accuracy"] = float(np.mean([np.mean([float(r["greedy"]) for r in p.values()]) for _, p in pairs]))
    res["plain_greedy_tokens"] = float(np.mean([np.mean([r["greedy_tokens"] for r in p.values()]) for _, p in pairs]))
    res["by_baseline_loss"] = loss_split(pairs)
    res["answer_by_baseline_loss"] = loss_split(pairs, answer_only=True)
    return res


def token_slice(r: dict[str, Any], answer_only: bool) -> slice:
    return slice(*r["answer_span"]) if answer_only else slice(None)


def loss_split(pairs, n_bins: int = 4, answer_only: bool = False) -> list[dict[str, Any]]:
    """Every token's (or every answer token's) thought - plain log-likelihood gain, binned by the plain
    model's loss on it (quartiles over all seeds' tokens); per bin the mean gain with a hierarchical interval
    (seeds, then problems: the item is a problem's mean gain over its tokens in the bin; a problem with no
    token in the bin sits that bin out; a bin left empty by tied edges has no mean)."""
    loss = np.concatenate([-np.array(p[i]["token_lp"])[token_slice(p[i], answer_only)]
                           for t, p in pairs for i in t if i in p])
    edges = np.quantile(loss, np.linspace(0, 1, n_bins + 1))
    out = []
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        per = []
        for t, p in pairs:
            items = {}
            for i in t:
                if i not in p:
                    continue
                cut = token_slice(p[i], answer_only)
                pl, tl = -np.array(p[i]["token_lp"])[cut], np.array(t[i]["token_lp"])[cut]
                sel = (pl >= lo) & ((pl < hi) if b < n_bins - 1 else (pl <= hi))
                if sel.any():
                    items[i] = float(np.mean(tl[sel] + pl[sel]))
            per.append(items)
        per = [d for d in per if d]
        if not per:  # tied quantile edges leave a bin empty
            out.append({"baseline_loss": [float(lo), float(hi)], "mean_gain": None, "ci": None})
            continue
        m, ci = pooled_pipelines_ci(per)
        out.append({"baseline_loss": [float(lo), float(hi)], "mean_gain": m, "ci": list(ci)})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thought", nargs="+", required=True, help="run directories trained with thoughts")
    ap.add_argument("--plain", nargs="+", required=True, help="their --no-thoughts twins, same order")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=None, help="write the comparison JSON here too")
    a = ap.parse_args(argv)
    res = compare(a.thought, a.plain, a.split)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
