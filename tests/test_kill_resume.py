"""SIGKILL the long-running CLI jobs at several points, rerun the same command, compare with a run
that was never interrupted.

Each killed job runs as a real process of its own on a tiny model: ``main_cli(argv)`` (what ``python -m
deliberate`` runs) in a child forked from a fork server that has done the CLI's imports once
(tests/cli_child.py), so the twenty commands do not each spend ~5 s of CPU importing torch. The reference
run goes through the same ``main_cli`` in the test process. The test polls the
job's output files and sends SIGKILL as soon as a threshold is reached (a number of complete
lines in a JSONL file, or a file appearing), so the kill points are deterministic up to the few
milliseconds of polling: the kill lands right after that write, i.e. in the middle of the work
that follows it (the next backend call, the next checkpoint rename, ...). After each kill the same
command is started again; after the last kill it runs to the end. Then:

- nothing lost, nothing duplicated: every key of every resumable JSONL file is there exactly once;
- the final numbers equal the uninterrupted run's: records, labels, search results, trees,
  ``summary.json`` accuracies and CIs, trained weights (bit for bit), training log, metrics.

What is *not* compared, and why (it cannot be the same by construction):

- measured wall times (``wall_s`` of records, rows, summary rows, the training log and
  ``compute.json``): they are clock readings;
- the ``compute`` block of ``summary.json`` / ``meta.json``: it is what *the invocations* spent
  (backend calls, tokens, engine and verifier counters). A killed eval/sweep redoes the calls whose
  rows it had not written, so it spends more; ``label mc`` sums ``meta.json``'s compute over resumed
  runs but can only add a chunk's spend once the chunk is done, so the spend of a chunk cut by the
  kill is missing and its cached rollouts are not rerun (and not counted again). The per-row
  accounting that *is* resume-invariant is compared: every labelled solution's
  ``generated_tokens``, every record's and result row's token counts;
- ``config.out_dir`` (the two runs write to different directories).

Both runs use one torch thread, like CI (``OMP_NUM_THREADS=1``); the equality of sampled texts
relies on the engine's batch-invariant seeding (a resumed run batches fewer prompts together), and
the equality of trained weights on checkpoints holding model, optimizer, RNG state, step and the
running loss, with batches a pure function of (seed, step). The kill between the two renames of a
checkpoint replacement (a window of microseconds that polling cannot aim at) is reproduced
deterministically by :func:`test_checkpoint_replacement_interrupted_between_renames`, and the kill
between a labelling chunk's rollouts and its label rows by truncating the labels file.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import cli_child
import pytest

pytestmark = pytest.mark.slow

TIMEOUT = 300


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start(argv: list[str], log: Path):
    proc = cli_child.context().Process(target=cli_child.run, args=(argv, str(log)))
    proc.start()
    return proc


def run_to_end(argv: list[str], log: Path) -> None:
    proc = start(argv, log)
    proc.join(TIMEOUT)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    assert proc.exitcode == 0, log.read_text(errors="replace")[-3000:]


def reference(argv: list[str]) -> None:
    """The uninterrupted run: the same CLI entry point, in this process (no second interpreter start),
    with one torch thread like the killed subprocesses."""
    import torch

    from deliberate.cli import main_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main_cli(argv) == 0
    finally:
        torch.set_num_threads(threads)


def run_and_kill(argv: list[str], when, log: Path) -> bool:
    """Start the command and SIGKILL it as soon as ``when()`` holds; True if it was killed."""
    proc = start(argv, log)
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.exitcode is None and time.monotonic() < deadline:
            if when():
                proc.kill()  # SIGKILL
                proc.join(30)
                return proc.exitcode == -signal.SIGKILL
            time.sleep(0.01)
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    assert proc.exitcode == 0, log.read_text(errors="replace")[-3000:]
    return False


def kill_then_finish(argv: list[str], points, log: Path) -> list[bool]:
    """Kill a run at each point in turn (each rerun resumes the last), then run to the end."""
    killed = [run_and_kill(argv, when, log) for when in points]
    run_to_end(argv, log)
    return killed


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def strip(obj, drop=("wall_s",)):
    """``obj`` without the measured keys, recursively."""
    if isinstance(obj, dict):
        return {k: strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [strip(v, drop) for v in obj]
    return obj


def same_rows(a: Path, b: Path, key) -> None:
    """Same rows (wall times aside) and every key exactly once in both files."""
    ra, rb = jsonl(a), jsonl(b)
    ka, kb = [key(r) for r in ra], [key(r) for r in rb]
    assert len(ka) == len(set(ka)), f"{a}: duplicated rows"
    assert len(kb) == len(set(kb)), f"{b}: duplicated rows"
    assert {key(r): strip(r) for r in ra} == {key(r): strip(r) for r in rb}


def summary_numbers(path: Path) -> dict:
    s = json.loads(path.read_text())
    s.pop("compute", None)
    s["config"].pop("out_dir", None)
    s["config"].pop("out", None)
    return strip(s)


def no_leftovers(out: Path) -> None:
    temps = [p.name for p in out.rglob(".*") if ".tmp" in p.name or ".old" in p.name]
    assert not temps, f"temporary files left behind: {temps}"


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return str(tiny_ckpt)


def test_eval_killed_three_times(model, tmp_path):
    argv = ["eval", "--task", "arith", "--task-arg", "max_ops=2", "--model", model, "--n-problems", "8",
            "--n", "4", "--max-tokens", "48", "--batch-size", "2", "--seed", "5"]
    ref, out, log = tmp_path / "ref", tmp_path / "killed", tmp_path / "stderr.log"
    reference(argv + ["--out", str(ref)])
    rec = out / "records.jsonl"
    points = [lambda: (out / "config.json").exists(),  # before any sample
              lambda: lines(rec) >= 10,  # after the first chunk's samples (greedy + sampled)
              lambda: lines(rec) >= 22]  # mid-run, between two backend calls
    killed = kill_then_finish(argv + ["--out", str(out)], points, log)
    assert all(killed), killed
    same_rows(out / "records.jsonl", ref / "records.jsonl", key=lambda r: (r["problem_id"], r["strategy"], r["index"]))
    assert lines(out / "records.jsonl") == 8 * 5
    assert summary_numbers(out / "summary.json") == summary_numbers(ref / "summary.json")
    no_leftovers(out)


def test_sweep_killed_three_times(model, tmp_path):
    argv = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--model", model, "--verifier", "oracle",
            "--strategies", "majority,best_of_n,beam", "--budgets", "2,4", "--seeds", "0,1", "--n-problems", "4",
            "--batch-problems", "2", "--setting", "max_tokens=48", "--setting", "step_tokens=16",
            "--setting", "max_steps=4", "--setting", "expansions=2"]
    ref, out, log = tmp_path / "ref", tmp_path / "killed", tmp_path / "stderr.log"
    reference(argv + ["--out", str(ref)])
    res = out / "results.jsonl"
    points = [lambda: lines(out / "pool.jsonl") >= 1,  # while sampling the pool
              lambda: lines(res) >= 8,  # during the pool strategies' selections
              lambda: lines(res) >= 2 * 2 * 2 * 4 + 2]  # mid beam search, between batches of problems
    killed = kill_then_finish(argv + ["--out", str(out)], points, log)
    assert all(killed), killed
    run_key = lambda r: (r["problem_id"], r["strategy"], r["n"], r["seed"])
    same_rows(out / "results.jsonl", ref / "results.jsonl", run_key)
    assert lines(res) == 4 * 3 * 2 * 2
    same_rows(out / "trees.jsonl", ref / "trees.jsonl", run_key)
    same_rows(out / "pool.jsonl", ref / "pool.jsonl", lambda r: (r["problem_id"], r["strategy"], r["index"]))
    same_rows(out / "pool_scores.jsonl", ref / "pool_scores.jsonl", lambda r: (r["problem_id"], r["seed"], r["index"]))
    assert summary_numbers(out / "summary.json") == summary_numbers(ref / "summary.json")
    no_leftovers(out)


@pytest.fixture(scope="module")
def mc_labels(model, tmp_path_factory):
    """An uninterrupted `label mc` run: the reference of the kill test and the labels of `train prm`."""
    d = tmp_path_factory.mktemp("mc")
    argv = ["label", "mc", "--model", model, "--task", "arith", "--task-arg", "max_ops=2", "--n-problems", "8",
            "--samples", "2", "--rollouts", "2", "--max-tokens", "40", "--batch-problems", "2", "--seed", "1"]
    reference(argv + ["--out", str(d / "ref")])
    return argv, d / "ref"


def test_label_mc_killed_three_times(mc_labels, tmp_path):
    argv, ref = mc_labels
    argv = argv + ["--out", str(tmp_path / "killed")]
    out, log = tmp_path / "killed", tmp_path / "stderr.log"
    labels, cache = out / "labels.jsonl", out / "rollouts.jsonl"
    # problems are labelled two per chunk: rollouts of the chunk's prefixes first, then its label rows
    chunk_of = {pid: i // 2 for i, pid in enumerate(dict.fromkeys(r["problem_id"] for r in jsonl(ref / "labels.jsonl")))}
    cache_upto = [sum(chunk_of[r["problem_id"]] <= c for r in jsonl(ref / "rollouts.jsonl")) for c in range(4)]
    points = [lambda: lines(cache) >= 1,  # after the first chunk's rollouts
              lambda: lines(labels) >= 6,  # after the second chunk's labels
              lambda: lines(cache) >= cache_upto[2] and lines(labels) >= 6]  # after the third chunk's rollouts
    killed = [run_and_kill(argv, when, log) for when in points]
    assert all(killed), killed
    # and deterministically the kill that lands between a chunk's rollouts and its labels (the
    # rollouts are cached, so the rerun must charge their tokens to the same rows), mid-line
    rows = labels.read_bytes().splitlines(keepends=True)
    last = chunk_of[json.loads(rows[-1])["problem_id"]]
    keep = [r for r in rows if chunk_of[json.loads(r)["problem_id"]] < last]
    assert len(keep) < len(rows) and lines(cache) >= cache_upto[last]
    labels.write_bytes(b"".join(keep) + rows[-1][:25])
    run_to_end(argv, log)
    same_rows(labels, ref / "labels.jsonl", key=lambda r: (r["problem_id"], r["index"]))
    assert lines(labels) == 8 * 2
    same_rows(cache, ref / "rollouts.jsonl", key=lambda r: r["key"])
    a, b = json.loads((out / "meta.json").read_text()), json.loads((ref / "meta.json").read_text())
    a["config"].pop("out"), b["config"].pop("out")
    assert (a["config"], a["rows"]) == (b["config"], b["rows"])  # (its "compute" is not comparable: see top)
    no_leftovers(out)


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _same_training(out: Path, ref: Path) -> None:
    import torch

    wa, wb = _weights(out / "model"), _weights(ref / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    ca, cb = _weights(out / "checkpoint"), _weights(ref / "checkpoint")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    sa = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    sb = json.loads((ref / "checkpoint" / "trainer_state.json").read_text())
    sa["config"].pop("out"), sb["config"].pop("out")
    assert strip(sa) == strip(sb)  # step, config, loss_ema, tokens and FLOPs
    # one log row per checkpoint, same losses and token counts
    assert strip(jsonl(out / "train_log.jsonl")) == strip(jsonl(ref / "train_log.jsonl"))
    assert strip(json.loads((out / "compute.json").read_text())) == strip(json.loads((ref / "compute.json").read_text()))
    no_leftovers(out)


def _ckpt_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_train_sft_killed_three_times(tmp_path):
    argv = ["train", "sft", "--task-arg", "max_ops=2", "--steps", "24", "--n-train", "96", "--batch-size", "8",
            "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--warmup", "3", "--checkpoint-every", "4"]
    ref, out, log = tmp_path / "ref", tmp_path / "killed", tmp_path / "stderr.log"
    reference(argv + ["--out", str(ref)])
    tl = out / "train_log.jsonl"
    points = [lambda: lines(tl) >= 1,  # the step-4 row is logged: the kill lands in/after its checkpoint save
              lambda: _ckpt_step(out) >= 12,  # right after a checkpoint, mid-way through the next steps
              lambda: lines(tl) >= 5]  # step 20 logged, checkpoint being written
    killed = kill_then_finish(argv + ["--out", str(out)], points, log)
    assert all(killed), killed
    _same_training(out, ref)


def test_train_prm_killed_three_times(mc_labels, model, tmp_path):
    _, labels = mc_labels
    argv = ["train", "prm", "--labels", str(labels), "--task-arg", "max_ops=2", "--init-from", model,
            "--steps", "16", "--batch-size", "4", "--warmup", "2", "--checkpoint-every", "3", "--val-frac", "0.25"]
    ref, out, log = tmp_path / "ref", tmp_path / "killed", tmp_path / "stderr.log"
    reference(argv + ["--out", str(ref)])
    tl = out / "train_log.jsonl"
    points = [lambda: lines(tl) >= 1, lambda: _ckpt_step(out) >= 9, lambda: lines(tl) >= 5]
    killed = kill_then_finish(argv + ["--out", str(out)], points, log)
    assert all(killed), killed
    _same_training(out, ref)
    ma = strip(json.loads((out / "metrics.json").read_text()))
    mb = strip(json.loads((ref / "metrics.json").read_text()))
    assert ma == mb  # first/final loss, validation loss and AUC of the final model
    assert json.loads((out / "model" / "verifier.json").read_text()) == \
        json.loads((ref / "model" / "verifier.json").read_text())


def test_checkpoint_replacement_interrupted_between_renames(tmp_path):
    """A kill between the two renames of a checkpoint replacement leaves no ``checkpoint`` but a
    complete old and/or new copy: loading picks the newest complete one and clears the rest."""
    import shutil

    from deliberate.train.common import load_state

    ck = tmp_path / "checkpoint"
    for name, step in ((".checkpoint.old123", 4), (".checkpoint.tmp123", 8), (".checkpoint.tmp77", 12)):
        (tmp_path / name).mkdir()
        if step != 12:  # the step-12 copy was killed while being written: no trainer_state.json
            (tmp_path / name / "trainer_state.json").write_text(json.dumps({"step": step}))
    assert load_state(ck) == {"step": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    shutil.copytree(ck, tmp_path / ".checkpoint.old9")  # the old copy, left when the last rmtree was cut
    assert load_state(ck) == {"step": 8} and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
