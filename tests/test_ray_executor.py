"""``deliberate sweep --executor ray``: the same records as the in-process run, and a worker killed
mid-run loses nothing and duplicates nothing.

The sweep runs on local Ray with 2 workers (one CPU, one torch thread each) on a small trained tiny
model; the in-process reference uses one torch thread too (CPU matmuls can differ in the last bit
between thread counts, which could flip a sampled token). Wall-clock fields are not compared.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from deliberate.errors import DeliberateError
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.executor import LocalExecutor, RayExecutor, Worker, WorkerSpec
from deliberate.models.tiny import TinyBackend
from deliberate.rewards.base import get_verifier
from deliberate.tasks.base import get_task

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests folder

TASK_OPTS = {"max_ops": 2}
SETTINGS = {"max_tokens": 48, "step_tokens": 16, "max_steps": 4, "expansions": 2}


def _config(out: Path, **kw) -> SweepConfig:
    base = {"task": "arith", "out_dir": str(out), "strategies": ("majority", "best_of_n", "beam"),
            "budgets": (2, 4), "seeds": (0, 1), "n_problems": 6, "task_options": TASK_OPTS, "verifier": "oracle",
            "settings": SETTINGS, "batch_problems": 2, "taste_sigmas": (0.0, 1.0), "trees_per_run": 3}
    base.update(kw)
    return SweepConfig(**base)


def _rows(path: Path, key) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.pop("wall_s", None)
        k = key(r)
        assert k not in out, f"duplicate row {k} in {path.name}"
        out[k] = r
    return out


RUN_KEY = lambda r: (r["problem_id"], r["strategy"], r["n"], r["seed"])
FILES = {"results.jsonl": RUN_KEY, "trees.jsonl": RUN_KEY,
         "pool.jsonl": lambda r: (r["problem_id"], r["strategy"], r["index"]),
         "pool_scores.jsonl": lambda r: (r["problem_id"], r["seed"], r["index"])}


def _same_records(a: Path, b: Path) -> None:
    for name, key in FILES.items():
        ra, rb = _rows(a / name, key), _rows(b / name, key)
        assert ra.keys() == rb.keys(), name
        for k in ra:
            assert ra[k] == rb[k], (name, k)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    assert strip(sa["results"]) == strip(sb["results"])
    assert sa["extra"]["taste"] == sb["extra"]["taste"]


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tiny_ckpt, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("ref")
    task = get_task("arith", **TASK_OPTS)
    summary = run_sweep(_config(out), TinyBackend(str(tiny_ckpt)), task=task, progress=False)
    assert summary["compute"]["executor"]["name"] == "local"
    return out


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _spec(tiny_ckpt) -> WorkerSpec:
    return WorkerSpec(backend="tiny", backend_kwargs={"path": str(tiny_ckpt)}, task="arith", task_options=TASK_OPTS,
                      verifier=partial(get_verifier, "oracle"))


def test_two_ray_workers_give_the_in_process_records(tiny_ckpt, reference, ray_local, tmp_path):
    ex = RayExecutor(_spec(tiny_ckpt), workers=2, threads=1)
    try:
        summary = run_sweep(_config(tmp_path), task=get_task("arith", **TASK_OPTS), executor=ex, progress=False)
        pids = ex.worker_pids()
    finally:
        ex.close()
    assert len(set(pids)) == 2 and os.getpid() not in pids  # really two other processes
    assert summary["compute"]["executor"] == {"name": "ray", "workers": 2, "units": ex.stats["units"],
                                              "worker_failures": 0, "units_retried": 0}
    assert summary["compute"]["engine"]["decode_tokens"] > 0  # summed over the workers
    _same_records(tmp_path, reference)


def test_killed_worker_loses_nothing(tiny_ckpt, reference, ray_local, tmp_path):
    """SIGKILL one worker while the sweep runs: its unit reruns on a replacement worker; the records
    equal the uninterrupted in-process run, each exactly once."""
    ex = RayExecutor(_spec(tiny_ckpt), workers=2, threads=1)
    victim = ex.worker_pids()[0]
    errors = []

    def run():
        try:
            run_sweep(_config(tmp_path), task=get_task("arith", **TASK_OPTS), executor=ex, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    pool = tmp_path / "pool.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not pool.exists() or pool.read_bytes().count(b"\n") < 1):
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)  # mid-run: the pool is being sampled, units are in flight
    t.join(timeout=300)
    try:
        assert not t.is_alive(), "the sweep did not finish"
        assert not errors, errors
        assert ex.stats["worker_failures"] >= 1 and ex.stats["units_retried"] >= 1, ex.stats
        assert victim not in ex.worker_pids()
    finally:
        ex.close()
    _same_records(tmp_path, reference)


def _boom(worker, unit):
    raise ValueError(f"bad unit {unit}")


def _die(worker, unit):
    os.kill(os.getpid(), signal.SIGKILL)


def test_unit_errors_are_raised_and_not_retried(tiny_ckpt, ray_local):
    ex = RayExecutor(_spec(tiny_ckpt), workers=1, threads=1, max_unit_retries=1)
    try:
        with pytest.raises(ValueError, match="bad unit 3"):
            ex.map(_boom, [3], lambda u, r: None)
        assert ex.stats["worker_failures"] == 0
        with pytest.raises(DeliberateError, match="failed on 2 Ray workers"):  # a unit that kills every worker
            ex.map(_die, [1], lambda u, r: None)
        assert ex.stats["worker_failures"] == 2
    finally:
        ex.close()


def test_bad_executor_arguments(tiny_ckpt):
    with pytest.raises(DeliberateError, match="--workers"):
        RayExecutor(_spec(tiny_ckpt), workers=0)
    with pytest.raises(DeliberateError, match="--worker-cpus"):
        RayExecutor(_spec(tiny_ckpt), workers=1, cpus=0)


def test_local_executor_runs_units_in_order(tiny_ckpt):
    got = []
    ex = LocalExecutor(TinyBackend(str(tiny_ckpt)), get_task("arith"))
    ex.map(lambda w, u: (isinstance(w, Worker), u * 2), [1, 2, 3], lambda u, r: got.append((u, r)))
    assert got == [(1, (True, 2)), (2, (True, 4)), (3, (True, 6))] and ex.stats["units"] == 3


def test_mc_labelling_on_ray_equals_in_process(tiny_ckpt, ray_local, one_thread, tmp_path):
    from deliberate.rewards.mc_labels import MCConfig, label_mc

    def cfg(out):
        return MCConfig(task="arith", task_options=TASK_OPTS, n_problems=6, samples=2, rollouts=2, max_tokens=40,
                        batch_problems=2, seed=1, out=str(out))

    task = get_task("arith", **TASK_OPTS)
    ref = label_mc(cfg(tmp_path / "ref"), TinyBackend(str(tiny_ckpt)), task=task, progress=False)
    ex = RayExecutor(WorkerSpec("tiny", {"path": str(tiny_ckpt)}, "arith", TASK_OPTS), workers=2, threads=1)
    try:
        got = label_mc(cfg(tmp_path / "ray"), task=task, executor=ex, progress=False)
    finally:
        ex.close()
    assert got["executor"]["name"] == "ray" and got["executor"]["units"] == 3
    assert got["rows"] == ref["rows"] == 12
    for name, key in (("labels.jsonl", lambda r: (r["problem_id"], r["index"])), ("rollouts.jsonl", lambda r: r["key"])):
        assert _rows(tmp_path / "ray" / name, key) == _rows(tmp_path / "ref" / name, key), name
    strip = lambda c: {k: v for k, v in c.items() if k != "wall_s"}
    assert strip(got["compute"]) == strip(ref["compute"])


def test_rest_em_on_ray_workers_equals_in_process(tiny_ckpt, ray_local, one_thread, tmp_path):
    """The E-step sampled by 2 Ray workers gives the in-process rollouts, so the whole ReST-EM run
    (kept samples, M-step, held-out eval) is the same."""
    from deliberate.train.rest_em import RestEMConfig, run_rest_em
    from deliberate.train.selfimprove import FinetuneSettings, policy_rollouts

    task = get_task("arith", **TASK_OPTS)
    problems = task.problems("train", 10, seed=3)
    kw = {"temperature": 1.0, "seed": 7, "batch_problems": 3, "progress": False}
    local = policy_rollouts(tiny_ckpt, task, ("arith", TASK_OPTS), problems, 3, **kw)
    remote = policy_rollouts(tiny_ckpt, task, ("arith", TASK_OPTS), problems, 3, ray={"workers": 2, "threads": 1},
                             **kw)
    assert remote == local and len(local) == 10 and all(len(r) == 3 for r in local)

    def cfg(out):
        return RestEMConfig(init=str(tiny_ckpt), task_options=TASK_OPTS, iterations=1, n_train=12, k=2, keep="outcome",
                            finetune=FinetuneSettings(steps=2, batch_size=4), eval_problems=6, eval_n=2, out=str(out))

    a = run_rest_em(cfg(tmp_path / "local"), progress=False)
    b = run_rest_em(cfg(tmp_path / "ray"), progress=False, ray={"workers": 2, "threads": 1})
    assert (tmp_path / "ray" / "it001" / "samples.jsonl").read_bytes() == \
        (tmp_path / "local" / "it001" / "samples.jsonl").read_bytes()
    strip = lambda rows: [{k: v for k, v in r.items() if "wall" not in k and k != "model"} for r in rows]
    assert strip(a["iterations"]) == strip(b["iterations"])
    with pytest.raises(DeliberateError, match="--executor ray runs the sampled E-step"):
        run_rest_em(RestEMConfig(**{**cfg(tmp_path / "beam").__dict__, "e_step": "beam", "prm": str(tmp_path)}),
                    ray={"workers": 1})


def test_cli_flags_reach_the_ray_workers(tiny_ckpt, ray_local, tmp_path, capsys):
    from deliberate.cli import main_cli

    sweep = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--model", str(tiny_ckpt), "--strategies",
             "majority", "--budgets", "2", "--n-problems", "3", "--taste", "", "--setting", "max_tokens=32",
             "--executor", "ray", "--workers", "1", "--worker-threads", "1", "--out", str(tmp_path / "sweep")]
    assert main_cli(sweep) == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert s["compute"]["executor"]["name"] == "ray" and s["compute"]["executor"]["workers"] == 1
    label = ["label", "mc", "--model", str(tiny_ckpt), "--task", "arith", "--task-arg", "max_ops=2", "--n-problems",
             "2", "--samples", "2", "--rollouts", "2", "--max-tokens", "32", "--executor", "ray", "--workers", "1",
             "--worker-threads", "1", "--out", str(tmp_path / "labels")]
    assert main_cli(label) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "labels" / "meta.json").read_text())
    assert meta["executor"]["name"] == "ray" and meta["rows"] == 4
    assert main_cli(sweep[:-2] + ["--workers", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--workers must be an integer >= 1" in capsys.readouterr().err


def test_plugin_tasks_reach_ray_workers(tiny_ckpt, ray_local, tmp_path, capsys, monkeypatch, clean_registries):
    """The workers were started before $DELIBERATE_PLUGINS was set: they get the plug-ins from the spec."""
    from pathlib import Path

    from deliberate.cli import main_cli

    example = Path(__file__).resolve().parents[1] / "examples" / "my_tasks.py"
    monkeypatch.setenv("DELIBERATE_PLUGINS", str(example))
    sweep = ["sweep", "--task", "times", "--task-arg", "max_digits=2", "--model", str(tiny_ckpt), "--verifier",
             "shortest", "--strategies", "best_of_n", "--budgets", "2", "--n-problems", "2", "--taste", "",
             "--executor", "ray", "--workers", "1", "--worker-threads", "1", "--out", str(tmp_path / "sweep")]
    assert main_cli(sweep) == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert s["compute"]["executor"]["name"] == "ray" and s["config"]["task"] == "times"
