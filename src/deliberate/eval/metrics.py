"""Scaling metrics from n >= k samples per problem: unbiased pass@k, maj@k, weighted@k, bootstrap CIs.

Every estimator here answers "what accuracy would a method that drew k samples get?" from a
*larger* pool of n samples, so one sampling run gives the whole curve k = 1, 2, 4, ... n with less
variance than drawing k samples afresh for each k. Per-problem values are averaged over problems by
the caller; :func:`bootstrap_ci` turns the per-problem values into a 95% interval, and
:func:`hierarchical_bootstrap_ci` does so for several independent pipelines (seeds) on shared problems.

All functions are pure (no I/O, no global random state: every random choice takes a ``seed``).

Votes (maj@k, weighted@k) follow the rule of the sweep's majority and weighted strategies
(:func:`deliberate.search.base.vote`), so maj@n of an eval equals the sweep's majority at N = n on the
same samples: only well-formed answers vote (the task's ``normalize`` gives None otherwise, and None
never votes); the largest count (or score mass) wins; a tie goes to the tied answer whose first vote
comes earliest in sample order, as search-and-learn's ``find_majority_answer`` picks; a subset with no
vote scores 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deliberate.errors import DeliberateError

#: enumerate all C(n, k) subsets exactly up to this many; above it, Monte-Carlo
EXACT_SUBSET_LIMIT = 5000
#: Monte-Carlo draws above the limit (standard error <= 0.5 / sqrt(2000) ~ 0.011 per problem)
MC_DRAWS = 2000


def _check_nk(n: int, k: int) -> None:
    for name, v in (("n", n), ("k", k)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise DeliberateError(f"{name} must be an integer (got {v!r})")
    if n < 1:
        raise DeliberateError(f"need at least one sample (n={n})")
    if not 1 <= k <= n:
        raise DeliberateError(f"k must be in [1, n] (got k={k}, n={n}): cannot estimate @{k} from {n} samples")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    The probability that a uniformly random size-``k`` subset of the ``n`` samples holds at least
    one correct sample (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").
    Computed as a product of ratios, so it is stable for large ``n`` where the binomials overflow.

    >>> pass_at_k(10, 0, 5), pass_at_k(10, 10, 1), pass_at_k(4, 1, 1)
    (0.0, 1.0, 0.25)
    >>> round(pass_at_k(4, 1, 2), 6)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    _check_nk(n, k)
    if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c <= n:
        raise DeliberateError(f"c (correct samples) must be an integer in [0, n={n}] (got {c!r})")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _vote_at_k(answers: Sequence[str | None], correct: Sequence[bool], weights: np.ndarray, k: int,
               seed: int, exact_limit: int, n_draws: int) -> float:
    """Expected correctness of the weighted vote over a uniformly random size-k subset (see maj_at_k)."""
    n = len(answers)
    _check_nk(n, k)
    if len(correct) != n:
        raise DeliberateError(f"answers and correct differ in length ({n} vs {len(correct)})")
    ids: dict[str, int] = {}
    col = np.array([-1 if a is None else ids.setdefault(a, len(ids)) for a in answers], dtype=np.int64)
    if not ids:
        return 0.0  # every sample lacks an answer: the vote has nothing to pick
    corr = np.asarray(correct, dtype=np.float64)
    # an answer's correctness: mean over its samples (they agree for any deterministic verifier)
    ans_correct = np.zeros(len(ids))
    np.add.at(ans_correct, col[col >= 0], corr[col >= 0])
    ans_correct /= np.bincount(col[col >= 0], minlength=len(ids))

    if math.comb(n, k) <= exact_limit:
        subsets = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    else:
        rng = np.random.default_rng(seed)
        subsets = np.sort(np.argsort(rng.random((n_draws, n)), axis=1)[:, :k], axis=1)  # in sample order
    m, n_ans = len(subsets), len(ids)
    # (m, A) tables of how often / with what mass each answer occurs in each subset; None never votes
    sub_col = col[subsets]
    votes = sub_col >= 0
    cell = (np.arange(m)[:, None] * n_ans + sub_col)[votes]
    present = np.bincount(cell, minlength=m * n_ans).reshape(m, n_ans) > 0
    totals = np.bincount(cell, weights=weights[subsets][votes], minlength=m * n_ans).reshape(m, n_ans)
    top = totals.max(axis=1, keepdims=True)
    # the tied top answers (all present ones if every weight is 0); of those, the one voted first in
    # sample order wins; a subset of only answer-less samples has no winner and scores 0
    tied = present & np.isclose(totals, top, rtol=1e-9, atol=0.0)
    first = np.full((m, n_ans), k)
    for t in range(k - 1, -1, -1):  # backwards, so each answer keeps its earliest position
        voted = sub_col[:, t] >= 0
        first[np.flatnonzero(voted), sub_col[voted, t]] = t
    winner = np.where(tied, first, k + 1).argmin(axis=1)
    value = np.where(tied.any(axis=1), ans_correct[winner], 0.0)
    return float(value.mean())


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int, seed: int = 0, *,
             exact_limit: int = EXACT_SUBSET_LIMIT, n_draws: int = MC_DRAWS) -> float:
    """Expected accuracy of majority vote over a uniformly random size-``k`` subset of n samples.

    ``answers[i]`` is sample i's normalised answer (None when it has none), ``correct[i]`` whether
    it is right. Within a subset the most frequent answer wins; None never votes, and a subset of
    only None scores 0. A tie goes to the answer voted first in sample order (the module's rule).
    ``k == n`` is the plain majority vote over all samples. The expectation is exact (all subsets
    enumerated) when ``C(n, k) <= exact_limit``, else estimated from ``n_draws`` random subsets drawn with ``seed`` (standard error at most
    ``0.5 / sqrt(n_draws)``).

    >>> maj_at_k(["7", "7", "3", None], [True, True, False, False], k=4)
    1.0
    >>> maj_at_k(["7", "3"], [True, False], k=2), maj_at_k(["3", "7"], [False, True], k=2)  # ties: first vote
    (1.0, 0.0)
    >>> round(maj_at_k(["7", "7", "3"], [True, True, False], k=1), 4)  # k=1 is plain accuracy
    0.6667
    """
    return _vote_at_k(answers, correct, np.ones(len(answers)), k, seed, exact_limit, n_draws)


def weighted_at_k(answers: Sequence[str | None], correct: Sequence[bool], scores: Sequence[float], k: int,
                  seed: int = 0, *, exact_limit: int = EXACT_SUBSET_LIMIT, n_draws: int = MC_DRAWS) -> float:
    """Like :func:`maj_at_k`, but each answer's vote is the sum of its samples' verifier ``scores``.

    Scores must be finite and >= 0 (probabilities, say). Exact ties go to the answer voted first.

    >>> weighted_at_k(["7", "3", "3"], [True, False, False], [0.9, 0.2, 0.3], k=3)
    1.0
    >>> maj_at_k(["7", "3", "3"], [True, False, False], k=3)
    0.0
    """
    w = np.asarray(scores, dtype=np.float64)
    if w.shape != (len(answers),):
        raise DeliberateError(f"answers and scores differ in length ({len(answers)} vs {w.size})")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DeliberateError("scores must be finite and >= 0")
    return _vote_at_k(answers, correct, w, k, seed, exact_limit, n_draws)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``1 - alpha`` interval of the mean of ``values`` (one value per problem).

    Problems are resampled with replacement ``n_boot`` times; the interval is the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled means.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> lo, hi = bootstrap_ci([0, 1] * 50)
    >>> lo < 0.5 < hi
    True
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise DeliberateError("bootstrap_ci needs at least one value")
    _check_bootstrap("bootstrap_ci", [v], n_boot, alpha)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // v.size)  # bound memory at ~32 MB of indices per chunk
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        means[start:start + m] = v[rng.integers(0, v.size, size=(m, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ratio_ci(numerator: Sequence[float], denominator: Sequence[float], n_boot: int = 2000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(numerator) / mean(denominator)`` (one pair per problem).

    Problems are resampled jointly, so the interval of e.g. best-of-N accuracy as a fraction of pass@N
    accounts for both being measured on the same problems. Resamples whose denominator mean is 0 are
    dropped (a ratio of nothing); every resample being such is an error.

    >>> bootstrap_ratio_ci([1.0, 0.0], [1.0, 1.0], n_boot=1)[0] in (0.0, 0.5, 1.0)
    True
    >>> bootstrap_ratio_ci([0.5] * 10, [1.0] * 10)
    (0.5, 0.5)
    """
    num = np.asarray(numerator, dtype=np.float64).ravel()
    den = np.asarray(denominator, dtype=np.float64).ravel()
    if num.size == 0 or num.size != den.size:
        raise DeliberateError(f"bootstrap_ratio_ci needs two equal-length, non-empty sequences "
                              f"(got {num.size} and {den.size} values)")
    _check_bootstrap("bootstrap_ratio_ci", [num, den], n_boot, alpha)
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1, 4_000_000 // num.size)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, num.size, size=(min(chunk, n_boot - start), num.size))
        d = den[idx].mean(axis=1)
        ok = d != 0
        ratios.append(num[idx][ok].mean(axis=1) / d[ok])
    r = np.concatenate(ratios)
    if r.size == 0:
        raise DeliberateError("bootstrap_ratio_ci: the denominator is 0 in every resample")
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(values: Sequence[Sequence[float]], n_boot: int = 2000, alpha: float = 0.05,
                              seed: int = 0, shared_problems: bool = True) -> tuple[float, float]:
    """Two-stage (cluster) bootstrap interval of the grand mean over several independent pipelines.

    ``values[p][i]`` is pipeline ``p``'s value on problem ``i`` (an accuracy, or a paired difference of
    two strategies averaged over that pipeline's seeds). Each resample draws pipelines with replacement,
    then problems with replacement. With ``shared_problems`` (every pipeline was evaluated on the same
    problems, in the same order: a rectangular array) one draw of problems serves all pipelines, so a
    problem that is hard for every pipeline counts once, not once per pipeline; treating the
    (pipeline, problem) pairs as independent would make the interval too narrow. Without it each
    pipeline has its own problems (rows may differ in length) and each draws its own.

    In simulations with known variance (tests/test_hierarchical_bootstrap.py) the 95% interval covers the
    true mean ~93% of the time when problems dominate the variance, where the flat per-(pipeline,
    problem) bootstrap covers ~72%; with only 3 pipelines and between-pipeline variance dominating, any
    bootstrap over 3 clusters is short (~75% coverage, the flat one ~26%): more pipelines is the cure.

    >>> hierarchical_bootstrap_ci([[1.0, 1.0], [1.0, 1.0]])
    (1.0, 1.0)
    >>> lo, hi = hierarchical_bootstrap_ci([[0, 1] * 20, [1, 0] * 20, [0, 1] * 20])
    >>> lo < 0.5 < hi
    True
    """
    rows = [np.asarray(r, dtype=np.float64).ravel() for r in values]
    if not rows or any(r.size == 0 for r in rows):
        raise DeliberateError("hierarchical_bootstrap_ci needs at least one pipeline and one problem each")
    if shared_problems and len({r.size for r in rows}) != 1:
        raise DeliberateError("shared_problems needs every pipeline on the same problems (equal row lengths); "
                              "pass shared_problems=False for pipelines with their own problems")
    _check_bootstrap("hierarchical_bootstrap_ci", rows, n_boot, alpha)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    if shared_problems:
        grid = np.stack(rows)
        n_pipes, n_probs = grid.shape
        chunk = max(1, 4_000_000 // grid.size)  # bound memory at ~32 MB of gathered values per chunk
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            pipes = rng.integers(0, n_pipes, size=(m, n_pipes, 1))
            probs = rng.integers(0, n_probs, size=(m, 1, n_probs))
            means[start:start + m] = grid[pipes, probs].mean(axis=(1, 2))
    else:
        for b in range(n_boot):
            pipes = rng.integers(0, len(rows), size=len(rows))
            means[b] = np.mean([rows[p][rng.integers(0, rows[p].size, size=rows[p].size)].mean() for p in pipes])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def pooled_pipelines_ci(per_pipeline: Sequence[Mapping[str, float]], n_boot: int = 2000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Grand mean and :func:`hierarchical_bootstrap_ci` of per-problem values from several pipelines.

    ``per_pipeline[p]`` maps problem id -> value for pipeline ``p`` (e.g. one training seed's paired
    difference per test problem). Pipelines that all answered the same problems share the problem draw
    (the usual case: every seed on one test set); otherwise each keeps its own problems.

    >>> pooled_pipelines_ci([{"a": 1.0, "b": 0.0}, {"b": 0.0, "a": 1.0}], n_boot=10)[0]
    0.5
    """
    if not per_pipeline or any(not d for d in per_pipeline):
        raise DeliberateError("pooled_pipelines_ci needs at least one pipeline with at least one problem")
    ids = sorted(per_pipeline[0])
    shared = all(sorted(d) == ids for d in per_pipeline)
    rows = [[d[k] for k in ids] for d in per_pipeline] if shared else [list(d.values()) for d in per_pipeline]
    mean = float(np.mean([np.mean(r) for r in rows]))
    return mean, hierarchical_bootstrap_ci(rows, n_boot=n_boot, alpha=alpha, seed=seed, shared_problems=shared)


def _check_bootstrap(what: str, arrays: Sequence[np.ndarray], n_boot: Any, alpha: Any) -> None:
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise DeliberateError(f"{what}: values must be finite")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise DeliberateError(f"n_boot must be an integer >= 1 (got {n_boot!r})")
    if not 0 < alpha < 1:
        raise DeliberateError(f"alpha must be in (0, 1) (got {alpha!r})")
