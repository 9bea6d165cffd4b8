"""The same `deliberate sweep` command with the in-process tiny backend and with the `openai` backend
against `deliberate serve` over the same checkpoint gives the same search results (the server keeps the
seeding contract, so every sample, and hence every search decision, is the same)."""

from __future__ import annotations

import json

from deliberate.cli import main_cli
from deliberate.models.server import serve_in_thread
from deliberate.models.tiny import TinyBackend

ARGS = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--strategies", "majority,best_of_n,beam,mcts",
        "--budgets", "2,4", "--seeds", "0", "--n-problems", "4", "--verifier", "oracle",
        "--setting", "expansions=2", "--setting", "max_steps=4", "--taste", "0,1"]


def _rows(out):
    keep = ("problem_id", "strategy", "n", "seed", "answer", "correct", "text", "generated_tokens")
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return sorted(tuple(r[k] for k in keep) for r in rows)


def test_sweep_runs_unchanged_through_deliberate_serve(tiny_ckpt, tmp_path, capsys):
    local = tmp_path / "local"
    assert main_cli(ARGS + ["--backend", "tiny", "--model", str(tiny_ckpt), "--out", str(local)]) == 0
    server, url = serve_in_thread(TinyBackend(tiny_ckpt), model_name="tiny")
    try:
        remote = tmp_path / "remote"
        assert main_cli(ARGS + ["--backend", "openai", "--base-url", url, "--model", "tiny",
                                "--out", str(remote)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _rows(local) == _rows(remote)
    out = capsys.readouterr().out
    assert "beam" in out and "pass@n" in out


def test_sweep_bad_input_is_one_clear_error(tiny_ckpt, tmp_path, capsys):
    base = ["sweep", "--task", "arith", "--backend", "tiny", "--model", str(tiny_ckpt), "--out", str(tmp_path / "x")]
    for extra, msg in ((["--strategies", "nope"], "unknown strategy 'nope'"),
                       (["--strategies", "beam"], "need --verifier"),
                       (["--budgets", "0"], "budgets"),
                       (["--setting", "bogus=1"], "unknown --setting 'bogus'"),
                       (["--setting", "aggregation=max"], "aggregation"),
                       (["--verifier", "what:ever", "--strategies", "majority"], "unknown verifier 'what'")):
        assert main_cli(base + extra) == 2
        assert msg in capsys.readouterr().err
