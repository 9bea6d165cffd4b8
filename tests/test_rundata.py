"""Typed run data (``deliberate.types``: RunSummary, ResultRow, SweepRow): what eval and sweep write
reads back and writes out to the same JSON text, and malformed input is one error naming file and field."""

from __future__ import annotations

import json
import re

import pytest
from fakes import FakeBackend

from deliberate.errors import DeliberateError
from deliberate.eval.evaluate import EvalConfig, run_eval
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.tasks import get_task
from deliberate.types import EVAL_ROW_KEYS, SWEEP_ROW_KEYS, ResultRow, RunSummary, SweepRow

OPTS = {"min_ops": 2, "max_ops": 3, "max_operand": 10}
TASK = get_task("arith", **OPTS)
BY_Q = {p.question: p for p in TASK.problems("test", 6, seed=0)}


def coin_solver(prompt: str, rng) -> str:
    """The gold steps, then the gold answer or the gold answer + 1, by a coin flip."""
    p = BY_Q[re.match(r"Q: (.*)\nA:\n", prompt, re.DOTALL).group(1)]
    answer = p.answer if rng.random() < 0.5 else str(int(p.answer) + 1)
    return "\n".join(p.metadata["steps"]) + f"\nAnswer: {answer}\n\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_eval(EvalConfig(task="arith", task_options=OPTS, n_problems=6, n=4, out_dir=str(root / "eval")),
             FakeBackend(coin_solver), task=TASK, progress=False)
    run_sweep(SweepConfig(task="arith", task_options=OPTS, out_dir=str(root / "sweep"),
                          strategies=("majority", "best_of_n", "beam"), budgets=(2, 4), seeds=(0, 1), n_problems=6,
                          verifier="oracle", settings={"max_tokens": 80, "expansions": 2}, taste_sigmas=(0.0,)),
              FakeBackend(coin_solver), task=TASK, progress=False)
    return root


def test_written_summaries_read_back_to_the_same_json_text(runs) -> None:
    for name, keys in (("eval", EVAL_ROW_KEYS), ("sweep", SWEEP_ROW_KEYS)):
        on_disk = json.loads((runs / name / "summary.json").read_text())
        s = RunSummary.from_dict(on_disk, f"{name}/summary.json")
        assert json.dumps(s.to_dict()) == json.dumps(on_disk)  # same keys, order and values
        assert s.task == "arith" and s.results and all(isinstance(r, ResultRow) for r in s.results)
        assert all(list(r.to_dict()) == [k for k in keys if k in r.to_dict()] for r in s.results)
    sweep = RunSummary.from_dict(json.loads((runs / "sweep" / "summary.json").read_text()))
    assert sweep.kind == "sweep" and sweep.seed == (0, 1) and sweep.n_problems == 6 and "taste" in sweep.extra
    bon = next(r for r in sweep.results if r.strategy == "best_of_n" and r.n == 4)
    assert bon.fraction_of_ceiling == pytest.approx(bon.accuracy / bon.pass_at_n)
    assert len(bon.accuracy_per_seed) == 2
    lines = (runs / "sweep" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 * 2 * 6
    for line in lines:
        row = SweepRow.from_dict(json.loads(line))
        assert json.dumps(row.to_dict()) == line and row.key == (row.problem_id, row.strategy, row.n, row.seed)


def test_rows_keep_keys_they_do_not_define_and_their_nulls() -> None:
    row = {"n_problems": 5, "strategy": "beam", "n": 4, "accuracy": 0.0, "ci": [0.0, 0.0], "pass_at_n": 0.0,
           "fraction_of_ceiling": None, "verifier_calls": 12, "seed": 3}
    summary = {"task": "t", "model": "m", "results": [row], "date": "2026-01-01"}
    s = RunSummary.from_dict(summary)
    r = s.results[0]
    assert r.fraction_of_ceiling is None and r.other == {"verifier_calls": 12, "seed": 3}
    assert json.dumps(r.to_dict()) == json.dumps(row) and s.other == {"date": "2026-01-01"}
    assert s.to_dict() == summary and s.seed is None and s.compute is None
    # built in code: every set field, in field order, then the other keys
    built = ResultRow(strategy="greedy", n=1, accuracy=0.5, ci=(0.25, 0.75), wall_s=1.0, n_problems=2,
                      other={"note": "x"})
    assert built.to_dict() == {"strategy": "greedy", "n": 1, "accuracy": 0.5, "ci": [0.25, 0.75], "n_problems": 2,
                               "wall_s": 1.0, "note": "x"}
    assert list(built.to_dict()) == ["strategy", "n", "accuracy", "ci", "n_problems", "wall_s", "note"]
    with pytest.raises(DeliberateError, match=r"must name each set field.*missing \['wall_s'\]"):
        ResultRow(strategy="greedy", n=1, accuracy=0.5, ci=(0.25, 0.75), wall_s=1.0, keys=("strategy", "n", "accuracy",
                                                                                           "ci"))
    with pytest.raises(DeliberateError, match="are fields, not other keys"):
        ResultRow(strategy="greedy", n=1, accuracy=0.5, ci=(0.25, 0.75), other={"wall_s": 1.0})


GOOD_ROW = {"strategy": "greedy", "n": 1, "accuracy": 0.5, "ci": [0.4, 0.6]}


@pytest.mark.parametrize("summary, message", [
    ([1, 2], "runs/x/summary.json: must be a JSON object, got list"),
    ({"task": "t", "model": "m"}, "runs/x/summary.json: 'results' must be a list of result rows (got nothing)"),
    ({"task": "t", "model": "m", "results": {}}, "'results' must be a list of result rows (got dict)"),
    ({"task": "t", "model": "m", "results": [GOOD_ROW, 3]}, "runs/x/summary.json: results[1] must be an object, "
                                                            "got int"),
    ({"task": "t", "model": "m", "results": [{"n": 1}]}, "runs/x/summary.json: results[0] has no 'strategy'"),
    ({"task": "t", "model": "m", "results": [{**GOOD_ROW, "n": True}]}, "results[0]: 'n' must be an integer >= 1"),
    ({"task": "t", "model": "m", "results": [{**GOOD_ROW, "ci": [0.1]}]},
     "results[0]: 'ci' must be a [low, high] pair of numbers (got [0.1])"),
    ({"task": "t", "model": "m", "results": [{**GOOD_ROW, "accuracy": "high"}]},
     "results[0]: 'accuracy' must be a number (got 'high')"),
    ({"task": "t", "model": "m", "results": [{**GOOD_ROW, "accuracy_per_seed": [0.5, "x"]}]},
     "results[0]: 'accuracy_per_seed' must be a list of numbers"),
    ({"model": "m", "results": []}, "runs/x/summary.json: 'task' must be a string (got None)"),
    ({"task": "t", "model": "m", "seed": [0, "1"], "results": []}, "'seed' must be an integer or a list of integers"),
    ({"task": "t", "model": "m", "compute": [1], "results": []}, "runs/x/summary.json: 'compute' must be an object, "
                                                                 "got list"),
    ({"recipe": "grpo", "iterations": []}, "a training run's summary (recipe 'grpo'), not an eval or sweep summary"),
])
def test_malformed_summary_is_one_clear_error(summary, message) -> None:
    with pytest.raises(DeliberateError) as e:
        RunSummary.from_dict(summary, "runs/x/summary.json")
    assert message in str(e.value) and "runs/x/summary.json" in str(e.value)


def sweep_row(**kw):
    row = {"problem_id": "p0", "strategy": "beam", "n": 2, "seed": 0, "answer": None, "gold": "3", "correct": False,
           "any_correct": True, "candidates": 2, "generated_tokens": 40, "prompt_tokens": 20, "model_calls": 2,
           "verifier_sequences": 4, "wall_s": 0.5, "text": ""}
    row.update(kw)
    return {k: v for k, v in row.items() if v != "DROP"}


@pytest.mark.parametrize("row, message", [
    ("not a row", "results.jsonl:3: a sweep row must be an object, got str"),
    (sweep_row(gold="DROP"), "results.jsonl:3: sweep row has no 'gold'"),
    (sweep_row(correct="yes"), "results.jsonl:3: 'correct' must be true or false (got 'yes')"),
    (sweep_row(n=2.0), "results.jsonl:3: 'n' must be an integer (got 2.0)"),
    (sweep_row(answer=7), "results.jsonl:3: 'answer' must be a string or null (got 7)"),
])
def test_malformed_sweep_row_names_file_line_and_field(row, message) -> None:
    assert SweepRow.from_dict(sweep_row(), "x").to_dict() == sweep_row()
    with pytest.raises(DeliberateError, match=re.escape(message)):
        SweepRow.from_dict(row, "results.jsonl:3")


def test_sweep_resume_refuses_a_malformed_results_line(tmp_path) -> None:
    cfg = SweepConfig(task="arith", task_options=OPTS, out_dir=str(tmp_path / "s"), strategies=("majority",),
                      budgets=(2,), n_problems=2, settings={"max_tokens": 80}, taste_sigmas=())
    run_sweep(cfg, FakeBackend(coin_solver), task=TASK, progress=False)
    path = tmp_path / "s" / "results.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["correct"] = "yes"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DeliberateError, match=re.escape(f"{path}:2: 'correct' must be true or false (got 'yes')")):
        run_sweep(cfg, FakeBackend(coin_solver), task=TASK, progress=False)
