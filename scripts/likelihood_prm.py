#!/usr/bin/env python
"""A likelihood-feature PRM: a frozen tiny LM's per-step log-probabilities, calibrated on Monte-Carlo labels.

    python scripts/likelihood_prm.py --lm runs/verifier-backbone-1000 --labels runs/prm3/labels \\
        --pool runs/sweeps3/easy-prm

Why this exists: a PRM fine-tuned from a strong tiny LM on Monte-Carlo labels (``deliberate train prm
--init-from``) ranks a problem's samples barely better than chance, although the same LM, used as is,
clearly prefers the right chains. This script measures that gap. Each step of a solution gets three
features from the LM — the summed log-probability of the step's characters, their minimum, and the
running minimum of the step sums so far — and a logistic regression on them is fitted to the soft
Monte-Carlo labels of ``--labels`` (a ``deliberate label mc`` output). The fitted PRM then scores every
sample of a sweep's pool (``--pool``: a ``deliberate sweep`` directory, ``pool.jsonl``) and the script
prints, per sampling seed and pooled, best-of-N and weighted majority (``min`` and ``last`` aggregation)
beside pass@N and maj@N at N = all samples of a problem, with 95% bootstrap CIs over problems.
A research probe, not yet a ``rewards/`` verifier (see docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from deliberate.eval.metrics import bootstrap_ci
from deliberate.models.tiny import load_tiny
from deliberate.tasks import get_task


def step_features(model, tok, prompt: str, steps: list[str]) -> list[list[float]]:
    text = "\n".join(steps)
    p = [tok.bos_token_id] + tok.encode(prompt)
    c = tok.encode(text) + [tok.eos_token_id]
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([p + c])).logits[0, :-1].float().log_softmax(-1)
    tl = lp[len(p) - 1:].gather(1, torch.tensor(c)[:, None])[:, 0].tolist()
    out, i, run_min = [], 0, 0.0
    for s in steps:
        seg = tl[i:i + len(s) + 1]  # the step's characters and the newline (or EOS) after it
        i += len(s) + 1
        run_min = min(run_min, sum(seg))
        out.append([sum(seg), min(seg), run_min])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", required=True, help="tiny LM checkpoint whose log-probs are the features")
    ap.add_argument("--labels", required=True, help="a `deliberate label mc` output (labels.jsonl inside)")
    ap.add_argument("--pool", required=True, help="a `deliberate sweep` directory (its pool.jsonl is scored)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_tiny(args.lm)
    model.eval()
    labels = Path(args.labels)
    labels = labels / "labels.jsonl" if labels.is_dir() else labels
    X, Y = [], []
    for line in labels.open():
        r = json.loads(line)
        X += step_features(model, tok, f"Q: {r['question']}\nA:\n", r["steps"])
        Y += r["soft"]
    X, Y = torch.tensor(X), torch.tensor(Y)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(((X - mu) / sd) @ w + b, Y)
        loss.backward()
        return loss

    opt.step(closure)
    print(f"fitted on {len(Y)} labelled steps: weights {[round(v, 3) for v in w.tolist()]}, bias {b.item():.3f}")

    cfg = json.loads((Path(args.pool) / "config.json").read_text())
    task = get_task(cfg["task"], **cfg.get("task_options", {}))
    probs = {p.id: p for p in task.problems(cfg.get("split", "test"), cfg["n_problems"], seed=cfg.get("problem_seed", 0))}
    by: dict[int, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in (Path(args.pool) / "pool.jsonl").open():
        r = json.loads(line)
        p = probs[r["problem_id"]]
        steps = list(task.split_steps(r["text"])) or [""]
        with torch.no_grad():
            pr = torch.sigmoid(((torch.tensor(step_features(model, tok, task.prompt(p), steps)) - mu) / sd) @ w + b)
        by[r["seed"]][r["problem_id"]].append((bool(r["correct"]), r["answer"], float(pr.min()), float(pr[-1])))

    def pick(xs, key):
        best = max(xs, key=lambda x: x[key])
        votes: collections.Counter = collections.Counter()
        for x in xs:
            if x[1] is not None:
                votes[x[1]] += x[key]
        top = votes.most_common(1)[0][0] if votes else None
        return best[0], any(x[0] for x in xs if top is not None and x[1] == top)

    # rows[method][seed][problem] = 0/1
    rows: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(lambda: collections.defaultdict(dict))
    for seed in sorted(by):
        for pid, xs in by[seed].items():
            rows["pass@N"][seed][pid] = float(any(x[0] for x in xs))
            votes = collections.Counter(x[1] for x in xs if x[1] is not None)
            top = votes.most_common(1)[0][0] if votes else None
            rows["maj@N"][seed][pid] = float(any(x[0] for x in xs if top is not None and x[1] == top))
            for key, agg in ((2, "min"), (3, "last")):
                bo, wt = pick(xs, key)
                rows[f"best-of-N ({agg})"][seed][pid] = float(bo)
                rows[f"weighted ({agg})"][seed][pid] = float(wt)
    n = max(len(xs) for d in by.values() for xs in d.values())
    print(f"N = {n} samples per problem, {len(next(iter(by.values())))} problems, seeds {sorted(by)}")
    print(f"{'method':<22} {'pooled':>7} {'95% CI':>16} " + " ".join(f"{'seed ' + str(s):>8}" for s in sorted(by)))
    for name, per in rows.items():  # pooled: mean over seeds per problem, CI bootstrapped over problems
        pids = list(per[min(per)])
        allv = [sum(per[s][pid] for s in per) / len(per) for pid in pids]
        lo, hi = bootstrap_ci(allv)
        print(f"{name:<22} {sum(allv) / len(allv):>7.3f} [{lo:.3f}, {hi:.3f}] "
              + " ".join(f"{sum(per[s].values()) / len(per[s]):>8.3f}" for s in sorted(per)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
