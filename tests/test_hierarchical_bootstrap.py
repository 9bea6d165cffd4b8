"""The cluster bootstrap against simulations whose variance is known (issue 33 item 2).

Data: y[p, i] = a_p + b_i + e_pi with pipeline, problem and noise effects of known spread, so the
grand mean's true standard deviation is sqrt(sa^2/P + sb^2/N + se^2/(P N)) and its true value is 0.
"""

import numpy as np
import pytest

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci, hierarchical_bootstrap_ci


def simulate(sa: float, sb: float, se: float, pipes: int = 3, probs: int = 60, reps: int = 120):
    rng = np.random.default_rng(123)
    hier, flat = [], []
    for r in range(reps):
        y = rng.normal(0, sa, (pipes, 1)) + rng.normal(0, sb, (1, probs)) + rng.normal(0, se, (pipes, probs))
        hier.append(hierarchical_bootstrap_ci(y, n_boot=200, seed=r))
        flat.append(bootstrap_ci(y.ravel(), n_boot=200, seed=r))
    true_width = 2 * 1.96 * np.sqrt(sa ** 2 / pipes + sb ** 2 / probs + se ** 2 / (pipes * probs))

    def summary(cis):
        cis = np.asarray(cis)
        return float(np.mean((cis[:, 0] <= 0) & (0 <= cis[:, 1]))), float(np.mean(cis[:, 1] - cis[:, 0]))
    return summary(hier), summary(flat), true_width


def test_shared_problems_dominate_the_flat_interval_is_too_narrow_the_clustered_one_is_not():
    (cov_h, width_h), (cov_f, width_f), true_width = simulate(sa=0.02, sb=0.3, se=0.1)
    assert cov_h >= 0.88
    assert abs(width_h / true_width - 1) < 0.2
    assert cov_f <= 0.82 and width_f < 0.7 * true_width


def test_pipeline_variance_is_resampled():
    (cov_h, width_h), (cov_f, width_f), _ = simulate(sa=0.1, sb=0.05, se=0.1)
    assert width_h > 3 * width_f and cov_h > cov_f + 0.3


def test_own_problems_per_pipeline_and_ragged_rows():
    rows = [[1.0] * 10, [0.0] * 30]  # two pipelines, disjoint problem sets of different sizes
    lo, hi = hierarchical_bootstrap_ci(rows, shared_problems=False, n_boot=500)
    assert lo == 0.0 and hi == 1.0  # only the pipeline draw varies: means 0, 0.5 or 1
    with pytest.raises(DeliberateError, match="equal row lengths"):
        hierarchical_bootstrap_ci(rows)


def test_one_pipeline_reduces_to_the_problem_bootstrap():
    v = np.random.default_rng(0).random(50)
    assert hierarchical_bootstrap_ci([v], n_boot=300, seed=4) == pytest.approx(bootstrap_ci(v, n_boot=300, seed=4),
                                                                               abs=0.03)
