"""scripts/star_hf_paired.py: A - B held-out accuracy per iteration, pooled over pairs by the cluster bootstrap."""

from __future__ import annotations

import json
import sys

from script_loader import load_script

from deliberate.tasks import get_task


def write_run(run, ids, right):
    (run / "it000").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "arith", "task_options": {}, "eval_problems": len(ids),
                                                 "eval_seed": 0, "eval_by": None}))
    rows = [{"problem_id": k, "samples": [{"correct": k in right}]} for k in ids]
    (run / "it000" / "eval.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")


def test_pairs_pool_as_pipelines_on_the_same_test_problems(tmp_path, monkeypatch, capsys):
    ids = [p.id for p in get_task("arith").problems("test", 6, seed=0)]
    # seed 0: A right on 4 problems, B on 1; seed 1: A and B right on the same 2: +50 and 0 points
    write_run(tmp_path / "a0", ids, set(ids[:4]))
    write_run(tmp_path / "b0", ids, {ids[0]})
    write_run(tmp_path / "a1", ids, set(ids[:2]))
    write_run(tmp_path / "b1", ids, set(ids[:2]))
    monkeypatch.setattr(sys, "argv", ["star_hf_paired.py", *(str(tmp_path / r) for r in ("a0", "b0", "a1", "b1"))])
    load_script("star_hf_paired").main()
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0 | all")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[2:6] == ["2", "12", "0.500", "0.250"]
    mean, ci = cells[6].split(" ", 1)
    lo, hi = (float(x) for x in ci.strip("[]").split(","))
    assert mean == "+25.0" and lo <= 0.0 and hi >= 50.0  # resampling pairs reaches both pairs' own means
