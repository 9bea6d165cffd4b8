"""examples/: each extension is one file, loaded as a user loads it ($DELIBERATE_PLUGINS) and run for real
through the CLI on the tiny model at small sizes: the task (my_tasks.py) lists, evaluates and sweeps; the
strategy (custom_strategy.py) and the verifier (custom_verifier.py) run in ``deliberate sweep``; the recipe
(custom_recipe.py) is listed by ``deliberate train --help`` and trains one short iteration. python_api.py
runs as a script."""

from __future__ import annotations

import json
import random
import re
import runpy
from pathlib import Path

import pytest
from conftest import SMALL_ARITH  # the task options easy_ckpt was trained on
from fakes import FakeBackend, step_prefixes

from deliberate import plugins
from deliberate.cli import main_cli
from deliberate.rewards import get_verifier
from deliberate.search import SearchContext, SearchSettings, run_search
from deliberate.tasks import get_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL_ARITH_FLAGS = [x for k, v in SMALL_ARITH.items() for x in ("--task-arg", f"{k}={v}")]


@pytest.fixture
def use_example(monkeypatch, clean_registries):
    """``use_example("my_tasks.py")`` names the example in $DELIBERATE_PLUGINS; what it registered (its
    recipes too) is forgotten after the test (clean_registries)."""
    return lambda *names: monkeypatch.setenv(plugins.ENV, ",".join(str(EXAMPLES / n) for n in names))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- my_tasks.py: a task (with a verifier and a strategy) ------------------------------------------------------


def test_the_example_task_lists_evaluates_and_sweeps(tmp_path, tiny_ckpt, capsys, monkeypatch, use_example):
    monkeypatch.delenv(plugins.ENV, raising=False)
    assert main_cli(["eval", "--task", "times", "--model", str(tiny_ckpt), "--n-problems", "2"]) == 2
    assert "unknown task 'times'" in capsys.readouterr().err

    use_example("my_tasks.py")
    assert main_cli(["tasks"]) == 0
    assert "times" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert main_cli(["eval", "--task", "times", "--task-arg", "max_digits=2", "--model", str(tiny_ckpt), "--n", "2",
                     "--n-problems", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "times" and summary["config"]["task_options"] == {"max_digits": 2}
    records = jsonl(out / "records.jsonl")
    assert {r["problem_id"] for r in records} == {f"times-test-0-{i}" for i in range(3)}
    assert {r["gold"] for r in records} == {p.answer for p in get_task("times", max_digits=2).problems("test", 3)}
    monkeypatch.setenv("COLUMNS", "10000")  # argparse then keeps each flag's help on one line
    with pytest.raises(SystemExit):
        main_cli(["sweep", "--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.lstrip().startswith("--verifier VERIFIER"))
    kinds = {k.strip() for k in line.partition("kinds:")[2].split(",")}
    assert "shortest" in kinds and {"oracle", "outcome", "prm"} <= kinds  # the plug-in verifier beside the built-ins
    out = tmp_path / "sweep"
    code = main_cli(["sweep", "--task", "times", "--task-arg", "max_digits=2", "--model", str(tiny_ckpt),
                     "--verifier", "shortest", "--strategies", "majority,best_of_n", "--budgets", "1,2",
                     "--seeds", "0", "--n-problems", "3", "--taste=", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task"] == "times" and summary["config"]["task_options"] == {"max_digits": 2}
    assert summary["config"]["verifier"] == "shortest"
    assert {r["strategy"] for r in summary["results"]} >= {"majority", "best_of_n"}

    # a plug-in strategy next to a built-in one, with a built-in verifier
    capsys.readouterr()
    out = tmp_path / "filtered"
    code = main_cli(["sweep", "--task", "times", "--model", str(tiny_ckpt), "--verifier", "oracle", "--strategies",
                     "majority,filtered_majority", "--budgets", "2", "--seeds", "0", "--n-problems", "3", "--taste=",
                     "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = [line for line in printed.out.splitlines() if line.split()[:1] in (["majority"], ["filtered_majority"])]
    assert len(table) == 2 and len({line.index(" 2 ") for line in table}) == 1  # columns aligned past a long name
    mine = [r for r in jsonl(out / "results.jsonl") if r["strategy"] == "filtered_majority"]
    times = get_task("times")  # the verifier scored every step prefix of its samples, the answer's among them
    assert len(mine) == 3 and all(r["generated_tokens"] > 0 for r in mine)
    assert all(r["verifier_sequences"] >= len(times.split_steps(r["text"])) > 0 for r in mine)

    # the task's own option checks still reach the user as one line
    assert main_cli(["eval", "--task", "times", "--task-arg", "max_digits=0", "--model", str(tiny_ckpt)]) == 2
    assert "max_digits must be >= 1" in capsys.readouterr().err


def test_the_example_task_checks_its_own_rationales(use_example):
    use_example("my_tasks.py")
    task = get_task("times", max_digits=4)
    problems = task.problems("train", 20, seed=3)
    assert problems == task.problems("train", 20, seed=3)  # same seed, same problems
    assert not {p.question for p in problems} & {p.question for p in task.problems("test", 20, seed=3)}
    for p in problems:
        text = task.rationale(p)
        assert task.is_correct(task.extract_answer(text), p)
        assert all(task.step_correct(p, task.split_steps(text)))
    p = problems[0]
    wrong = [p.metadata["steps"][0].replace("=", "=1")] + list(p.metadata["steps"][1:])
    assert task.step_correct(p, wrong) == [False] * len(wrong)


# --- custom_strategy.py ------------------------------------------------------------------------------------------

TASK = get_task("arith", min_ops=2, max_ops=3, max_operand=10)
PROBLEMS = TASK.problems("test", 12, seed=0)
BY_Q = {p.question: p for p in PROBLEMS}


def coin_solver(prompt: str, rng: random.Random) -> str:
    """The gold rationale, its answer off by one with probability 0.5."""
    p = BY_Q[re.match(r"Q: (.*)\nA:\n", prompt, re.DOTALL).group(1)]
    answer = p.answer if rng.random() < 0.5 else str(int(p.answer) + 1)
    return "\n".join(p.metadata["steps"]) + f"\nAnswer: {answer}\n\n"


def majority(answers):
    """Most frequent non-None answer, ties to the one seen first."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None


def test_the_example_strategy_votes_among_the_better_half(use_example):
    use_example("custom_strategy.py")
    ctx = SearchContext(FakeBackend(coin_solver), TASK, SearchSettings(n=4, max_tokens=80),
                        verifier=get_verifier("oracle", task=TASK))
    results = run_search("top_half_vote", PROBLEMS, ctx)
    decided = 0
    for p, r in zip(PROBLEMS, results):
        right = sum(TASK.is_correct(c.answer, p) for c in r.candidates)
        assert len(r.candidates) == 4 and r.verifier_sequences == step_prefixes(c.steps for c in r.candidates)
        if 2 * right >= 4:  # the perfect verifier's top half is all correct
            assert TASK.is_correct(r.answer, p)
            decided += right < 3  # a tie (2 of 4) that a plain majority vote may lose
        else:  # the median score is 0: everything is kept, a plain majority vote
            assert r.answer == majority([c.answer for c in r.candidates])
    assert decided  # some problem exercised the filtering


def test_the_example_strategy_runs_through_deliberate_sweep(tmp_path, tiny_ckpt, capsys, use_example):
    use_example("custom_strategy.py")
    base = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--model", str(tiny_ckpt), "--strategies",
            "majority,top_half_vote", "--budgets", "2,4", "--seeds", "0", "--n-problems", "4", "--taste="]
    # it says it needs a verifier: refused before any model loads
    assert main_cli(base + ["--out", str(tmp_path / "none")]) == 2
    assert "strategies top_half_vote need --verifier" in capsys.readouterr().err
    out = tmp_path / "sweep"
    assert main_cli(base + ["--verifier", "noisy:1", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "top_half_vote" in capsys.readouterr().out
    pool = {(r["problem_id"], r["index"]): r["answer"] for r in jsonl(out / "pool.jsonl")}
    pool_text = {(r["problem_id"], r["index"]): r["text"] for r in jsonl(out / "pool.jsonl")}
    scores = {(r["problem_id"], r["index"]): min(r["scores"], default=0.0) for r in jsonl(out / "pool_scores.jsonl")}
    rows = [r for r in jsonl(out / "results.jsonl") if r["strategy"] == "top_half_vote"]
    assert sorted((r["problem_id"], r["n"]) for r in rows) == sorted((f"arith-test-0-{i}", n) for i in range(4)
                                                                     for n in (2, 4))
    for r in rows:  # its select on the first n pool samples, recomputed here from the files
        cands = [(pool[(r["problem_id"], j)], scores[(r["problem_id"], j)]) for j in range(r["n"])]
        median = sorted((s for _, s in cands), reverse=True)[(r["n"] - 1) // 2]
        kept = [a for a, s in cands if s >= median]
        assert r["answer"] == (majority(kept) if majority(kept) is not None else kept[0])
        texts = [TASK.split_steps(t) for t in (pool_text[(r["problem_id"], j)] for j in range(r["n"]))]
        assert r["verifier_sequences"] == step_prefixes(texts) and r["model_calls"] == 1 and r["generated_tokens"] > 0


# --- custom_verifier.py ------------------------------------------------------------------------------------------


def test_the_example_verifier_recomputes_each_equation(use_example):
    use_example("custom_verifier.py")
    task = get_task("arith")
    calc = get_verifier("calculator", task=task, wrong=0.25)
    for p in task.problems("test", 20):
        steps = list(task.split_steps(task.rationale(p)))
        assert calc.score(p, steps) == [1.0] * len(steps)  # gold steps are arithmetically right
        i = len(steps) - 2  # the last equation, before the Answer line
        slip = steps[:i] + [re.sub(r"=(\d+)$", lambda m: f"={int(m.group(1)) + 1}", steps[i])] + steps[i + 1:]
        assert calc.score(p, slip) == [1.0] * i + [0.25] * (len(steps) - i)  # from the slip on
    assert calc.score(None, ["3*4=12", "Answer: 13"]) == [1.0, 0.25]  # the answer must repeat the last result
    assert calc.score(None, ["(1+2)/4=0.75", "let me think", "Answer: 0.75"]) == [1.0, 1.0, 1.0]
    assert calc.score(None, ["2**40=1", "__import__('os')=1"]) == [0.25, 0.25]  # not arithmetic: never evaluated
    assert calc.stats.calls == 43 and calc.describe() == {"name": "calculator", "wrong": 0.25}
    with pytest.raises(Exception, match=r"bad options for verifier 'calculator': wrong must be in \[0, 1\]"):
        get_verifier("calculator", wrong=2)
    with pytest.raises(Exception, match=r"unknown option 'wrng' \(did you mean 'wrong'\?\)"):
        get_verifier("calculator", wrng=0.5)


def test_the_example_verifier_runs_in_a_sweep(tmp_path, easy_ckpt, capsys, use_example):
    use_example("custom_verifier.py")
    out = tmp_path / "sweep"
    code = main_cli(["sweep", "--task", "arith", *SMALL_ARITH_FLAGS, "--model", str(easy_ckpt), "--verifier",
                     "calculator", "--verifier-arg", "wrong=0.1", "--strategies", "majority,best_of_n,beam",
                     "--budgets", "4", "--seeds", "0", "--n-problems", "6", "--taste=", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["verifier"] == "calculator"
    assert {r["strategy"] for r in summary["results"]} >= {"majority", "best_of_n", "beam"}
    task = get_task("arith", **SMALL_ARITH)
    by_id = {p.id: p for p in task.problems("test", 6)}
    calc = get_verifier("calculator", wrong=0.1)
    texts = {(r["problem_id"], r["index"]): r["text"] for r in jsonl(out / "pool.jsonl")}
    scored = jsonl(out / "pool_scores.jsonl")
    assert len(scored) == len(texts) == 24
    for r in scored:  # the sweep's scores are the example's, on the task's steps of each pool sample
        key = (r["problem_id"], r["index"])
        assert r["scores"] == calc.score(by_id[key[0]], list(task.split_steps(texts[key])))
    finals = [r["scores"][-1] for r in scored if r["scores"]]
    assert set(finals) == {1.0, 0.1}  # this model both slips and does not
    beam = [r for r in jsonl(out / "results.jsonl") if r["strategy"] == "beam"]
    assert len(beam) == 6 and all(r["verifier_sequences"] > 0 for r in beam)  # step-level search called it


# --- custom_recipe.py --------------------------------------------------------------------------------------------


def test_the_example_recipe_is_listed_and_trains(tmp_path, easy_ckpt, capsys, monkeypatch, use_example):
    monkeypatch.delenv(plugins.ENV, raising=False)
    assert main_cli(["train", "rft", "--help"]) == 2
    assert "unknown recipe 'rft'; valid recipes: " in capsys.readouterr().err
    use_example("custom_recipe.py")
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit):
        main_cli(["train", "--help"])
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert "Rejection-sampling fine-tuning" in listed["rft"] and "rest-em" in listed  # beside the built-ins
    assert main_cli(["train", "rtf"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("(did you mean 'rft'?)")

    out = tmp_path / "rft"
    argv = ["train", "rft", "--model", str(easy_ckpt), *SMALL_ARITH_FLAGS, "--n-train", "12", "--k", "4",
            "--eval-problems", "6", "--steps", "2", "--batch-size", "8"]
    assert main_cli(argv + ["--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["iter", "kept", "solved", "greedy"]
    assert f"config: {out / 'config.yaml'}" in printed[-1]
    rows = json.loads((out / "summary.json").read_text())["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1] and 0 < rows[1]["solved"] <= rows[1]["kept"] <= 12 * 4
    assert rows[1]["model"] == str(out / "it001" / "model") and (out / "it001" / "model").is_dir()
    assert rows[1]["tokens_trained"] > 0
    assert json.loads((out / "it001" / "finetune.json").read_text())["steps"] == 2

    # its config.yaml reruns it: the same samples and the same fine-tune (same seed), in a fresh directory
    again = tmp_path / "again"
    assert main_cli(["train", "rft", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    rows_again = json.loads((again / "summary.json").read_text())["iterations"]
    assert [{**r, "model": None} for r in rows_again[1:]] == [{**r, "model": None} for r in rows[1:]]
    assert rows_again[0] == rows[0]


# --- python_api.py -----------------------------------------------------------------------------------------------


def test_python_api_example_runs(tiny_ckpt, capsys):
    """examples/python_api.py (the README's Python API tour) runs on a real checkpoint and prints each part."""
    api = runpy.run_path(str(EXAMPLES / "python_api.py"))
    api["main"]([str(tiny_ckpt), "--problems", "4", "--n", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sampling: pass@2 ") and "generated tokens" in lines[0]
    assert lines[1].startswith("oracle step scores of one sample: [")
    assert lines[2].startswith("best_of_n@2: ") and lines[3].startswith("beam@2: ")
