"""The curves a sweep's summary carries beside its rows (``summary.json`` ``extra``): accuracy at equal
generated tokens (the compute-matched table), accuracy per bucket of tokens used by plain sampling, and
best-of-N with verifiers of known noise (the verifier "taste" curve). Each is a pure function of the
sweep's rows or its sample pool, kept apart from the sweep's running and resuming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deliberate.rewards.oracle import NoisyVerifier
from deliberate.tasks.base import Task
from deliberate.types import ResultRow


def compute_matched(results: Sequence[ResultRow]) -> list[dict]:
    """Accuracy of every strategy at equal generated tokens: at each token level that some strategy
    reached, each other strategy's accuracy interpolated linearly on its accuracy-vs-tokens curve
    (None outside the range it covered)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r.strategy == "pass@n" or r.generated_tokens is None:
            continue
        curves.setdefault(r.strategy, []).append((r.generated_tokens, r.accuracy))
    levels = sorted({round(t) for c in curves.values() for t, _ in c})
    table = []
    for lv in levels:
        row: dict[str, Any] = {"generated_tokens": lv}
        for s, c in curves.items():
            c = sorted(c)
            xs, ys = [x for x, _ in c], [y for _, y in c]
            row[s] = float(np.interp(lv, xs, ys)) if xs[0] <= lv <= xs[-1] else None
        table.append(row)
    return table


def token_buckets(pool: dict, n_buckets: int = 6) -> list[dict]:
    """Plain sampling, no search: completions grouped by the tokens they used (quantile buckets),
    accuracy per bucket — the "o1 using search was a PSYOP" curve."""
    toks = np.array([r.completion_tokens for rs in pool.values() for r in rs], dtype=float)
    corr = np.array([r.correct for rs in pool.values() for r in rs], dtype=float)
    if toks.size == 0:
        return []
    edges = np.unique(np.quantile(toks, np.linspace(0, 1, n_buckets + 1)))
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        m = (toks >= lo) & ((toks < hi) if i < len(edges) - 2 else (toks <= hi))
        if m.sum() == 0:
            continue
        out.append({"tokens_lo": float(lo), "tokens_hi": float(hi), "mean_tokens": float(toks[m].mean()),
                    "accuracy": float(corr[m].mean()), "samples": int(m.sum())})
    return out


def taste_curve(task: Task, problems, pool: dict, *, budgets: Sequence[int], seeds: Sequence[int],
                sigmas: Sequence[float], delimiter: str, noise_seed: int) -> list[dict]:
    """Best-of-N with a verifier of known noise: score = true correctness + N(0, sigma), per N and
    sigma, against pass@N (sigma=0 is a perfect verifier and reaches pass@N); the pool's steps split
    with ``delimiter`` as search splits them."""
    out = []
    pool_n = max(budgets)
    ns = sorted({n for n in [1, 2, 4, 8, 16, 32, 64, 128] if n <= pool_n} | set(budgets))
    for sigma in sigmas:
        v = NoisyVerifier(task, sigma, seed=noise_seed)
        for n in ns:
            acc = []
            for p in problems:
                for s in seeds:
                    recs = pool[(p.id, s)][:n]
                    sc = [v.score(p, list(task.split_steps(r.text, delimiter)) or [""])[0] for r in recs]
                    acc.append(float(recs[int(np.argmax(sc))].correct))
            out.append({"sigma": sigma, "n": n, "accuracy": float(np.mean(acc))})
    for n in ns:  # the ceiling on the same first-n samples the selections saw
        vals = [float(any(r.correct for r in pool[(p.id, s)][:n])) for p in problems for s in seeds]
        out.append({"sigma": "pass@n", "n": n, "accuracy": float(np.mean(vals))})
    return out
