"""CLI: help for every subcommand, one clear error + non-zero exit for bad input, smoke runs, SIGKILL resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deliberate.cli import COMMANDS, TRAIN_RECIPES, main_cli


def run(argv, capsys):
    code = main_cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main_cli(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in list(COMMANDS) + ["train"]:
        assert name in text


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS] + [["train", "--help"]]
                         + [["train", r, "--help"] for r in TRAIN_RECIPES])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main_cli(argv)
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_tasks_lists_names(capsys):
    code, out, _ = run(["tasks"], capsys)
    assert code == 0
    for name in ("arith", "addition", "countdown", "gsm8k", "math500", "mawps", "gym:<name>"):
        assert name in out


def _bad_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "oops"\n')
    return p


def _missing_field(tmp_path):
    p = tmp_path / "missing.jsonl"
    p.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    return p


BAD = [
    (["eval", "--task", "nope", "--model", "x"], "unknown task 'nope'; valid tasks: addition, arith"),
    (["eval", "--task", "arith", "--backend", "nope"], "unknown backend 'nope'; valid backends:"),
    (["eval", "--task", "gym:not_a_gym_task", "--model", "x"], "not_a_gym_task"),
    (["eval", "--task", "arith", "--temperature", "-1", "--model", "x"], "temperature"),
    (["eval", "--task", "arith", "--top-p", "1.5", "--model", "x"], "top_p"),
    (["eval", "--task", "arith", "--n", "0", "--model", "x"], "n"),
    (["eval", "--task", "arith", "--task-arg", "max_ops=0", "--model", "x"], "max_ops"),
    (["eval", "--task", "arith", "--task-arg", "nonsense", "--model", "x"], "KEY=VALUE"),
    (["eval", "--task", "arith", "--backend", "tiny", "--model", "/no/such/ckpt"], "not found"),
    (["eval", "--task", "arith", "--backend", "openai"], "--base-url"),
    (["train", "sft", "--steps", "0"], "steps"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_gives_one_clear_error(argv, msg, capsys, tmp_path):
    code, _, err = run(argv + ["--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert msg in err
    assert err.startswith("deliberate: error:") and err.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize("make,where", [(_bad_jsonl, ":2"), (_missing_field, ":2")])
def test_bad_data_file_names_file_and_line(make, where, capsys, tmp_path):
    path = make(tmp_path)
    code, _, err = run(["eval", "--task", "gsm8k", "--task-arg", f"path={path}", "--model", "x",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and path.name in err and where in err and "Traceback" not in err


def test_console_script_exits_nonzero_on_bad_input():
    p = subprocess.run([sys.executable, "-m", "deliberate", "eval", "--task", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown task" in p.stderr


def test_train_sft_and_eval_smoke(tmp_path, capsys):
    out = tmp_path / "sft"
    code, o, _ = run(["train", "sft", "--steps", "4", "--n-train", "40", "--batch-size", "4", "--d-model", "32",
                      "--n-layers", "1", "--n-heads", "2", "--out", str(out)], capsys)
    assert code == 0 and (out / "model" / "config.json").exists()
    ev = tmp_path / "ev"
    code, o, _ = run(["eval", "--task", "arith", "--model", str(out / "model"), "--n-problems", "3", "--n", "4",
                      "--out", str(ev)], capsys)
    assert code == 0 and "maj@" in o or "maj" in o
    s = json.loads((ev / "summary.json").read_text())
    assert {"task", "model", "seed", "results", "config"} <= s.keys()
    assert (ev / "accuracy_vs_n.png").stat().st_size > 1000


def test_quickstart_smoke(tmp_path, capsys):
    code, o, _ = run(["quickstart", "--steps", "3", "--n-problems", "3", "--n", "2", "--out", str(tmp_path)], capsys)
    assert code == 0
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    strategies = {(r["strategy"], r["n"]) for r in s["results"]}
    assert ("greedy", 1) in strategies and any(st.startswith("maj") for st, _ in strategies)
    assert (tmp_path / "eval" / "accuracy_vs_n.png").exists()


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_eval_killed_with_sigkill_resumes_with_one_row_per_sample(tiny_ckpt, tmp_path):
    """A real `deliberate eval` process on the tiny model, SIGKILLed mid-run, then rerun."""
    base = [sys.executable, "-m", "deliberate", "eval", "--task", "arith", "--model", str(tiny_ckpt),
            "--n-problems", "24", "--n", "4", "--batch-size", "1", "--seed", "3"]
    ref = tmp_path / "ref"
    subprocess.run(base + ["--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    for kill_after in (6, 40):  # kill twice at different points
        proc = subprocess.Popen(base + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = out / "records.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if rec.exists() and rec.read_text().count("\n") >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
    subprocess.run(base + ["--out", str(out)], check=True, capture_output=True)
    got, want = _rows(out / "records.jsonl"), _rows(ref / "records.jsonl")
    keys = [(r["problem_id"], r["strategy"], r["index"]) for r in got]
    assert len(keys) == len(set(keys)) == 24 * 5  # 4 samples + 1 greedy per problem
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, got))) == sorted(map(json.dumps, map(strip, want)))
    a = json.loads((out / "summary.json").read_text())["results"]
    b = json.loads((ref / "summary.json").read_text())["results"]
    assert [(r["strategy"], r["n"], r["accuracy"]) for r in a] == [(r["strategy"], r["n"], r["accuracy"]) for r in b]


def test_commands_that_cannot_run_data_parallel_are_refused_under_a_launcher(monkeypatch, capsys):
    from deliberate.cli import main_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main_cli(["train", "rest-em", "--out", "/nonexistent/never-written"]) == 2
    assert "does not run under accelerate launch" in capsys.readouterr().err
    assert main_cli(["sweep", "--task", "arith", "--out", "/nonexistent/never-written"]) == 2
    assert "`deliberate sweep` does not run" in capsys.readouterr().err
