"""The API key comes from the environment and is never written anywhere: run `deliberate eval` and
`deliberate sweep` through the openai backend (against `deliberate serve` behind a fault proxy that
forces retries, and a server that echoes the key in an error), with every logger at DEBUG, then grep
every file of the run directories and all captured logs / stdout / stderr for the key."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from fakes import FakeBackend
from faultproxy import FaultProxy

from deliberate.cli import main_cli
from deliberate.models.server import serve_in_thread

KEY = "sk-SECRET-deliberate-test-7f3a9c21e5b4d8"


def answer_lines(prompt: str, rng: random.Random) -> str:
    return f"{rng.randint(1, 9)}+{rng.randint(1, 9)}={rng.randint(2, 18)}\nAnswer: {rng.randint(0, 30)}"


def _files_with_key(root: Path) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if KEY.encode() in data or KEY.encode("utf-16-le") in data:
                hits.append(str(p))
    return hits


@pytest.mark.parametrize("var", ["OPENAI_API_KEY", "DELIBERATE_API_KEY"])
def test_api_key_never_reaches_files_logs_or_output(tmp_path, monkeypatch, caplog, capfd, var):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("DELIBERATE_API_KEY", raising=False)
    monkeypatch.setenv(var, KEY)
    monkeypatch.chdir(tmp_path)
    srv, url = serve_in_thread(FakeBackend(answer_lines), model_name="fake", api_key=KEY)
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        caplog.set_level(logging.DEBUG)
        plan = ["500", "429", "echo_auth", "drop", "malformed"]
        with FaultProxy(url, plan=plan, rate=0.2, kinds=["500", "echo_auth", "truncated"], seed=1,
                        max_per_request=2, methods=("POST", "GET")) as proxy:
            common = ["--task", "arith", "--n-problems", "3", "--backend", "openai", "--base-url", proxy.base_url,
                      "--model", "fake", "--backend-arg", "retry_base_delay=0.001", "--backend-arg", "max_retries=6"]
            assert main_cli(["eval", *common, "--n", "2", "--out", str(tmp_path / "eval")]) == 0
            assert main_cli(["sweep", *common, "--strategies", "majority,best_of_n", "--budgets", "2",
                             "--seeds", "0", "--verifier", "oracle", "--out", str(tmp_path / "sweep")]) == 0
            # a run that fails for good: the final error is printed, the key is not
            assert main_cli(["eval", *common[:-4], "--backend-arg", "retry_base_delay=0.001",
                             "--backend-arg", "max_retries=0", "--n", "1", "--no-greedy",
                             "--base-url", url.replace("/v1", "/nope"), "--out", str(tmp_path / "failed")]) != 0
        assert proxy.auth_headers and all(h == f"Bearer {KEY}" for h in proxy.auth_headers)  # it was used
        assert proxy.counts["echo_auth"] >= 1 and proxy.counts["500"] >= 1  # errors and retries happened
    finally:
        logging.getLogger().setLevel(root_level)
        srv.shutdown()
        srv.server_close()
    out, err = capfd.readouterr()
    assert (tmp_path / "eval" / "records.jsonl").is_file() and (tmp_path / "sweep" / "config.json").is_file()
    assert "retry" in caplog.text  # retries were logged ...
    assert KEY not in caplog.text  # ... without the key
    assert KEY not in out and KEY not in err
    assert _files_with_key(tmp_path) == []
