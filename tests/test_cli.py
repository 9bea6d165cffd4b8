"""CLI: help for every subcommand, one clear error + non-zero exit for bad input, smoke runs. (SIGKILL resume of
the long-running commands: tests/test_kill_resume.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
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
    # each task's --task-arg options, with their defaults, under its line
    arith = out.splitlines()[[line.split()[0] for line in out.splitlines()].index("arith") + 1]
    assert arith.split() == ["--task-arg", "min_ops=1", "max_ops=4", "max_operand=20"]
    assert "path=None" in out and "dataset's own config" in out


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
    """The shipped checkpoints on 3 problems: every method's row, both plots, the report, and next commands
    that the real parser accepts."""
    code, o, _ = run(["quickstart", "--n-problems", "3", "--sampling-seeds", "1", "--out", str(tmp_path)], capsys)
    assert code == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    methods = [t["method"] for t in s["extra"]["quickstart"]]
    assert methods == ["pass@N (ceiling)", "greedy", "majority", "PRM best-of-N", "PRM weighted", "ORM best-of-N",
                       "ORM weighted", "PRM beam search", "PRM MCTS"]
    assert {r["n"] for r in s["results"] if r["strategy"] == "PRM MCTS@N"} == {1, 2, 4, 8, 16}
    assert "PRM best-of-N" in o and "- maj@16 [95% CI]" in o
    for f in ("accuracy_vs_n.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert (tmp_path / "report.html").stat().st_size > 10_000 and (tmp_path / "trees.jsonl").stat().st_size > 0
    import shlex

    from deliberate.cli import build_parser
    from deliberate.cli.config_file import apply_config_file, relax_required

    hint = o.split("\nnext:\n", 1)[1].replace("\\\n", " ")
    commands = [shlex.split(line.split("#", 1)[0]) for line in hint.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["deliberate", "sweep"], ["deliberate", "train"], ["deliberate", "sweep"]]
    recipe = commands[2][commands[2].index("--config") + 1]  # the SmolLM2 recipe, a file of this repository
    root = Path(__file__).resolve().parents[1]
    assert "smollm2" in recipe and (root / recipe).is_file()
    commands[2][commands[2].index(recipe)] = str(root / recipe)
    for argv in commands:  # as the CLI reads them: a config file's values under the flags
        parser = build_parser()
        relax_required(parser)
        args = parser.parse_args(argv[1:])
        if args.config:
            args = apply_config_file(parser, argv[1:], args)
        assert args.task


def test_commands_that_cannot_run_data_parallel_are_refused_under_a_launcher(monkeypatch, capsys):
    from deliberate.cli import main_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main_cli(["train", "rest-em", "--out", "/nonexistent/never-written"]) == 2
    assert "does not run under accelerate launch" in capsys.readouterr().err
    assert main_cli(["sweep", "--task", "arith", "--out", "/nonexistent/never-written"]) == 2
    assert "`deliberate sweep` does not run" in capsys.readouterr().err


def _tensors(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_config_yaml_reruns_a_recipe_and_an_eval_exactly(tmp_path, capsys):
    import yaml

    from deliberate.records import load_records

    sft = tmp_path / "sft"
    flags = ["--steps", "3", "--n-train", "24", "--batch-size", "4", "--d-model", "32", "--n-layers", "1",
             "--n-heads", "2", "--seed", "3", "--threads", "1"]
    assert run(["train", "sft", *flags, "--out", str(sft)], capsys)[0] == 0
    saved = yaml.safe_load((sft / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["seed"] == 3 and saved["out"] == str(sft)
    again = tmp_path / "sft-again"
    assert run(["train", "sft", "--config", str(sft / "config.yaml"), "--out", str(again)], capsys)[0] == 0
    a, b = _tensors(sft / "model"), _tensors(again / "model")
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)

    ev = tmp_path / "ev"
    assert run(["eval", "--task", "arith", "--model", str(sft / "model"), "--n-problems", "3", "--n", "4",
                "--seed", "5", "--out", str(ev)], capsys)[0] == 0
    assert (ev / "config.json").exists() and yaml.safe_load((ev / "config.yaml").read_text())["seed"] == 5
    ev2 = tmp_path / "ev2"  # --task and --model come from the file only
    assert run(["eval", "--config", str(ev / "config.yaml"), "--out", str(ev2)], capsys)[0] == 0
    key = [(r.problem_id, r.strategy, r.index, r.seed, r.text, r.correct) for r in load_records(ev / "records.jsonl")]
    assert key == [(r.problem_id, r.strategy, r.index, r.seed, r.text, r.correct) for r in load_records(ev2 / "records.jsonl")]
    assert len(key) == 3 * 5  # 4 samples + greedy per problem


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def test_config_file_values_yield_to_command_line_flags(tmp_path, capsys, monkeypatch):
    from deliberate.cli import eval as eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "run_eval", lambda config, backend, task: seen.append(config) or {})
    monkeypatch.setattr(eval_cli, "backend_from_args", lambda args: type("B", (), {"close": lambda self: None})())
    monkeypatch.setattr(eval_cli, "format_table", lambda s: "")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: arith\nn: 2\nn-problems: 7\nns: [1, 2]\ntemperature: 0.5\ntask_arg: {max_ops: 2}\n")
    assert run(["eval", "--config", str(cfg), "--n", "3", "--out", str(tmp_path / "o")], capsys)[0] == 0
    c = seen[0]
    assert (c.task, c.n, c.n_problems, c.ns, c.temperature, c.task_options) == ("arith", 3, 7, (1, 2), 0.5,
                                                                                 {"max_ops": 2})


@pytest.mark.parametrize("text, message", [
    ("task: arith\nn_problem: 3\nbogus: 1\n", "unknown options bogus, n_problem"),
    ("- a\n- b\n", "expected a mapping"),
    ("n: 2\n", "--task is required"),
    ("task: arith\nsplit: dev\n", "split: 'dev' is not one of"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, _, err = run(["eval", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def _command_defaults():
    """(argv, FLAGS of the command, the config its defaults should build, values the command supplies)."""
    from deliberate.cli import eval as eval_cli
    from deliberate.cli import label, quickstart, serve, suspects, sweep
    from deliberate.cli.train import sft
    from deliberate.eval.evaluate import EvalConfig
    from deliberate.eval.sweep import SweepConfig
    from deliberate.experiments.quickstart import QuickstartConfig
    from deliberate.experiments.suspects import SuspectsConfig
    from deliberate.rewards.mc_labels import MCConfig
    from deliberate.train.sft import SFTConfig

    return [
        (["eval", "--task", "arith"], eval_cli.FLAGS, EvalConfig(task="arith", out_dir="o"), {"out_dir": "o"}),
        (["sweep", "--task", "arith"], sweep.FLAGS, SweepConfig(task="arith", out_dir="o"), {"out_dir": "o"}),
        (["label", "mc"], label.MC_FLAGS, MCConfig(), {"model": None}),
        (["train", "sft"], sft.FLAGS, SFTConfig(), {"n_kv_heads": 4}),
        (["quickstart"], quickstart.FLAGS, QuickstartConfig(), {}),
        (["suspects"], suspects.FLAGS, SuspectsConfig(), {}),
        (["serve", "--backend", "tiny"], serve.FLAGS, serve.ServeConfig(backend="tiny"), {}),
    ]


@pytest.mark.parametrize("i", range(7))
def test_each_command_s_parser_defaults_equal_its_dataclass_defaults(i):
    """The flags come from the config dataclasses: parsing no optional flag gives the dataclass's defaults,
    field by field (so a default written in the dataclass can never drift from the CLI's)."""
    from deliberate.cli import build_parser

    argv, flags, expected, supplied = _command_defaults()[i]
    args = build_parser().parse_args(argv)
    assert flags.config(args, **supplied) == expected
    # and a flag set on the command line reaches its field (a nested one: through its holder)
    flag, value, read = {"sweep": ("--problem-seed", 7, lambda c: c.problem_seed),
                         "serve": ("--max-n", 7, lambda c: c.limits.max_n),
                         "suspects": ("--epochs", 7.0, lambda c: c.finetune.epochs),
                         "train": ("--d-model", 64, lambda c: c.model.d_model),
                         }.get(argv[0], ("--seed", 7, lambda c: c.seed))
    assert read(flags.config(build_parser().parse_args(argv + [flag, str(value)]), **supplied)) == value


def test_config_file_fills_recorded_flags_of_every_kind(tmp_path, capsys, monkeypatch):
    """--config through the flag record: comma lists (as YAML lists or text), repeatable KEY=VALUE flags (as a
    mapping), a BooleanOptional flag, and the command line's own flags win."""
    from deliberate.cli import sweep as sweep_cli

    seen = []
    monkeypatch.setattr(sweep_cli, "run_sweep", lambda config, *a, **k: seen.append(config) or {"results": []})
    monkeypatch.setattr(sweep_cli, "backend_from_args", lambda args: type("B", (), {"close": lambda self: None})())
    monkeypatch.setattr(sweep_cli, "format_table", lambda s: "")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: arith\nstrategies: [majority, best_of_n]\nbudgets: 2,8\ntaste: []\n"
                   "setting: {temperature: 0.5}\nverifier: oracle\nn_problems: 3\nseeds: [1, 2]\n")
    assert run(["sweep", "--config", str(cfg), "--seeds", "4", "--out", str(tmp_path / "o")], capsys)[0] == 0
    c = seen[0]
    assert (c.strategies, c.budgets, c.taste_sigmas, c.settings, c.seeds, c.n_problems) == (
        ("majority", "best_of_n"), (2, 8), (), {"temperature": 0.5}, (4,), 3)


def test_eval_config_yaml_of_an_earlier_version_still_reads(tmp_path, capsys, monkeypatch):
    """Run directories written before `--greedy/--no-greedy` hold ``no_greedy:``; their config.yaml still reruns."""
    from deliberate.cli import eval as eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "run_eval", lambda config, *a, **k: seen.append(config) or {})
    monkeypatch.setattr(eval_cli, "backend_from_args", lambda args: type("B", (), {"close": lambda self: None})())
    monkeypatch.setattr(eval_cli, "format_table", lambda s: "")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: arith\nn_problems: 3\nno_greedy: true\n")
    assert run(["eval", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)[0] == 0
    assert seen[0].greedy is False
