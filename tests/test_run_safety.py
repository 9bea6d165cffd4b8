"""Runs that cannot mix data (issue 32, item 5).

- a resume (``eval``, ``sweep``, ``label mc``, and the train recipes' ``--init``) refuses, in one line, when the model's weights changed
  under the same ``--model`` path (or an in-memory model changed), and accepts the same weights;
- the lock on ``--out`` is taken before anything, ``config.json`` included, is written;
- ``--out`` naming an existing file, a non-UTF-8 byte in a JSONL we read, and a full disk (ENOSPC)
  each give one ``deliberate: error: ...`` line and exit status 2, not a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import FakeBackend

from deliberate.cli import main_cli
from deliberate.errors import DeliberateError
from deliberate.eval.evaluate import EvalConfig, run_eval
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.executor import LocalExecutor, WorkerSpec
from deliberate.models.openai import OpenAIBackend
from deliberate.models.tiny import CharTokenizer, TinyBackend, TinyConfig, build_tiny_model, save_tiny
from deliberate import fingerprint, records
from deliberate.records import JsonlAppender, RecordWriter, load_records
from deliberate.rewards.mc_labels import MCConfig, label_mc, read_labels, read_prm800k
from deliberate.tasks.jsonl import read_jsonl

SMALL = TinyConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, max_len=128)


def make_tiny(directory: Path, seed: int) -> Path:
    """A freshly initialised (untrained) tiny checkpoint: weights differ with ``seed``."""
    tok = CharTokenizer()
    save_tiny(build_tiny_model(SMALL, tok, seed=seed), tok, directory)
    return directory


def eval_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--task", "arith", "--n-problems", "2", "--n", "2", "--max-tokens", "6", "--batch-size", "2",
            "--backend", "tiny", "--model", str(model), "--out", str(out), *extra]


def one_error_line(capsys) -> str:
    """The one ``deliberate: error:`` line on stderr (transformers' loading progress bars aside), and no traceback."""
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("deliberate:")]
    assert "Traceback" not in err and len(ours) == 1 and ours[0].startswith("deliberate: error: "), err
    return ours[0]


# --- fingerprints ---------------------------------------------------------------------------------

def test_weights_fingerprint_tracks_content_not_path_or_mtime(tmp_path):
    a = make_tiny(tmp_path / "a", seed=0)
    b = make_tiny(tmp_path / "b", seed=0)
    c = make_tiny(tmp_path / "c", seed=1)
    fa = fingerprint.weights_fingerprint(a)
    assert fa.startswith("sha256:")
    assert fingerprint.weights_fingerprint(b) == fa  # the same weights elsewhere: a small checkpoint is hashed in full
    assert fingerprint.weights_fingerprint(c) != fa
    os.utime(a / "model.safetensors", ns=(1, 1))  # a touch of a fully hashed file changes nothing
    assert fingerprint.weights_fingerprint(a) == fa


def test_sampled_fingerprint_of_large_weights_sees_size_mtime_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "FULL_HASH_BELOW", 1024)  # treat this small file as a large one
    monkeypatch.setattr(fingerprint, "SAMPLE_BYTES", 64)
    d = tmp_path / "m"
    d.mkdir()
    f = d / "model.safetensors"
    f.write_bytes(bytes(range(256)) * 16)
    (d / "notes.txt").write_text("not a weight file")
    st = f.stat()
    base = fingerprint.weights_fingerprint(d)

    def changed(edit) -> str:
        data = bytearray(bytes(range(256)) * 16)
        edit(data)
        f.write_bytes(bytes(data))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        return fingerprint.weights_fingerprint(d)

    assert changed(lambda b: None) == base
    assert changed(lambda b: b.__setitem__(0, 255)) != base  # head
    assert changed(lambda b: b.__setitem__(len(b) - 1, 0)) != base  # tail
    changed(lambda b: None)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert fingerprint.weights_fingerprint(d) != base  # mtime
    (d / "notes.txt").write_text("other notes")  # not a weight file: ignored
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint.weights_fingerprint(d) == base


def test_model_fingerprint_of_each_backend_kind(tmp_path):
    ckpt = make_tiny(tmp_path / "m", seed=0)
    assert fingerprint.model_fingerprint(TinyBackend(ckpt)) == fingerprint.weights_fingerprint(ckpt)
    tok = CharTokenizer()
    m0, m1 = build_tiny_model(SMALL, tok, seed=0), build_tiny_model(SMALL, tok, seed=1)
    f0 = fingerprint.model_fingerprint(TinyBackend(model=m0, tokenizer=tok))  # no path: the tensors in memory
    assert f0 == fingerprint.model_fingerprint(TinyBackend(model=build_tiny_model(SMALL, tok, seed=0), tokenizer=tok))
    assert f0 != fingerprint.model_fingerprint(TinyBackend(model=m1, tokenizer=tok))
    # a remote server's weights are out of reach: the served model id stands for them
    assert fingerprint.model_fingerprint(OpenAIBackend("http://127.0.0.1:9/v1", model="qwen-7b")) == "served:qwen-7b"
    assert fingerprint.model_fingerprint(FakeBackend()) is None  # nothing to fingerprint
    # executors: the local one's backend; Ray workers' --model as this process sees it
    assert fingerprint.model_fingerprint(LocalExecutor(TinyBackend(ckpt), None)) == fingerprint.weights_fingerprint(ckpt)
    ray_like = SimpleNamespace(spec=WorkerSpec("tiny", {"path": str(ckpt)}), model_name=lambda: "tiny")
    assert fingerprint.model_fingerprint(ray_like) == fingerprint.weights_fingerprint(ckpt)
    served = SimpleNamespace(spec=WorkerSpec("openai", {"model": "m"}), model_name=lambda: "m")
    assert fingerprint.model_fingerprint(served) == "served:m"


# --- resume checks the weights --------------------------------------------------------------------

def test_eval_resume_refuses_changed_weights_in_one_line(tmp_path, capsys):
    ckpt, out = tmp_path / "model", tmp_path / "run"
    make_tiny(ckpt, seed=0)
    assert main_cli(eval_argv(ckpt, out)) == 0
    on_disk = (out / "records.jsonl").read_bytes()
    assert json.loads((out / "config.json").read_text())["model_fingerprint"] == fingerprint.weights_fingerprint(ckpt)
    assert main_cli(eval_argv(ckpt, out, "--n", "3", "--ns", "1,2")) == 0  # same weights: the run extends
    capsys.readouterr()
    make_tiny(ckpt, seed=1)  # retrained in place
    assert main_cli(eval_argv(ckpt, out, "--n", "4", "--ns", "1,2")) == 2
    line = one_error_line(capsys)
    assert "weights" in line and str(ckpt) in line
    assert (out / "records.jsonl").read_bytes().startswith(on_disk)
    assert len(load_records(out / "records.jsonl")) == 2 * (1 + 3)  # nothing of the new weights was written


def test_eval_resume_refuses_a_different_in_memory_model(tmp_path):
    tok = CharTokenizer()
    cfg = EvalConfig(task="arith", n_problems=2, n=2, max_tokens=6, out_dir=str(tmp_path / "run"))
    run_eval(cfg, TinyBackend(model=build_tiny_model(SMALL, tok, seed=0), tokenizer=tok), progress=False)
    with pytest.raises(DeliberateError, match="weights"):
        run_eval(cfg, TinyBackend(model=build_tiny_model(SMALL, tok, seed=1), tokenizer=tok), progress=False)


def test_sweep_resume_refuses_changed_weights(tmp_path):
    ckpt = make_tiny(tmp_path / "model", seed=0)
    cfg = SweepConfig(task="arith", out_dir=str(tmp_path / "sweep"), strategies=("majority",), budgets=(2,),
                      n_problems=2, taste_sigmas=(), settings={"max_tokens": 6})
    run_sweep(cfg, TinyBackend(ckpt), progress=False)
    run_sweep(cfg, TinyBackend(ckpt), progress=False)  # the same weights resume
    make_tiny(ckpt, seed=1)
    with pytest.raises(DeliberateError, match="weights"):
        run_sweep(cfg, TinyBackend(ckpt), progress=False)
    # --pool-from another sweep's samples: refused too when they came from other weights
    other = SweepConfig(task="arith", out_dir=str(tmp_path / "sweep2"), strategies=("majority",), budgets=(2,),
                        n_problems=2, taste_sigmas=(), settings={"max_tokens": 6}, pool_from=cfg.out_dir)
    with pytest.raises(DeliberateError, match="weights"):
        run_sweep(other, TinyBackend(ckpt), progress=False)


def test_label_mc_resume_refuses_changed_weights(tmp_path):
    ckpt = make_tiny(tmp_path / "model", seed=0)
    cfg = MCConfig(task="arith", n_problems=1, samples=1, rollouts=1, max_tokens=6, model=str(ckpt),
                   out=str(tmp_path / "labels"))
    meta = label_mc(cfg, TinyBackend(ckpt), progress=False)
    assert meta["model_fingerprint"] == fingerprint.weights_fingerprint(ckpt)
    label_mc(cfg, TinyBackend(ckpt), progress=False)
    make_tiny(ckpt, seed=1)
    with pytest.raises(DeliberateError, match="weights"):
        label_mc(cfg, TinyBackend(ckpt), progress=False)


# --- the lock comes first -------------------------------------------------------------------------

class GatedFake(FakeBackend):
    """Blocks in its first generate until released: a run caught in the middle."""

    def __init__(self):
        super().__init__()
        self.inside, self.release = threading.Event(), threading.Event()

    def generate(self, prompts, params):
        self.inside.set()
        assert self.release.wait(30)
        return super().generate(prompts, params)


def test_out_lock_is_taken_before_config_json_is_written(tmp_path):
    out = tmp_path / "run"
    first = EvalConfig(task="arith", n_problems=2, n=2, max_tokens=6, out_dir=str(out))
    busy, errors = GatedFake(), []

    def run_first():
        try:
            run_eval(first, busy, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run_first)
    t.start()
    try:
        assert busy.inside.wait(30)
        before = (out / "config.json").read_bytes()
        assert json.loads(before)["n"] == 2
        # a second run into the same --out (n may differ on a resume) must not touch the first run's files
        second = EvalConfig(task="arith", n_problems=2, n=4, max_tokens=6, out_dir=str(out))
        with pytest.raises(DeliberateError, match="another process"):
            run_eval(second, FakeBackend(), progress=False)
        assert (out / "config.json").read_bytes() == before
    finally:
        busy.release.set()
        t.join(30)
    assert not errors


def test_sweep_and_label_lock_out_before_writing(tmp_path):
    out = tmp_path / "run"
    with records.lock_out_dir(out):
        with pytest.raises(DeliberateError, match="another process"):
            run_sweep(SweepConfig(task="arith", out_dir=str(out), strategies=("majority",), budgets=(2,),
                                  n_problems=2, taste_sigmas=()), FakeBackend(), progress=False)
        with pytest.raises(DeliberateError, match="another process"):
            label_mc(MCConfig(task="arith", n_problems=1, samples=1, rollouts=1, out=str(out)), FakeBackend(),
                     progress=False)
    assert sorted(p.name for p in out.iterdir()) == []


# --- --out naming a file --------------------------------------------------------------------------

def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    ckpt = make_tiny(tmp_path / "model", seed=0)
    f = tmp_path / "taken.txt"
    f.write_text("precious\n")
    assert main_cli(eval_argv(ckpt, f)) == 2
    line = one_error_line(capsys)
    assert str(f) in line and "not a directory" in line
    assert main_cli(eval_argv(ckpt, f / "sub")) == 2  # a file in the way further up
    assert "not a directory" in one_error_line(capsys)
    assert f.read_text() == "precious\n"


def test_out_naming_a_file_sweep_and_label(tmp_path):
    f = tmp_path / "taken.txt"
    f.write_text("x")
    with pytest.raises(DeliberateError, match="not a directory"):
        run_sweep(SweepConfig(task="arith", out_dir=str(f), strategies=("majority",), budgets=(2,), n_problems=2,
                              taste_sigmas=()), FakeBackend(), progress=False)
    with pytest.raises(DeliberateError, match="not a directory"):
        label_mc(MCConfig(task="arith", n_problems=1, samples=1, rollouts=1, out=str(f)), FakeBackend(),
                 progress=False)


# --- non-UTF-8 bytes ------------------------------------------------------------------------------

BAD = b'{"question": "q", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n'


def test_task_jsonl_with_a_non_utf8_byte_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "test.jsonl"
    f.write_bytes(BAD)
    with pytest.raises(DeliberateError, match=rf"{f}:2: .*UTF-8"):
        read_jsonl(f)
    # through the CLI: one line, before any model loads
    assert main_cli(["eval", "--task", "gsm8k", "--task-arg", f"path={f}", "--out", str(tmp_path / "o")]) == 2
    assert f"{f}:2" in one_error_line(capsys)


def test_records_and_labels_with_a_non_utf8_byte(tmp_path):
    rec = tmp_path / "records.jsonl"
    rec.write_bytes(b'{"problem_id": "p\xff"}\n')
    with pytest.raises(DeliberateError, match=rf"{rec}:1"):
        load_records(rec)
    with pytest.raises(DeliberateError, match=rf"{rec}:1"):
        RecordWriter(rec)
    with pytest.raises(DeliberateError, match=rf"{rec}:1"):
        JsonlAppender(rec, key=lambda r: r["problem_id"])
    lab = tmp_path / "labels.jsonl"
    lab.write_bytes(b'{"question": "\xc3"}\n')
    with pytest.raises(DeliberateError, match=rf"{lab}:1"):
        read_labels(lab)
    with pytest.raises(DeliberateError, match=rf"{lab}:1"):
        read_prm800k(lab)


def test_an_earlier_config_json_with_a_non_utf8_byte(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_bytes(b'{"task": "arith\xff"}')
    with pytest.raises(DeliberateError, match="config.json"):
        run_eval(EvalConfig(task="arith", n_problems=1, n=1, max_tokens=4, out_dir=str(out)), FakeBackend(),
                 progress=False)


# --- a full disk ----------------------------------------------------------------------------------

def full_disk_at(monkeypatch, name: str) -> None:
    """``os.fsync`` of a file called ``name`` fails with ENOSPC, as a full disk reports it."""
    real = os.fsync

    def fsync(fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if Path(target).name == name or Path(target).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("name", ["records.jsonl", "config.json", "summary.json"])
def test_full_disk_during_eval_is_one_line(tmp_path, capsys, monkeypatch, name):
    ckpt = make_tiny(tmp_path / "model", seed=0)
    out = tmp_path / "run"
    full_disk_at(monkeypatch, name)
    assert main_cli(eval_argv(ckpt, out)) == 2
    line = one_error_line(capsys)
    assert "no space left on device" in line.lower() and name in line
    monkeypatch.undo()  # space again: the same command resumes and finishes
    assert main_cli(eval_argv(ckpt, out)) == 0


def test_full_disk_in_a_jsonl_appender_and_elsewhere(tmp_path, capsys, monkeypatch):
    full_disk_at(monkeypatch, "results.jsonl")
    with JsonlAppender(tmp_path / "results.jsonl", key=lambda r: r["k"]) as f, \
            pytest.raises(DeliberateError, match="(?i)no space left on device"):
        f.append([{"k": 1}])
    monkeypatch.undo()
    # an ENOSPC from a write outside the record files (a plot, a checkpoint) is one line too
    from deliberate.eval import plots

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "accuracy_vs_n.png"))

    monkeypatch.setattr(plots, "plot_accuracy_vs_n", full)
    ckpt = make_tiny(tmp_path / "model", seed=0)
    assert main_cli(eval_argv(ckpt, tmp_path / "run")) == 2
    line = one_error_line(capsys)
    assert "no space left on device" in line.lower() and "accuracy_vs_n.png" in line


def test_a_recipe_resume_refuses_other_weights_behind_the_same_init(tmp_path):
    """The recipes' start_run keeps a fingerprint of --init's weights; other weights at that path stop a rerun
    of a run that has started, the same weights pass, and a run that wrote nothing yet is taken over."""
    from deliberate.train.rest_em import RestEMConfig
    from deliberate.train.selfimprove import INIT_FINGERPRINT, start_run

    init = make_tiny(tmp_path / "init", seed=0)
    cfg = RestEMConfig(init=str(init), out=str(tmp_path / "run"))
    out, _ = start_run(cfg)
    assert json.loads((out / INIT_FINGERPRINT).read_text())["model_fingerprint"] == fingerprint.weights_fingerprint(init)
    make_tiny(tmp_path / "init", seed=1)  # only config + fingerprint so far: nothing to protect
    start_run(cfg)
    (out / "iterations").mkdir()  # the run has started
    start_run(cfg)  # the same weights
    make_tiny(tmp_path / "init", seed=2)
    with pytest.raises(DeliberateError, match="run of --init .* other weights"):
        start_run(cfg)
