"""Models and data the ecosystem's way (issue 31 item 1), offline: a tiny checkpoint and small data sets
written in the Hugging Face hub cache layout (``models--org--name/snapshots/<commit>`` + ``refs/main``)
load by hub id with ``HF_HUB_OFFLINE=1``; a revision picks its own snapshot; ``dataset:SOURCE`` reads
hub data sets and local json/jsonl/parquet/csv files with named fields."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.models.sampling import SamplingParams
from deliberate.policy.hf import HFPolicy
from deliberate.policy.load import load_policy
from deliberate.tasks import get_task

MAIN = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
REPO = "tiny-org/tiny-llama"
SRC = Path(__file__).resolve().parents[1] / "src"


def cache_repo(hub: Path, kind: str, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """``hub/<kind>s--org--name`` as the hub client lays it out: a snapshot folder per commit, refs by name."""
    root = hub / f"{kind}s--{repo.replace('/', '--')}"
    for commit, src in snapshots.items():
        shutil.copytree(src, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    for name, commit in refs.items():
        (root / "refs" / name).write_text(commit)
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache holding tiny-org/tiny-llama at two commits (main and OTHER, different weights)."""
    tmp = tmp_path_factory.mktemp("hub")
    main = build_tiny_hf(tmp / "main", 16, 1, 2, 1)
    other = tmp / "other"
    shutil.copytree(main, other)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(other))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.save_pretrained(other)
    cache_repo(tmp / "cache", "model", REPO, {MAIN: main, OTHER: other}, {"main": MAIN})
    return tmp


@pytest.fixture
def offline(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub / "cache"))
    import datasets  # the arrow cache that load_dataset writes goes under the test's folder

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    return hub / "cache"


PARAMS = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=3)


def test_a_hub_id_loads_its_cached_snapshot_offline(offline, hub):
    by_id = get_backend("hf", path=REPO, device="cpu", dtype="float32")
    by_dir = get_backend("hf", path=str(hub / "main"), device="cpu", dtype="float32")
    assert by_id.model_name == f"hf:{REPO}"
    assert by_id.generate(["2+2="], PARAMS) == by_dir.generate(["2+2="], PARAMS)
    # a revision (here a commit) picks its own snapshot: other weights, other samples
    pinned = get_backend("hf", path=REPO, revision=OTHER, device="cpu", dtype="float32")
    weights = [p for p in pinned.model.parameters()][0]
    assert not torch.equal(weights, next(by_id.model.parameters()))
    # and a dtype is loaded as asked
    assert next(get_backend("hf", path=REPO, device="cpu", dtype="bfloat16").model.parameters()).dtype == torch.bfloat16


def test_a_policy_from_a_hub_id_works_on_the_snapshot_directory(offline):
    policy = load_policy(REPO, revision=OTHER, device="cpu", dtype="float32")
    assert isinstance(policy, HFPolicy)
    assert policy.path == offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / OTHER
    assert policy.chat is True  # SmolLM2's tokenizer has a chat template
    assert policy.backend().model_name == f"hf:{REPO}@{OTHER[:12]}:chat"  # the readable name survives


def test_device_map_and_trust_remote_code_reach_from_pretrained(offline, monkeypatch):
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__
    asked = []

    def spy(cls, *a, **kw):
        asked.append({k: kw.get(k) for k in ("device_map", "trust_remote_code", "dtype")})
        return real(cls, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    b = get_backend("hf", path=REPO, device_map="cpu", trust_remote_code=True, dtype="float32")
    assert asked == [{"device_map": "cpu", "trust_remote_code": True, "dtype": torch.float32}]
    assert b.device == "cpu" and len(b.generate(["1+1="], PARAMS)[0]) == 2
    with pytest.raises(DeliberateError, match="trust_remote_code must be true or false"):
        get_backend("hf", path=REPO, trust_remote_code="yes")


def test_missing_hub_models_and_misplaced_revisions_are_one_line(offline, hub):
    with pytest.raises(DeliberateError) as e:
        get_backend("hf", path="tiny-org/absent", device="cpu")
    assert "not in the Hugging Face cache" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(DeliberateError, match="not in the Hugging Face cache"):
        get_backend("hf", path=REPO, revision="no-such-branch", device="cpu")
    with pytest.raises(DeliberateError, match="applies to a hub id"):
        get_backend("hf", path=str(hub / "main"), revision="main", device="cpu")
    with pytest.raises(DeliberateError, match="does not exist"):
        load_policy("./tiny-org/absent")


def test_the_cli_loads_a_hub_model_and_a_hub_dataset_with_the_env_alone(hub, tmp_path):
    """The variables a user sets (HF_HOME, HF_HUB_OFFLINE), read by a fresh process: no monkeypatching."""
    home = tmp_path / "hf"
    shutil.copytree(hub / "cache", home / "hub")
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"input": f"{a} plus {a}?", "target": 2 * a}) + "\n"
                                             for a in range(3)))
    cache_repo(home / "hub", "dataset", "tiny-org/sums", {MAIN: data}, {"main": MAIN})
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(SRC)}
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deliberate", "eval", "--backend", "hf", "--model", REPO, "--task",
           "dataset:tiny-org/sums", "--task-arg", "question_field=input", "--task-arg", "answer_field=target",
           "--n-problems", "3", "--n", "1", "--no-greedy", "--max-tokens", "4", "--out", str(out),
           "--backend-arg", "device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted({r["gold"] for r in rows}) == ["0", "2", "4"]
    assert json.loads((out / "summary.json").read_text())["model"] == f"hf:{REPO}"


# ------------------------------------------------------------------------------------------ data sets


def write(path: Path, rows: list[dict]) -> Path:
    import datasets  # lazy: datasets, as the task imports it

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files_with_named_fields(offline, tmp_path, suffix):
    f = write(tmp_path / f"mine{suffix}", [{"id": "a", "prompt": "Ann has 3 apples and buys 4.", "target": "7"},
                                           {"id": "b", "prompt": "Half of 10?", "target": "5.0"}])
    task = get_task(f"dataset:{f}", question_field="prompt", answer_field="target", id_field="id")
    probs = task.problems()
    assert [(p.id, p.question, p.answer) for p in probs] == [("a", "Ann has 3 apples and buys 4.", "7"),
                                                            ("b", "Half of 10?", "5")]
    assert task.is_correct(task.extract_answer("3 + 4 = 7.\nThe answer is 7."), probs[0])
    assert not task.is_correct(task.extract_answer("The answer is 8."), probs[0])
    with pytest.raises(DeliberateError, match="one file, one split"):
        task.problems("train")


def test_latex_and_gsm8k_answer_formats(offline, tmp_path):
    f = write(tmp_path / "math.jsonl", [{"problem": "Simplify 2/4.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
                                        {"problem": "Name the interval.", "solution": "$(0, 1]$"}])
    task = get_task(f"dataset:{f}", question_field="problem", answer_field="solution", answer_format="latex")
    half, interval = task.problems()
    assert (half.answer, interval.answer) == ("\\frac{1}{2}", "$(0, 1]$")
    assert "\\boxed{}" in task.prompt(half, "instruct") and task.max_tokens == 1024
    assert task.is_correct(task.extract_answer("So \\boxed{0.5}."), half)
    assert task.normalize("\\frac{1}{2}") == "1/2"  # LaTeX normalised, as math500 groups votes

    g = write(tmp_path / "gsm.jsonl", [{"question": "2 packs of 3?", "answer": "2*3=<<2*3=6>>6\n#### 6"}])
    gsm = get_task(f"dataset:{g}", answer_format="gsm8k")
    (p,) = gsm.problems()
    assert p.answer == "6" and gsm.rationale(p) == "2*3=6\nAnswer: 6"


def test_dataset_errors_name_the_row_and_the_fields(offline, tmp_path):
    f = write(tmp_path / "d.jsonl", [{"question": "q1", "answer": "1"}, {"question": "q2", "answer": "two"}])
    with pytest.raises(DeliberateError, match=r"row 1: answer 'two' is not a number"):
        get_task(f"dataset:{f}").problems()
    with pytest.raises(DeliberateError, match=r"no field 'answers' for answer_field \(did you mean 'answer'\?\)"):
        get_task(f"dataset:{f}", answer_field="answers").problems()
    with pytest.raises(DeliberateError, match="answer_format must be one of number, gsm8k, latex"):
        get_task(f"dataset:{f}", answer_format="text")
    with pytest.raises(DeliberateError, match="neither a local file or folder nor a hub data set"):
        get_task("dataset:./nowhere.jsonl").problems()


def test_a_hub_dataset_with_splits_and_a_revision(offline, tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write(v1 / "test.jsonl", [{"question": "1+1?", "answer": 2}])
    write(v1 / "train.jsonl", [{"question": "2+2?", "answer": 4}, {"question": "3+3?", "answer": 6}])
    write(v2 / "test.jsonl", [{"question": "5+5?", "answer": 10}])
    cache_repo(offline, "dataset", "tiny-org/sums", {MAIN: v1, OTHER: v2}, {"main": MAIN})
    task = get_task("dataset:tiny-org/sums")
    assert [p.answer for p in task.problems()] == ["2"]
    assert [p.answer for p in task.problems("train")] == ["4", "6"]
    assert [p.answer for p in get_task("dataset:tiny-org/sums", revision=OTHER).problems()] == ["10"]
    with pytest.raises(DeliberateError, match="has no split 'validation'; its splits: "):
        get_task("dataset:tiny-org/sums", split="validation").problems()
    with pytest.raises(DeliberateError, match="not in the Hugging Face cache"):
        get_task("dataset:tiny-org/absent").problems()
