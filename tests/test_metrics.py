"""pass@k, maj@k, weighted@k and bootstrap CIs against brute-force enumeration."""

from __future__ import annotations

import doctest
import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from deliberate.errors import DeliberateError
from deliberate.eval import metrics
from deliberate.eval.metrics import bootstrap_ci, maj_at_k, pass_at_k, weighted_at_k


def test_doctests():
    assert doctest.testmod(metrics).failed == 0


def brute_pass(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(flags, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def test_pass_at_k_matches_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    n, c, k = 200, 7, 50
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)
    v = pass_at_k(100_000, 3, 1000)
    assert 0 < v < 1 and np.isfinite(v)


@pytest.mark.parametrize("args", [(3, 1, 4), (3, 4, 1), (0, 0, 1), (3, -1, 1), (3, 1, 0)])
def test_pass_at_k_errors(args):
    with pytest.raises(DeliberateError):
        pass_at_k(*args)


def brute_vote(answers, correct, k, weights=None):
    """Independent reference: enumerate subsets, exact fractions, a tie to the answer voted first."""
    weights = weights or [1] * len(answers)
    acc = {}
    for a, c in zip(answers, correct):
        acc.setdefault(a, c)
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        mass = Counter()
        for i in s:
            if answers[i] is not None:
                mass[answers[i]] += Fraction(weights[i]).limit_denominator(10**6)
        if not mass:
            continue
        top = max(mass.values())
        total += acc[next(a for a, m in mass.items() if m == top)]  # Counter keeps first-vote order
    return float(total / len(subsets))


def random_case(rng, n):
    pool = ["1", "2", "3", None]
    answers = [rng.choice(pool) for _ in range(n)]
    correct = [a == "2" for a in answers]
    return answers, correct


def test_maj_at_k_exact_matches_enumeration():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 8)
        answers, correct = random_case(rng, n)
        for k in range(1, n + 1):
            assert maj_at_k(answers, correct, k) == pytest.approx(brute_vote(answers, correct, k), abs=1e-12)


def test_maj_at_k_known_cases():
    assert maj_at_k([None, None, None], [False] * 3, 3) == 0.0
    assert maj_at_k(["5", None, None], [True, False, False], 3) == 1.0  # None never outvotes an answer
    assert maj_at_k(["5", "5", "6", "6", "7"], [True, True, False, False, False], 5) == 1.0  # tie: first vote
    assert maj_at_k(["6", "5", "5", "6", "7"], [False, True, True, False, False], 5) == 0.0
    # k == n is the plain majority vote
    assert maj_at_k(["4", "9", "9"], [True, False, False], 3) == 0.0
    assert maj_at_k(["4", "4", "9"], [True, True, False], 1) == pytest.approx(2 / 3)


def test_maj_at_k_monte_carlo_close_to_exact_and_seeded():
    rng = random.Random(1)
    for _ in range(5):
        answers, correct = random_case(rng, 12)
        exact = maj_at_k(answers, correct, 6)  # C(12, 6) = 924: exact
        mc = maj_at_k(answers, correct, 6, seed=3, exact_limit=0, n_draws=4000)
        assert mc == pytest.approx(exact, abs=0.04)
        assert mc == maj_at_k(answers, correct, 6, seed=3, exact_limit=0, n_draws=4000)
    # above the default limit it switches to Monte-Carlo on its own: C(16, 8) = 12870
    answers, correct = random_case(random.Random(2), 16)
    assert maj_at_k(answers, correct, 8, seed=0) == maj_at_k(answers, correct, 8, seed=0)


def test_maj_at_k_errors():
    with pytest.raises(DeliberateError):
        maj_at_k(["1"], [True], 2)
    with pytest.raises(DeliberateError):
        maj_at_k(["1", "2"], [True], 1)


def test_eval_maj_at_n_is_the_sweeps_majority_on_the_same_samples():
    """One tie rule: maj@n (eval) and the sweep's majority / weighted ``vote`` pick the same answer."""
    from deliberate.search.base import vote
    from deliberate.tasks import get_task

    task, rng = get_task("arith"), random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 6)
        answers, correct = random_case(rng, n)
        won = vote(task, answers)
        assert maj_at_k(answers, correct, n) == float(won == "2"), answers
        scores = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
        won = vote(task, answers, scores)
        assert weighted_at_k(answers, correct, scores, n) == float(won == "2"), (answers, scores)


def test_weighted_at_k_matches_enumeration():
    rng = random.Random(4)
    for _ in range(40):
        n = rng.randint(1, 7)
        answers, correct = random_case(rng, n)
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(n)]
        for k in range(1, n + 1):
            assert weighted_at_k(answers, correct, scores, k) == pytest.approx(
                brute_vote(answers, correct, k, scores), abs=1e-12)
    with pytest.raises(DeliberateError):
        weighted_at_k(["1", "2"], [True, False], [1.0, -1.0], 1)


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 40).astype(float)
    large = rng.integers(0, 2, 1600).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~ 1/sqrt(40x) narrower
    # about the normal-theory width 2 * 1.96 * sd / sqrt(n)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / math.sqrt(large.size), rel=0.15)
    assert bootstrap_ci(small, seed=5) == bootstrap_ci(small, seed=5)
    assert bootstrap_ci([0.3]) == (pytest.approx(0.3), pytest.approx(0.3))


def test_bootstrap_ci_errors():
    with pytest.raises(DeliberateError):
        bootstrap_ci([])
    with pytest.raises(DeliberateError):
        bootstrap_ci([1.0], alpha=1.5)
