"""scripts/recipe_paired.py: paired change of a recipe run's held-out greedy / sampled accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def _load():
    return load_script("recipe_paired")


def _records(d: Path, greedy: list[bool], samples: list[list[bool]]) -> None:
    """An evaluation's records.jsonl as run_eval writes them: one greedy row and n sample rows per problem."""
    d.mkdir(parents=True)
    rows = []
    for i, (g, ss) in enumerate(zip(greedy, samples)):
        rows.append({"problem_id": f"p{i}", "strategy": "greedy", "index": 0, "correct": g})
        rows += [{"problem_id": f"p{i}", "strategy": "sample", "index": j, "correct": c} for j, c in enumerate(ss)]
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_change_of_greedy_and_sampled_accuracy(tmp_path, capsys):
    mod = _load()
    run = tmp_path / "grpo"
    _records(run / "eval000" / "eval", [True, False, False, False], [[True, False]] * 4)
    _records(run / "eval001" / "eval", [True, True, False, False], [[True, True]] * 4)  # a middle evaluation
    _records(run / "eval002" / "eval", [False, True, True, False], [[True, True], [True, False], [True, False],
                                                                    [False, False]])
    g = mod.change(run, "greedy", 0, None)  # default end: the last evaluation
    assert (g["from"], g["to"], g["problems"]) == (0, 2, 4)
    assert g["before"] == 0.25 and g["after"] == 0.5 and g["change"] == pytest.approx(0.25)
    assert (g["up"], g["down"]) == (2, 1) and g["ci"][0] <= 0.25 <= g["ci"][1]
    s = mod.change(run, "pass@1", 0, 1)
    assert s["before"] == 0.5 and s["after"] == 1.0 and (s["up"], s["down"]) == (4, 0)
    assert mod.change(run, "pass@1", 0, None)["change"] == pytest.approx(0.0)  # +0.5, 0, 0, -0.5
    assert mod.main([str(run), "--metric", "greedy"]) == 0
    assert "+25.0 points" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no evaluation 7"):
        mod.change(run, "greedy", 0, 7)
    with pytest.raises(SystemExit, match="not a recipe run directory"):
        mod.change(tmp_path, "greedy", 0, None)
