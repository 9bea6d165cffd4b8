"""scripts/paired_diff.py: paired A - B accuracy over a sweep's problems, averaged over seeds."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


def _load():
    return load_script("paired_diff")


def test_paired_difference_counts_and_ci(tmp_path, capsys):
    mod = _load()
    rows = []
    # 10 problems x 2 seeds at N=4: A right everywhere on problems 0-3, B right on 0-1 and 9 (seed 0 only)
    for p in range(10):
        for s in (0, 1):
            rows.append({"problem_id": f"p{p}", "strategy": "A", "n": 4, "seed": s, "correct": p < 4})
            rows.append({"problem_id": f"p{p}", "strategy": "B", "n": 4, "seed": s,
                         "correct": p < 2 or (p == 9 and s == 0)})
    rows.append({"problem_id": "p0", "strategy": "A", "n": 8, "seed": 0, "correct": True})  # B lacks N=8
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = mod.paired(mod.load(tmp_path / "results.jsonl"), "A", "B", 4)
    # per problem: +1 on p2, p3; -0.5 on p9 -> mean (2 - 0.5) / 10
    assert r["problems"] == 10 and r["mean_diff"] == pytest.approx(0.15)
    assert r["ahead"] == 2 and r["behind"] == 1
    assert r["ci"][0] <= 0.15 <= r["ci"][1] and r["ci"][0] < r["ci"][1]
    assert r["per_seed"] == {0: [0.4, 0.3], 1: [0.4, 0.2]}
    assert mod.paired(mod.load(tmp_path / "results.jsonl"), "A", "B", 8) is None
    assert mod.main([str(tmp_path), "A", "B"]) == 0
    out = capsys.readouterr().out
    assert "N=4" in out and "+15.0 points" in out and "N=8" not in out  # N=8 has no B rows: skipped
    assert mod.main([str(tmp_path / "nope"), "A", "B"]) == 2


def test_also_pools_sweeps_as_pipelines_on_shared_problems(tmp_path, capsys):
    mod = _load()
    for name, a_right in (("one", True), ("two", False)):  # the same problem ids in both sweeps
        d = tmp_path / name
        d.mkdir()
        rows = [{"problem_id": f"p{p}", "strategy": s, "n": 4, "seed": 0, "correct": ok}
                for p in range(5) for s, ok in (("A", a_right), ("B", not a_right))]
        (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.main([str(tmp_path / "one"), "A", "B", "--also", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    # 10 units (5 problems x 2 sweeps), +1 on five and -1 on five: not 5 problems averaged to 0
    assert "+0.0 points" in out and "ahead on 5, behind on 5 of 10 problems (2 sweeps)" in out
    # the sweeps disagree completely, so resampling sweeps spans -1 .. +1: a flat bootstrap over the 10
    # units would give about +-0.3
    assert "[-100.0, +100.0]" in out and "cluster-bootstrap" in out
    assert mod.main([str(tmp_path / "one"), "A", "B", "--also", str(tmp_path / "nope")]) == 2


def test_b_from_pairs_a_strategy_of_one_sweep_with_another_sweep(tmp_path, capsys):
    mod = _load()
    for name, right in (("prm", {0, 1, 2}), ("orm", {0})):  # same problems and seeds, another verifier
        d = tmp_path / name
        d.mkdir()
        rows = [{"problem_id": f"p{p}", "strategy": s, "n": 4, "seed": 0, "correct": ok}
                for p in range(4) for s, ok in (("best_of_n", p in right), ("majority", False))]
        (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.main([str(tmp_path / "prm"), "best_of_n", "best_of_n", "--b-from", str(tmp_path / "orm")]) == 0
    out = capsys.readouterr().out
    # the same strategy name on both sides is not one strategy: +1 on p1, p2 of 4 problems
    assert "+50.0 points" in out and "ahead on 2, behind on 0 of 4 problems" in out
    assert "seed 0: 0.750 vs 0.250" in out
    assert mod.main([str(tmp_path / "prm"), "best_of_n", "best_of_n", "--b-from", str(tmp_path / "nope")]) == 2
    assert mod.main([str(tmp_path / "prm"), "best_of_n", "majority", "--b-from", str(tmp_path / "orm"),
                     "--also", str(tmp_path / "orm")]) == 2
