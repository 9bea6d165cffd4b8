"""scripts/fraction_of_pass.py and eval.metrics.bootstrap_ratio_ci: selection accuracy as a fraction of pass@N."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_loader import load_script

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ratio_ci


def test_ratio_ci_brackets_the_ratio_and_resamples_jointly():
    rng = np.random.default_rng(1)
    den = (rng.random(300) < 0.8).astype(float)
    num = den * (rng.random(300) < 0.9)  # selection is right only where the ceiling is
    lo, hi = bootstrap_ratio_ci(num, den)
    r = num.mean() / den.mean()
    assert lo < r < hi and hi - lo < 0.12
    assert hi <= 1.0  # joint resampling: never above the ceiling, unlike a ratio of two separate intervals
    assert bootstrap_ratio_ci(num, den, seed=3) != (lo, hi)
    assert bootstrap_ratio_ci(num, den, seed=3) == bootstrap_ratio_ci(num, den, seed=3)


@pytest.mark.parametrize("num, den", [([], []), ([1.0], [1.0, 1.0]), ([float("nan")], [1.0]), ([1.0], [0.0])])
def test_ratio_ci_refuses_bad_input(num, den):
    with pytest.raises(DeliberateError):
        bootstrap_ratio_ci(num, den)


def _rows():
    rows = []
    # 4 problems x 2 seeds at N=16: a ceiling on p0-p2; best_of_n right on p0, p1 (both seeds) and p2 (seed 0)
    for p in range(4):
        for s in (0, 1):
            ceil = p < 3
            rows.append({"problem_id": f"p{p}", "strategy": "best_of_n", "n": 16, "seed": s,
                         "correct": p < 2 or (p == 2 and s == 0), "any_correct": ceil})
            rows.append({"problem_id": f"p{p}", "strategy": "majority", "n": 16, "seed": s,
                         "correct": p == 0, "any_correct": ceil})
    return rows


def test_fraction_by_hand(tmp_path, capsys):
    mod = load_script("fraction_of_pass")
    r = mod.fraction(_rows(), "best_of_n", 16)
    # accuracy (1 + 1 + 0.5 + 0) / 4, pass@16 3 / 4 -> 2.5 / 3
    assert r["accuracy"] == pytest.approx(0.625) and r["pass"] == pytest.approx(0.75)
    assert r["fraction"] == pytest.approx(2.5 / 3)
    assert r["ci"][0] <= r["fraction"] <= r["ci"][1]
    assert r["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(2 / 3)}
    assert mod.fraction(_rows(), "best_of_n", 4) is None
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(x) for x in _rows()) + "\n")
    assert mod.main([str(tmp_path), "best_of_n", "majority"]) == 0
    out = capsys.readouterr().out
    assert "best_of_n    0.625 / 0.750 = 0.833" in out and "majority     0.250 / 0.750 = 0.333" in out


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    mod = load_script("fraction_of_pass")
    assert mod.main([str(tmp_path / "nope"), "best_of_n"]) == 2
    (tmp_path / "results.jsonl").write_text(json.dumps({"problem_id": "p", "strategy": "best_of_n", "n": 16,
                                                        "seed": 0, "correct": True}) + "\n")
    assert mod.main([str(tmp_path), "best_of_n"]) == 2
    assert "any_correct" in capsys.readouterr().err
    assert mod.main([str(tmp_path), "weighted"]) == 2
