"""Plug-ins (a user's own task / verifier from $DELIBERATE_PLUGINS or an entry point) and the examples/ scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deliberate import plugins
from deliberate.cli import main_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_tasks.py"


def test_example_plugin_adds_a_task_and_a_verifier_to_the_cli(tmp_path, tiny_ckpt, capsys, monkeypatch,
                                                              clean_registries):
    monkeypatch.delenv(plugins.ENV, raising=False)
    assert main_cli(["eval", "--task", "times", "--model", str(tiny_ckpt), "--n-problems", "2"]) == 2
    assert "unknown task 'times'" in capsys.readouterr().err

    monkeypatch.setenv(plugins.ENV, str(EXAMPLE))
    assert main_cli(["tasks"]) == 0
    assert "times" in capsys.readouterr().out
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
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["strategy"] == "filtered_majority"]
    assert len(mine) == 3 and all(r["generated_tokens"] > 0 and r["verifier_sequences"] == 2 for r in mine)

    # the task's own option checks still reach the user as one line
    assert main_cli(["eval", "--task", "times", "--task-arg", "max_digits=0", "--model", str(tiny_ckpt)]) == 2
    assert "max_digits must be >= 1" in capsys.readouterr().err


def test_the_example_task_checks_its_own_rationales(monkeypatch, clean_registries):
    from deliberate.tasks import get_task

    monkeypatch.setenv(plugins.ENV, str(EXAMPLE))
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


def test_plugin_by_module_name_and_by_entry_point(tmp_path):
    """In fresh processes: a module on sys.path named in $DELIBERATE_PLUGINS, and an installed
    package's `deliberate.plugins` entry point (a dist-info folder on sys.path is what pip writes)."""
    (tmp_path / "const_verifier.py").write_text(textwrap.dedent("""
        from deliberate.rewards.base import Verifier, register_verifier

        class Const(Verifier):
            def score_batch(self, items):
                return [[0.25] * len(steps) for _, steps in items]

        @register_verifier("const", options=())
        def _const(arg, task=None, **_):
            return Const()
    """))
    probe = ("from deliberate.rewards.base import get_verifier, verifier_kinds; "
             "print('const' in verifier_kinds(), get_verifier('const').score(None, ['a', 'b']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop(plugins.ENV, None)

    def run(e):
        return subprocess.run([sys.executable, "-c", probe], env=e, capture_output=True, text=True, timeout=120,
                              check=False)

    p = run(env)
    assert p.returncode != 0 and "unknown verifier" in p.stderr  # not a plug-in yet
    p = run({**env, plugins.ENV: "const_verifier"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "[0.25,", "0.25]"]

    dist = tmp_path / "const_verifier-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: const-verifier\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[deliberate.plugins]\nconst = const_verifier\n")
    p = run(env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "[0.25,", "0.25]"]


def test_a_broken_plugin_stops_the_command_with_its_name(tmp_path, capsys, monkeypatch, clean_registries):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import deliberate\n\nraise RuntimeError('forgot to install numpy-foo')\n")
    monkeypatch.setenv(plugins.ENV, str(bad))
    assert main_cli(["tasks"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(bad) in err and "RuntimeError: forgot to install numpy-foo" in err and "bad_plugin.py:3" in err

    monkeypatch.setenv(plugins.ENV, str(tmp_path / "missing.py"))
    assert main_cli(["tasks"]) == 2
    err = capsys.readouterr().err
    assert "missing.py" in err and "does not exist" in err

    monkeypatch.setenv(plugins.ENV, "no_such_module_here")
    assert main_cli(["tasks"]) == 2
    assert "'no_such_module_here'" in capsys.readouterr().err


def test_python_api_example_runs(tiny_ckpt, capsys):
    """examples/python_api.py (the README's Python API tour) runs on a real checkpoint and prints each part."""
    import runpy

    api = runpy.run_path(str(EXAMPLE.with_name("python_api.py")))
    api["main"]([str(tiny_ckpt), "--problems", "4", "--n", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sampling: pass@2 ") and "generated tokens" in lines[0]
    assert lines[1].startswith("oracle step scores of one sample: [")
    assert lines[2].startswith("best_of_n@2: ") and lines[3].startswith("beam@2: ")
