"""The recipes in configs/recipes/ run as ``deliberate sweep --config FILE`` (issue 31 item 5).

Each recipe runs unchanged except for what CI cannot have: the model, verifier and data paths point at
tiny stand-ins built here (a tiny random Llama with SmolLM2's tokenizer, a tiny Qwen2.5-Math-PRM-shaped
checkpoint, a few-row data file in the recipe's format), sizes shrink (problems, budgets, token limits),
a GPU recipe's ``device`` becomes ``cpu``, and ``out`` goes to a temporary directory. Every other key
(chat, dtype, system prompt, preset, temperature, expansions, task options, strategies) is the file's
own, and every strategy of the file runs. The GPU recipe's commented vLLM variant runs too, against
the fake vLLM server of tests/fake_vllm.py, which refuses any request vLLM would not accept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_hf
from fake_vllm import FakeVLLM, shape_errors
from test_published_verifiers import build_qwen_prm

from deliberate.cli import main_cli

RECIPES = Path(__file__).parents[1] / "configs" / "recipes"
GPU, CPU, OWN = (RECIPES / f"{name}.yaml" for name in ("math500-qwen-prm-gpu", "gsm8k-smollm2-cpu", "own-jsonl"))
#: what shrinks: solutions of 16 tokens, steps of 8, 2 steps, and one budget
SIZES = {"max_tokens": 16, "step_tokens": 8, "max_steps": 2}
MATH_ROWS = [{"problem": "What is $2+3$?", "solution": "$2+3=\\boxed{5}$", "answer": "5", "level": 1},
             {"problem": "Simplify $\\frac{4}{6}$.", "solution": "$\\boxed{\\frac{2}{3}}$", "answer": "\\frac{2}{3}",
              "level": 2}]
GSM8K_ROWS = [{"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
              {"question": "A box holds 6 eggs. How many eggs in 2 boxes?", "answer": "6*2=<<6*2=12>>12\n#### 12"}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The tiny generator (its tokenizer is SmolLM2's, chat template included) and a Qwen-PRM-shaped PRM."""
    root = tmp_path_factory.mktemp("recipe-stand-ins")
    model = build_tiny_hf(root / "model", 16, 1, 2, 1)
    return {"model": model, "qwen-prm": build_qwen_prm(root / "qwen-prm", model)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pairs(flag: str, mapping: dict) -> list[str]:
    """``--flag KEY=VALUE`` for each entry: a mapping flag given on the command line replaces the file's."""
    return [a for k, v in mapping.items() for a in (flag, f"{k}={v}")]


def sweep(config: Path, out: Path, *overrides: str) -> list[dict]:
    """Run the recipe with ``overrides``; the results rows."""
    assert main_cli(["sweep", "--config", str(config), "--out", str(out), "--n-problems", "2",
                     "--budgets", "2", *overrides]) == 0
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def check_every_strategy_ran(cfg: dict, rows: list[dict]) -> None:
    got = sorted((r["strategy"], r["problem_id"]) for r in rows)
    problems = {r["problem_id"] for r in rows}
    assert len(problems) == 2
    assert got == sorted((s, p) for s in cfg["strategies"] for p in problems)


def sizes(cfg: dict) -> list[str]:
    """The file's search settings with only the sizes shrunk."""
    return pairs("--setting", {**cfg["setting"], **SIZES})


def on_cpu(mapping: dict) -> dict:
    return {**mapping, "device": "cpu"}


def test_the_gpu_recipe_runs_every_strategy(stand_ins, tmp_path):
    cfg = recipe(GPU)
    assert cfg["verifier"].startswith("qwen-prm:") and cfg["preset"] == "instruct"
    data = write_jsonl(tmp_path / "math500.jsonl", MATH_ROWS)
    out = tmp_path / "run"
    rows = sweep(GPU, out, "--task", f"dataset:{data}", "--model", str(stand_ins["model"]),
                 "--verifier", f"qwen-prm:{stand_ins['qwen-prm']}", *sizes(cfg),
                 *pairs("--backend-arg", on_cpu(cfg["backend_arg"])),
                 *pairs("--verifier-arg", on_cpu(cfg["verifier_arg"])))
    check_every_strategy_ran(cfg, rows)
    ran = json.loads((out / "config.json").read_text())
    # the file's own search settings and the preset's reach the run; the PRM's card aggregation is min
    settings = ran["search_settings"]
    assert (settings["temperature"], settings["expansions"], settings["step_delimiter"]) == (0.8, 4, "\n\n")
    assert (settings["prompt_style"], settings["aggregation"]) == ("instruct", "min")
    assert ran["task_options"] == cfg["task_arg"]
    assert json.loads((out / "summary.json").read_text())["compute"]["verifier"]["sequences"] > 0


def vllm_variant() -> dict:
    """The generator keys of the GPU recipe's commented vLLM variant, uncommented."""
    text = GPU.read_text()
    block = re.search(r"^# and replace the five generator keys above with:\n(.*?)^# -{20,}", text, re.M | re.S)
    assert block, "the vLLM variant block is missing from the GPU recipe"
    return yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.group(1).splitlines()))


def test_the_gpu_recipes_vllm_variant_sends_requests_vllm_accepts(stand_ins, tmp_path):
    cfg, variant = recipe(GPU), vllm_variant()
    assert set(variant) == {"backend", "base_url", "model", "chat", "backend_arg"}
    assert variant["backend"] == "openai" and variant["model"] == cfg["model"]
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump({**{k: v for k, v in cfg.items() if k not in ("backend_arg",)}, **variant}))
    data = write_jsonl(tmp_path / "math500.jsonl", MATH_ROWS)
    with FakeVLLM(model=variant["model"], reply=lambda body, i: f" Step {i}.\n\nSo $\\boxed{{{5 + i}}}$.") as server:
        rows = sweep(config, tmp_path / "run", "--task", f"dataset:{data}", "--base-url", server.base_url,
                     "--verifier", f"qwen-prm:{stand_ins['qwen-prm']}", *sizes(cfg),
                     *pairs("--backend-arg", {**variant["backend_arg"], "tokenizer": stand_ins["model"]}),
                     *pairs("--verifier-arg", on_cpu(cfg["verifier_arg"])))
        requests = list(server.requests)
    check_every_strategy_ran(cfg, rows)
    assert requests and all(not shape_errors(path, body) for path, body in requests)
    # the client-side chat template: completions requests, the system prompt and the question in the prompt
    assert {path for path, _ in requests} == {"/v1/completions"}
    prompts = [body["prompt"] for _, body in requests]
    assert all(variant["backend_arg"]["system_prompt"] in p for p in prompts)
    assert all(any(row["problem"] in p for p in prompts) for row in MATH_ROWS)
    assert {body["temperature"] for _, body in requests} == {cfg["setting"]["temperature"]}


def test_the_cpu_recipe_runs_every_strategy(stand_ins, tmp_path):
    cfg = recipe(CPU)
    assert cfg["task"] == "gsm8k" and cfg["verifier"].startswith("genrm:") and cfg["backend_arg"]["device"] == "cpu"
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    out = tmp_path / "run"
    rows = sweep(CPU, out, "--task-arg", f"path={data}", "--model", str(stand_ins["model"]),
                 "--verifier", f"genrm:{stand_ins['model']}", *sizes(cfg))
    check_every_strategy_ran(cfg, rows)
    settings = json.loads((out / "config.json").read_text())["search_settings"]
    assert (settings["aggregation"], settings["prompt_style"]) == ("last", "instruct")


def test_the_own_jsonl_recipe_runs_on_its_example_file(stand_ins, tmp_path, monkeypatch):
    cfg = recipe(OWN)
    monkeypatch.chdir(RECIPES.parents[1])  # its data path is relative to the repository root, as documented
    out = tmp_path / "run"
    rows = sweep(OWN, out, "--model", str(stand_ins["model"]), "--verifier", f"genrm:{stand_ins['model']}",
                 *sizes(cfg), *pairs("--backend-arg", on_cpu(cfg["backend_arg"])),
                 *pairs("--verifier-arg", on_cpu(cfg["verifier_arg"])))
    check_every_strategy_ran(cfg, rows)
    # the example file's own ids and gold answers, read through the recipe's field mapping
    example = [json.loads(x) for x in (RECIPES / "own-jsonl-example.jsonl").read_text().splitlines()]
    assert {(r["problem_id"], r["gold"]) for r in rows} == {(e["id"], e["final"]) for e in example[:2]}
