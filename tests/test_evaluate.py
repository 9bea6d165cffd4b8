"""The eval job end to end on a scripted fake backend and a test-local addition task.

Covers the summary's shape and numbers, determinism, resume after lost rows, a config clash, the
CLI glue, and a run killed with SIGKILL mid-write that resumes to exactly the uninterrupted rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import FakeBackend

from deliberate.errors import DeliberateError
from deliberate.cli import eval as eval_cli
from deliberate.eval.evaluate import EvalConfig, format_table, run_eval
from deliberate.records import load_records
from deliberate.tasks.base import Task, check_split
from deliberate.types import Problem

TESTS = Path(__file__).resolve().parent


class PlusTask(Task):
    """What is a+b: a tiny test-local task."""

    name = "plus"
    stop = ("\n\n",)
    max_tokens = 48

    def problems(self, split="test", n=None, seed=0):
        check_split(split)
        rng = random.Random(f"{split}/{seed}")
        out = []
        for i in range(30 if n is None else n):
            a, b = rng.randint(0, 60), rng.randint(0, 60)
            out.append(Problem(f"{split}-{seed}-{i}", f"what is {a}+{b}", str(a + b)))
        return out

    def prompt(self, problem, style="plain"):
        return f"Q: {problem.question}?\nA:"

    def extract_answer(self, text):
        m = re.findall(r"answer: (-?\d+)", text)
        return m[-1] if m else None

    def is_correct(self, answer, problem):
        return answer is not None and answer == problem.answer


def plus_script(prompt, rng):
    """Right with a problem-dependent probability, else near misses, random guesses or no answer."""
    a, b = map(int, re.search(r"what is (\d+)\+(\d+)", prompt).groups())
    p_right = (0.15, 0.5, 0.85)[a % 3]
    u = rng.random()
    think = " ".join("hmm" for _ in range(rng.randint(0, 6)))
    if u < p_right:
        ans = a + b
    elif u < p_right + (1 - p_right) * 0.5:
        ans = a + b + rng.choice((-1, 1))
    elif u < p_right + (1 - p_right) * 0.8:
        ans = rng.randint(0, 120)
    else:
        return f" {think}\nI am not sure\n\nnot part of the answer"
    return f" {think}\nanswer: {ans}\n\nnot part of the answer"


class SlowFake(FakeBackend):
    def __init__(self, delay):
        super().__init__(plus_script)
        self.delay = delay

    def generate(self, prompts, params):
        time.sleep(self.delay)
        return super().generate(prompts, params)


def config(out, **kw):
    base = dict(task="plus", n_problems=12, n=8, ns=(1, 2, 4, 8), batch_size=5, seed=3)
    return EvalConfig(**{**base, **kw}, out_dir=str(out))


def rows(path):
    """Records as a comparable set (wall time is measured, so it is left out)."""
    return {tuple(sorted((k, v) for k, v in r.to_dict().items() if k != "wall_s")) for r in load_records(path)}


def numbers(summary):
    """The summary without measured wall times and this-invocation compute."""
    s = json.loads(json.dumps(summary))
    for r in s["results"]:
        del r["wall_s"]
    del s["compute"]
    s["config"].pop("out_dir")
    return s


def _child_run(out_dir, delay):
    """Entry point of the SIGKILL test's subprocess."""
    run_eval(config(out_dir), SlowFake(delay), task=PlusTask(), progress=False)


def test_summary_shape_and_numbers(tmp_path):
    backend = FakeBackend(plus_script)
    cfg = config(tmp_path)
    summary = run_eval(cfg, backend, task=PlusTask(), progress=False)
    assert set(summary) == {"task", "model", "seed", "results", "compute", "config"}
    assert (summary["task"], summary["model"], summary["seed"]) == ("plus", "fake", 3)
    assert summary["config"] == cfg.to_dict()
    assert [(r["strategy"], r["n"]) for r in summary["results"]] == (
        [("greedy", 1), ("sample", 1)] + [("pass@k", k) for k in (1, 2, 4, 8)] + [("maj@k", k) for k in (1, 2, 4, 8)])
    for r in summary["results"]:
        assert set(r) == {"strategy", "n", "accuracy", "ci", "generated_tokens", "wall_s", "n_problems"}
        assert r["n_problems"] == 12
        assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        assert r["wall_s"] >= 0
    for name in ("config.json", "records.jsonl", "summary.json", "accuracy_vs_n.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (tmp_path / "accuracy_vs_n.png").read_bytes()[:4] == b"\x89PNG"

    # the numbers, recomputed from the records by hand
    recs = load_records(tmp_path / "records.jsonl")
    assert len(recs) == 12 * (8 + 1)
    task = PlusTask()
    probs = task.problems("test", 12, 3)
    by = {r.key: r for r in recs}
    samples = [[by[(p.id, "sample", j)] for j in range(8)] for p in probs]
    assert all(r.correct == task.is_correct(task.extract_answer(r.text), p) for p, row in zip(probs, samples) for r in row)
    assert all("not part" not in r.text for r in recs)  # the stop string ended every completion
    res = {(r["strategy"], r["n"]): r for r in summary["results"]}
    acc1 = sum(r.correct for row in samples for r in row) / (12 * 8)
    assert res[("sample", 1)]["accuracy"] == pytest.approx(acc1)
    assert res[("pass@k", 1)]["accuracy"] == pytest.approx(acc1)
    assert res[("maj@k", 1)]["accuracy"] == pytest.approx(acc1)
    assert res[("pass@k", 8)]["accuracy"] == pytest.approx(sum(any(r.correct for r in row) for row in samples) / 12)

    def majority(row):
        counts = Counter(r.answer for r in row if r.answer is not None)
        if not counts:
            return 0.0
        top = max(counts.values())  # a tie: the answer voted first (Counter keeps first-seen order)
        return float(next(a for a, c in counts.items() if c == top) == row[0].gold)

    assert res[("maj@k", 8)]["accuracy"] == pytest.approx(sum(majority(row) for row in samples) / 12)
    greedy = [by[(p.id, "greedy", 0)] for p in probs]
    assert res[("greedy", 1)]["accuracy"] == pytest.approx(sum(r.correct for r in greedy) / 12)
    assert res[("greedy", 1)]["generated_tokens"] == sum(r.completion_tokens for r in greedy)
    tok1 = sum(r.completion_tokens for row in samples for r in row) / 8
    assert res[("sample", 1)]["generated_tokens"] == pytest.approx(tok1)
    for k in (1, 2, 4, 8):
        assert res[("pass@k", k)]["generated_tokens"] == pytest.approx(k * tok1)
        assert res[("maj@k", k)]["wall_s"] == pytest.approx(res[("pass@k", 8)]["wall_s"] * k / 8)
    accs = [res[("pass@k", k)]["accuracy"] for k in (1, 2, 4, 8)]
    assert accs == sorted(accs) and accs[-1] > accs[0]
    assert all(res[("pass@k", k)]["accuracy"] >= res[("maj@k", k)]["accuracy"] - 1e-12 for k in (1, 2, 4, 8))
    # compute actually spent: 3 batches x (greedy + sampling call)
    assert summary["compute"]["model_calls"] == backend.calls == 6
    assert summary["compute"]["generated_tokens"] == sum(r.completion_tokens for r in recs)

    table = format_table(summary)
    assert "maj@k" in table and "95% CI" in table and len(table.splitlines()) == 2 + len(summary["results"])


class StepPlusTask(PlusTask):
    """PlusTask whose completions show their sum as a step ``a+b=c``, checked by ``step_correct``."""

    name = "stepplus"

    def step_correct(self, problem, steps):
        a, b = map(int, re.search(r"what is (\d+)\+(\d+)", problem.question).groups())
        out, ok = [], True
        for line in steps:
            m = re.fullmatch(r"(\d+)\+(\d+)=(\d+)", line)
            ok = ok and (bool(m) and (int(m[1]), int(m[2]), int(m[3])) == (a, b, a + b)
                         or line == f"answer: {problem.answer}")
            out.append(ok)
        return out


def step_plus_script(prompt, rng):
    """Right steps and answer, a wrong step then the right answer anyway (lucky), or wrong throughout."""
    a, b = map(int, re.search(r"what is (\d+)\+(\d+)", prompt).groups())
    u = rng.random()
    if u < 0.3:
        return f" {a}+{b}={a + b}\nanswer: {a + b}\n\n"
    if u < 0.6:
        return f" {a}+{b}={a + b + 1}\nanswer: {a + b}\n\n"
    return f" {a}+{b}={a + b + 1}\nanswer: {a + b + 1}\n\n"


def test_process_pass_counts_right_answers_through_right_steps_only(tmp_path):
    task = StepPlusTask()
    summary = run_eval(config(tmp_path, task="stepplus"), FakeBackend(step_plus_script), task=task, progress=False)
    res = {(r["strategy"], r["n"]): r for r in summary["results"]}
    assert [k for (s, k) in res if s == "process-pass@k"] == [1, 2, 4, 8]
    by = {r.key: r for r in load_records(tmp_path / "records.jsonl")}
    probs = task.problems("test", 12, 3)
    rows_ = [[by[(p.id, "sample", j)] for j in range(8)] for p in probs]
    lucky = sum(r.correct and "=" in r.text and not task.step_correct(p, task.split_steps(r.text))[0]
                for p, row in zip(probs, rows_) for r in row)
    assert lucky > 0
    right_steps = [[r.correct and all(task.step_correct(p, task.split_steps(r.text))) for r in row]
                   for p, row in zip(probs, rows_)]
    assert res[("process-pass@k", 1)]["accuracy"] == pytest.approx(sum(map(sum, right_steps)) / (12 * 8))
    assert res[("process-pass@k", 8)]["accuracy"] == pytest.approx(sum(map(any, right_steps)) / 12)
    assert res[("process-pass@k", 1)]["accuracy"] < res[("pass@k", 1)]["accuracy"]
    for k in (1, 2, 4, 8):
        assert res[("process-pass@k", k)]["accuracy"] <= res[("pass@k", k)]["accuracy"] + 1e-12
    table = format_table(summary)
    assert all(len(line.split()) >= 5 for line in table.splitlines()[2:])
    assert len({line.index(" [") for line in table.splitlines()[2:]}) == 1  # columns stay aligned


def test_same_seed_same_records_and_summary(tmp_path):
    a = run_eval(config(tmp_path / "a"), FakeBackend(plus_script), task=PlusTask(), progress=False)
    b = run_eval(config(tmp_path / "b", batch_size=2), FakeBackend(plus_script), task=PlusTask(), progress=False)
    assert rows(tmp_path / "a" / "records.jsonl") == rows(tmp_path / "b" / "records.jsonl")
    assert numbers(a) == {**numbers(b), "config": numbers(a)["config"]}
    assert [r["accuracy"] for r in a["results"]] == [r["accuracy"] for r in b["results"]]
    c = run_eval(config(tmp_path / "c", seed=4), FakeBackend(plus_script), task=PlusTask(), progress=False)
    assert rows(tmp_path / "c" / "records.jsonl") != rows(tmp_path / "a" / "records.jsonl")
    assert c["seed"] == 4


def test_resume_after_losing_half_the_rows(tmp_path):
    cfg = config(tmp_path)
    full = run_eval(cfg, FakeBackend(plus_script), task=PlusTask(), progress=False)
    path = tmp_path / "records.jsonl"
    before = rows(path)
    lines = path.read_text().splitlines(keepends=True)
    keep = random.Random(0).sample(range(len(lines)), len(lines) // 2)  # leaves many problems partly done
    path.write_text("".join(lines[i] for i in sorted(keep)))
    (tmp_path / "summary.json").unlink()
    backend = FakeBackend(plus_script)
    again = run_eval(cfg, backend, task=PlusTask(), progress=False)
    assert rows(path) == before
    assert len(path.read_text().splitlines()) == len(lines)  # every key once
    assert numbers(again) == numbers(full)
    # compute sums over the invocations of the run (issue 31): the first run's calls plus this resume's
    assert backend.calls > 0 and again["compute"]["invocations"] == 2
    assert again["compute"]["model_calls"] == full["compute"]["model_calls"] + backend.calls
    # a complete run resumed does no work at all
    idle = FakeBackend(plus_script)
    assert numbers(run_eval(cfg, idle, task=PlusTask(), progress=False)) == numbers(full) and idle.calls == 0


def test_config_clash_and_extension(tmp_path):
    run_eval(config(tmp_path, n_problems=4, n=4, ns=None), FakeBackend(plus_script), task=PlusTask(), progress=False)
    with pytest.raises(DeliberateError, match="temperature"):
        run_eval(config(tmp_path, n_problems=4, n=4, ns=None, temperature=0.5), FakeBackend(plus_script), task=PlusTask(),
                 progress=False)
    # more problems and samples extend the same run; old rows are kept, not regenerated
    ext = run_eval(config(tmp_path, n_problems=6, n=8), FakeBackend(plus_script), task=PlusTask(), progress=False)
    fresh = run_eval(config(tmp_path / "fresh", n_problems=6, n=8), FakeBackend(plus_script), task=PlusTask(),
                     progress=False)
    assert rows(tmp_path / "records.jsonl") == rows(tmp_path / "fresh" / "records.jsonl")
    assert numbers(ext)["results"] == numbers(fresh)["results"]


def test_config_validation(tmp_path):
    assert EvalConfig(task="plus", n=16, out_dir="x").ns == (1, 2, 4, 8, 16)
    assert EvalConfig(task="plus", n=12, out_dir="x").ns == (1, 2, 4, 8, 12)
    assert EvalConfig(task="plus", n=4, ns=[4, 1, 1], out_dir="x").ns == (1, 4)
    for bad, msg in [(dict(n=4, ns=(1, 8)), "ns"), (dict(temperature=-1.0), "temperature"),
                     (dict(top_p=0.0), "top_p"), (dict(split="dev"), "split"), (dict(batch_size=0), "batch_size"),
                     (dict(max_tokens=0), "max_tokens"), (dict(n_problems=0), "n_problems"),
                     (dict(task_options={"x": object()}), "task_options")]:
        with pytest.raises(DeliberateError, match=msg):
            EvalConfig(task="plus", out_dir="x", **bad)
    with pytest.raises(TypeError):
        EvalConfig(task="plus")  # out_dir is required


def test_cli_main(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(eval_cli, "get_task", lambda name, **kw: PlusTask())
    seen = {}

    def fake_backend(args):
        seen["backend"] = args.backend
        return FakeBackend(plus_script)

    monkeypatch.setattr(eval_cli, "backend_from_args", fake_backend)
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["--task", "plus", "--task-arg", "digits=2", "--n-problems", "5", "--n", "4",
                              "--ns", "1,4", "--seed", "1", "--no-greedy", "--out", str(out), "--backend", "tiny"])
    assert eval_cli.main(args) == 0
    text = capsys.readouterr().out
    assert "pass@k" in text and "maj@k" in text and "greedy" not in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task_options"] == {"digits": 2} and summary["config"]["ns"] == [1, 4]
    assert seen["backend"] == "tiny"
    with pytest.raises(SystemExit):  # a typed flag: argparse's own error (tests/test_bad_inputs.py)
        parser.parse_args(["--task", "plus", "--ns", "1,x", "--out", str(out)])


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "killed"
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_evaluate as t; t._child_run({str(out)!r}, 0.5)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    path = out / "records.jsonl"
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"child ended early: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    n_before = path.read_bytes().count(b"\n")
    assert 10 <= n_before < 12 * 9 and not (out / "summary.json").exists()
    with open(path, "ab") as f:  # as if the kill had landed mid-line
        f.write(b'{"problem_id": "test-3-')
    resumed = run_eval(config(out), FakeBackend(plus_script), task=PlusTask(), progress=False)
    keys = [r.key for r in load_records(path)]
    assert len(keys) == len(set(keys)) == 12 * 9 == path.read_bytes().count(b"\n")
    whole = run_eval(config(tmp_path / "whole"), FakeBackend(plus_script), task=PlusTask(), progress=False)
    assert rows(path) == rows(tmp_path / "whole" / "records.jsonl")
    assert numbers(resumed) == numbers(whole)
