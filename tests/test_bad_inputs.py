"""A catalogue of bad inputs, each run through the CLI: a non-zero exit and exactly one clear error
line (``deliberate: error: ...``, no traceback) that names the field, or the file and line.

Almost every case fails before a model is loaded (config and data are validated first), so the whole
catalogue runs in-process through :func:`deliberate.cli.main_cli` in a few seconds; one case runs
``python -m deliberate`` to check the real exit status. Argument-type errors that argparse itself
catches (``--n x``) exit 2 with its usage text and one ``error:`` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deliberate.cli import main_cli

GOOD_LABEL = {"question": "Mia has 3 pens.", "steps": ["3+1=4", "Answer: 4"], "soft": [1.0, 1.0],
              "hard": [1.0, 1.0], "outcome": True}


def write(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(text)
    return str(p)


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def gsm(d, text):
    return ["eval", "--task", "gsm8k", "--task-arg", f"path={write(d, 'gsm.jsonl', text)}", "--model", "m"]


def sweep(*extra):
    return ["sweep", "--task", "arith", "--strategies", "majority", "--model", "m", *extra]


def labels(d, text):
    return ["train", "prm", "--labels", write(d, "labels.jsonl", text)]


def eval_dir_with(d, config=None, records=None):
    """An eval output directory holding ``config.json`` / ``records.jsonl`` of an earlier run."""
    out = d / "out"
    out.mkdir(exist_ok=True)
    if config is not None:
        (out / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if records is not None:
        (out / "records.jsonl").write_text(records)
    return out


def mc_out(d, meta_text):
    """A `label mc` output directory whose ``meta.json`` is ``meta_text``."""
    write(d, "meta.json", meta_text)
    return str(d)


def sft_out_of_another_config(d):
    ck = d / "sft" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"step": 2, "config": {"steps": 9}}))
    return str(d / "sft")


# (id, argv builder d -> argv, substrings the one error line must contain; "{d}" is the test's directory)
CASES = [
    # --- names ---------------------------------------------------------------------------
    ("unknown task", lambda d: ["eval", "--task", "nope", "--model", "m"], ["unknown task 'nope'", "valid tasks:"]),
    ("unknown gym task", lambda d: ["eval", "--task", "gym:not_a_gym_task", "--model", "m"], ["not_a_gym_task"]),
    ("unknown backend", lambda d: ["eval", "--task", "arith", "--backend", "nope"], ["unknown backend 'nope'"]),
    ("unknown strategy", lambda d: sweep("--strategies", "majority,nope"), ["unknown strategy 'nope'", "valid:"]),
    ("unknown verifier kind", lambda d: sweep("--strategies", "best_of_n", "--verifier", "nope:x"),
     ["unknown verifier 'nope'"]),
    ("verifier checkpoint missing", lambda d: sweep("--strategies", "best_of_n", "--verifier", f"prm:{d}/none"),
     ["{d}/none", "not found"]),
    ("noisy verifier sigma not a number", lambda d: sweep("--strategies", "best_of_n", "--verifier", "noisy:abc"),
     ["sigma", "'abc'"]),
    ("strategy needs a verifier", lambda d: sweep("--strategies", "beam"), ["beam", "--verifier"]),
    # --- sampling and sizes ---------------------------------------------------------------
    ("negative n", lambda d: ["eval", "--task", "arith", "--n", "-1", "--model", "m"], ["n must be", "-1"]),
    ("temperature < 0", lambda d: ["eval", "--task", "arith", "--temperature", "-0.5", "--model", "m"],
     ["temperature", "-0.5"]),
    ("temperature nan", lambda d: ["eval", "--task", "arith", "--temperature", "nan", "--model", "m"],
     ["temperature", "nan"]),
    ("top_p > 1", lambda d: ["eval", "--task", "arith", "--top-p", "1.5", "--model", "m"], ["top_p", "1.5"]),
    ("max_tokens 0", lambda d: ["eval", "--task", "arith", "--max-tokens", "0", "--model", "m"], ["max_tokens", "0"]),
    ("n_problems 0", lambda d: ["eval", "--task", "arith", "--n-problems", "0", "--model", "m"], ["n_problems"]),
    ("batch_size 0", lambda d: ["eval", "--task", "arith", "--batch-size", "0", "--model", "m"], ["batch_size"]),
    ("seed < 0", lambda d: ["eval", "--task", "arith", "--seed", "-1", "--model", "m"], ["seed", "-1"]),
    ("ns k > n", lambda d: ["eval", "--task", "arith", "--n", "4", "--ns", "1,8", "--model", "m"], ["ns", "8"]),
    # --- task options ---------------------------------------------------------------------
    ("task-arg not KEY=VALUE", lambda d: ["eval", "--task", "arith", "--task-arg", "nonsense", "--model", "m"],
     ["--task-arg", "KEY=VALUE"]),
    ("task-arg unknown key", lambda d: ["eval", "--task", "arith", "--task-arg", "nope=3", "--model", "m"],
     ["task 'arith'", "nope"]),
    ("task-arg wrong type", lambda d: ["eval", "--task", "arith", "--task-arg", "max_ops=x", "--model", "m"],
     ["max_ops", "integer", "'x'"]),
    ("task-arg out of range", lambda d: ["eval", "--task", "arith", "--task-arg", "max_ops=0", "--model", "m"],
     ["max_ops"]),
    ("backend-arg unknown key", lambda d: ["eval", "--task", "arith", "--backend-arg", "nope=1", "--model", "m"],
     ["backend 'tiny'", "nope"]),
    # --- data files -----------------------------------------------------------------------
    ("malformed JSONL line", lambda d: gsm(d, jl({"question": "1+1?", "answer": "#### 2"}, '{"question": "oops"')),
     ["gsm.jsonl:2", "malformed JSON"]),
    ("missing answer field", lambda d: gsm(d, jl({"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"})),
     ["gsm.jsonl:2", "answer"]),
    ("field of the wrong type", lambda d: gsm(d, jl({"question": "1+1?", "answer": "#### 2"},
                                                    {"question": 5, "answer": "#### 2"})),
     ["gsm.jsonl:2", "'question'", "string"]),
    ("line not an object", lambda d: gsm(d, jl([1, 2])), ["gsm.jsonl:1", "JSON object"]),
    ("answer without a number", lambda d: gsm(d, jl({"question": "1+1?", "answer": "two"})),
     ["gsm.jsonl:1", "#### N"]),
    ("empty data file", lambda d: gsm(d, ""), ["gsm.jsonl", "empty"]),
    ("data file missing", lambda d: ["eval", "--task", "gsm8k", "--task-arg", f"path={d}/none.jsonl", "--model", "m"],
     ["{d}/none.jsonl", "not found"]),
    ("mawps missing fields", lambda d: ["eval", "--task", "mawps", "--task-arg",
                                       f"path={write(d, 'mawps.jsonl', jl({'question': 'x'}))}", "--model", "m"],
     ["mawps.jsonl:1", "input"]),
    # --- model paths ----------------------------------------------------------------------
    ("nonexistent model path", lambda d: ["eval", "--task", "arith", "--task-arg", "max_ops=2", "--n-problems", "1",
                                          "--model", f"{d}/no_model"], ["{d}/no_model", "not found"]),
    ("model path is not a checkpoint", lambda d: ["eval", "--task", "arith", "--task-arg", "max_ops=2",
                                                  "--n-problems", "1", "--model", str(d)],
     ["{d}", "char_tokenizer.json"]),
    ("hf model path missing", lambda d: ["eval", "--task", "arith", "--n-problems", "1", "--backend", "hf",
                                         "--model", f"{d}/no_model"], ["{d}/no_model"]),
    ("openai without base url", lambda d: ["eval", "--task", "arith", "--backend", "openai"], ["--base-url"]),
    # --- sweep ----------------------------------------------------------------------------
    ("setting unknown key", lambda d: sweep("--setting", "nope=1"), ["--setting 'nope'", "valid:"]),
    ("setting bad value", lambda d: sweep("--setting", "expansions=0"), ["expansions", "0"]),
    ("setting bad choice", lambda d: sweep("--setting", "aggregation=nope"), ["aggregation", "'nope'"]),
    ("setting wrong type", lambda d: sweep("--setting", "temperature=hot"), ["temperature", "'hot'"]),
    ("setting reserved key", lambda d: sweep("--setting", "n=3"), ["--setting n", "--budgets"]),
    ("budget 0", lambda d: sweep("--budgets", "0,4"), ["budgets", ">= 1"]),
    ("budget list empty", lambda d: sweep("--budgets", ","), ["budgets"]),
    ("seed negative", lambda d: sweep("--seeds", "-1"), ["seeds", ">= 0"]),
    ("taste negative", lambda d: sweep("--taste", "0,-1"), ["taste", ">= 0"]),
    ("trees per run negative", lambda d: sweep("--trees-per-run", "-1"), ["trees_per_run", "-1"]),
    ("sweep n_problems 0", lambda d: sweep("--n-problems", "0"), ["n_problems", ">= 1"]),
    ("pool-from not a sweep", lambda d: sweep("--pool-from", str(d)), ["--pool-from", "pool.jsonl"]),
    ("sweep out holds a different config",
     lambda d: sweep("--task-arg", "max_ops=2", "--out", str(eval_dir_with(d, config={
         "task": "arith", "task_options": {"max_ops": 3}, "split": "test", "problem_seed": 0, "verifier": None,
         "settings": {}}))),
     ["different config", "task_options"]),
    ("sweep out config unreadable", lambda d: sweep("--out", str(eval_dir_with(d, config="{nope"))),
     ["config.json", "unreadable"]),
    # --- eval resume ----------------------------------------------------------------------
    ("eval out holds a different config",
     lambda d: ["eval", "--task", "arith", "--model", "m", "--temperature", "0.5", "--out", str(eval_dir_with(d, config={
         "task": "arith", "task_options": {}, "split": "test", "temperature": 1.0, "top_p": 1.0, "max_tokens": 96,
         "seed": 0, "prompt_style": "plain"}))],
     ["different config", "temperature"]),
    # --- labels ---------------------------------------------------------------------------
    ("label mc k < 1", lambda d: ["label", "mc", "--rollouts", "0", "--model", "m"], ["rollouts", "0"]),
    ("label mc samples < 1", lambda d: ["label", "mc", "--samples", "0", "--model", "m"], ["samples"]),
    ("label mc temperature 0", lambda d: ["label", "mc", "--temperature", "0", "--model", "m"], ["temperature"]),
    ("label mc split unknown", lambda d: ["label", "mc", "--split", "dev", "--model", "m"], ["split 'dev'"]),
    ("label mc out holds a different config",
     lambda d: ["label", "mc", "--model", "m", "--rollouts", "4", "--out",
                mc_out(d, json.dumps({"config": {"rollouts": 8}}))],
     ["different config", "rollouts"]),
    ("label mc meta unreadable",
     lambda d: ["label", "mc", "--model", "m", "--out", mc_out(d, "[1, 2")],
     ["meta.json", "malformed JSON"]),
    ("PRM800K import malformed row", lambda d: ["label", "import", write(d, "prm.jsonl", jl(
        {"question": {"problem": "x"}, "label": {"steps": []}}, {"question": {"problem": "x"}, "label": "nope"})),
        "--out", f"{d}/o.jsonl"], ["prm.jsonl:2", "label.steps"]),
    ("PRM800K import bad JSON", lambda d: ["label", "import", write(d, "prm.jsonl", '{"question": \n'),
                                           "--out", f"{d}/o.jsonl"], ["prm.jsonl:1", "malformed JSON"]),
    ("PRM800K import bad rating", lambda d: ["label", "import", write(d, "prm.jsonl", jl(
        {"question": {"problem": "x"}, "label": {"steps": [{"completions": [{"text": "a", "rating": 5}],
                                                            "chosen_completion": 0}]}})),
        "--out", f"{d}/o.jsonl"], ["prm.jsonl:1", "rating"]),
    ("PRM800K neutral out of range", lambda d: ["label", "import", write(d, "prm.jsonl", "{}\n"), "--neutral", "2",
                                                "--out", f"{d}/o.jsonl"], ["neutral", "2"]),
    ("label export malformed labels", lambda d: ["label", "export", write(d, "l.jsonl", jl(GOOD_LABEL, "{bad")),
                                                 "--out", f"{d}/o.jsonl"], ["l.jsonl:2", "malformed JSON"]),
    # --- training -------------------------------------------------------------------------
    ("train sft lr 0", lambda d: ["train", "sft", "--lr", "0"], ["lr", "0"]),
    ("train sft lr negative", lambda d: ["train", "sft", "--lr", "-1"], ["lr", "-1"]),
    ("train sft steps 0", lambda d: ["train", "sft", "--steps", "0"], ["steps", "0"]),
    ("train sft threads 0", lambda d: ["train", "sft", "--threads", "0"], ["--threads", "0"]),
    ("train sft warmup negative", lambda d: ["train", "sft", "--warmup", "-1"], ["warmup", "-1"]),
    ("train sft heads do not divide", lambda d: ["train", "sft", "--d-model", "30", "--n-heads", "4"],
     ["d_model", "n_heads"]),
    ("train sft init-from missing", lambda d: ["train", "sft", "--steps", "1", "--n-train", "8", "--init-from",
                                               f"{d}/none"], ["{d}/none", "not found"]),
    ("train prm lr 0", lambda d: labels(d, jl(GOOD_LABEL)) + ["--lr", "0"], ["lr", "0"]),
    ("train prm steps 0", lambda d: labels(d, jl(GOOD_LABEL)) + ["--steps", "0"], ["steps", "0"]),
    ("train prm val_frac 1.5", lambda d: labels(d, jl(GOOD_LABEL)) + ["--val-frac", "1.5"], ["val_frac", "1.5"]),
    ("train prm labels malformed", lambda d: labels(d, jl(GOOD_LABEL, "{bad")), ["labels.jsonl:2", "malformed"]),
    ("train prm label missing field", lambda d: labels(d, jl(GOOD_LABEL, {k: v for k, v in GOOD_LABEL.items()
                                                                          if k != "steps"})),
     ["labels.jsonl:2", "'steps'"]),
    ("train prm label wrong length", lambda d: labels(d, jl({**GOOD_LABEL, "soft": [1.0]})),
     ["labels.jsonl:1", "'soft'", "one label per step"]),
    ("train prm label out of range", lambda d: labels(d, jl({**GOOD_LABEL, "hard": [2, 1]})),
     ["labels.jsonl:1", "'hard'", "[0, 1]"]),
    ("train prm labels empty", lambda d: labels(d, ""), ["labels.jsonl", "no rows"]),
    ("train prm labels missing", lambda d: ["train", "prm", "--labels", f"{d}/none.jsonl"], ["{d}/none.jsonl"]),
    ("train orm samples not an eval dir", lambda d: ["train", "orm", "--samples", str(d)],
     ["{d}", "deliberate eval"]),
    ("train sft checkpoint of a different config",
     lambda d: ["train", "sft", "--steps", "5", "--out", sft_out_of_another_config(d)],
     ["checkpoint", "different config"]),
    ("report dir missing", lambda d: ["report", f"{d}/none"], ["{d}/none", "does not exist"]),
]


@pytest.mark.parametrize("make_argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_clear_error(make_argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output directories (runs/...) land here
    argv = make_argv(tmp_path)
    writes = argv[0] in ("eval", "sweep", "train") or argv[:2] == ["label", "mc"]
    if writes and "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "out")]
    code = main_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    assert err.startswith("deliberate: error: ") and err.count("\n") == 1, f"not one error line: {err!r}"
    for n in needles:
        n = n.replace("{d}", str(tmp_path))
        assert n in err, f"{n!r} not in {err!r}"


def test_catalogue_size():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--task", "arith", "--n", "x"], "argument --n: invalid int value: 'x'"),
    (["sweep", "--task", "arith", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["train", "prm", "--label-type", "fuzzy"], "argument --label-type: invalid choice: 'fuzzy'"),
    (["label", "mc", "--rollouts", "1.5"], "argument --rollouts: invalid int value: '1.5'"),
    # comma lists are typed flags too (cli/flags.py), so a bad item is argparse's error like any other
    (["eval", "--task", "arith", "--ns", "1,x"], "argument --ns: expected comma-separated integers (got '1,x')"),
    (["sweep", "--task", "arith", "--budgets", "4,x"], "argument --budgets: expected comma-separated integers"),
    (["sweep", "--task", "arith", "--seeds", "0,a"], "argument --seeds: expected comma-separated integers"),
    (["sweep", "--task", "arith", "--taste", "a"], "argument --taste: expected comma-separated numbers (got 'a')"),
])
def test_argparse_type_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main_cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [line for line in err.splitlines()
                                                                       if needle in line]


def test_real_process_exit_status(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "oops"\n')
    p = subprocess.run([sys.executable, "-m", "deliberate", "eval", "--task", "gsm8k", "--task-arg", f"path={bad}",
                        "--model", "m", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and f"{bad}:2" in p.stderr
