"""``deliberate report``: the HTML is self-contained and escaped, bad run dirs fail clearly, and the page
really renders and its tree viewer really expands in headless Chromium.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (fds 3 and 4, NUL-separated
JSON) with the small stdlib client below: no Python driver package and no browser download, just
the system browser (``scripts/setup.sh`` installs Debian's ``chromium``). The browser tests skip only
when no Chromium binary is found.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from deliberate.cli import main_cli

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> & co'


# --- a run directory like a sweep's ------------------------------------------------------------------

def _png(path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=60)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([1, 2, 4, 8], [0.3, 0.45, 0.6, 0.7], marker="o")
    fig.savefig(path, format="png")


def _tree(i: int, depth: int = 3, branching: int = 2) -> dict[str, Any]:
    """A full tree of the given depth; the chosen path always takes the first child; node text of tree 0
    carries markup that must show as text."""
    nodes = [{"id": 0, "parent": None, "text": f"Q{i}: what is 3 < 4 & 2 > 1?", "score": None, "visits": 10,
              "value": 0.5, "chosen": True, "terminal": False, "correct": None}]
    frontier = [0]
    for d in range(1, depth + 1):
        nxt = []
        for parent in frontier:
            for b in range(branching):
                nid = len(nodes)
                chosen = nodes[parent]["chosen"] and b == 0
                text = f"step d{d} b{b} of node {parent}"
                if i == 0 and d == 2 and b == 1:
                    text = XSS
                nodes.append({"id": nid, "parent": parent, "text": text, "score": round(0.1 * nid, 3),
                              "visits": 3, "value": 0.25, "chosen": chosen, "terminal": d == depth,
                              "correct": (b == 0) if d == depth else None})
                nxt.append(nid)
        frontier = nxt
    return {"problem_id": f"arith-{i}", "strategy": "beam", "n": 4, "seed": 0, "question": f"Q{i} <b>bold?</b>",
            "gold": "7 & 8", "nodes": nodes}


def make_run_dir(tmp_path: Path) -> Path:
    """A sweep-like run dir: summary with sweep-only keys and an extra table, config.json, a PNG, 3 trees."""
    d = tmp_path / "sweep"
    d.mkdir()
    rows = [{"strategy": "greedy", "n": 1, "accuracy": 0.4, "ci": [0.3, 0.5], "generated_tokens": 1234,
             "wall_s": 1.5, "n_problems": 50},
            {"strategy": "beam", "n": 4, "accuracy": 0.62, "ci": [0.5, 0.72], "generated_tokens": 50321.5,
             "wall_s": 12.25, "seed": 0, "pass_at_n": 0.8, "fraction_of_ceiling": 0.775, "prompt_tokens": 999,
             "verifier_calls": 400, "verifier_tokens": 12000, "accuracy_std": 0.02, "n_problems": 50}]
    summary = {"task": "arith<&>", "model": "tiny", "seed": 0, "results": rows,
               "extra": {"per_difficulty": [{"ops": 1, "accuracy": 0.9}, {"ops": 2, "accuracy": 0.5}]},
               "compute": {"train_flops": 1.5e12, "device": "cpu"}, "config": {"task": "arith"}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.json").write_text(json.dumps({"task": "arith", "task_options": {"max_ops": 3}, "n": 4}))
    _png(d / "accuracy_vs_n.png")
    with (d / "trees.jsonl").open("w") as f:
        for i in range(3):
            f.write(json.dumps(_tree(i)) + "\n")
    (d / "records.jsonl").write_text('{"a": 1}\n' * 7)
    return d


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path)


def _report(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main_cli(["report", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _embedded(html_text: str, elem_id: str) -> Any:
    m = re.search(rf'<script type="application/json" id="{elem_id}">(.*?)</script>', html_text, re.DOTALL)
    assert m, elem_id
    return json.loads(m.group(1))


# --- static checks ---------------------------------------------------------------------------------

def test_report_is_self_contained_and_escaped(run_dir: Path, capsys) -> None:
    code, out, err = _report([str(run_dir)], capsys)
    assert code == 0, err
    path = run_dir / "report.html"
    assert str(path) in out
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)  # nothing fetched from outside
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)
    assert text.count('src="data:image/png;base64,') == 1 and "accuracy_vs_n.png" in text
    assert "arith&lt;&amp;&gt;" in text and "arith<&>" not in text  # header text escaped
    assert "<script>window" not in text and "<img src=x" not in text  # the markup only appears \u-escaped
    trees = _embedded(text, "tree-data")
    assert [t["problem_id"] for t in trees] == ["arith-0", "arith-1", "arith-2"]
    assert any(n["text"] == XSS for n in trees[0]["nodes"])  # data round-trips exactly
    assert trees[0]["outcome"] is True
    run = _embedded(text, "run-data")
    assert run["config"]["task_options"] == {"max_ops": 3}  # config.json wins over summary["config"]
    for header in ("pass@n", "of ceiling", "verifier calls", "gen. tokens", "wall"):
        assert header in text
    assert "50,322" in text and "12.2 s" in text and "[0.500, 0.720]" in text
    assert "per_difficulty" in text and "train_flops" in text and "task_options.max_ops" in text
    assert "7 rows (not embedded)" in text


def test_eval_dir_without_trees_or_plots(tmp_path: Path, capsys) -> None:
    d = tmp_path / "eval"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"task": "arith", "model": "m", "seed": 1, "results": [
        {"strategy": "pass@k", "n": 2, "accuracy": float("nan"), "ci": [0.1, 0.2], "generated_tokens": 5,
         "wall_s": 0.01}], "config": {"n": 2}}))
    out = tmp_path / "elsewhere" / "r.html"
    code, _, err = _report([str(d), "--out", str(out)], capsys)
    assert code == 0, err
    text = out.read_text()
    assert "No search trees in this run" in text and "No PNG plots" in text
    assert _embedded(text, "tree-data") == []
    assert _embedded(text, "run-data")["summary"]["results"][0]["accuracy"] is None  # NaN made JSON-safe
    assert "summary.json (config)" in text


def test_tree_cap_is_announced(run_dir: Path, capsys) -> None:
    code, _, err = _report([str(run_dir), "--max-trees", "2"], capsys)
    assert code == 0, err
    text = (run_dir / "report.html").read_text()
    assert len(_embedded(text, "tree-data")) == 2
    assert "3 trees in trees.jsonl; showing the first 2" in text


def test_torn_last_tree_line_is_skipped(run_dir: Path, capsys) -> None:
    with (run_dir / "trees.jsonl").open("a") as f:
        f.write('{"problem_id": "x", "nod')
    code, _, err = _report([str(run_dir)], capsys)
    assert code == 0, err
    text = (run_dir / "report.html").read_text()
    assert len(_embedded(text, "tree-data")) == 3 and "partial last line" in text


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("file", "is not a directory"),
    ("no_summary", "summary.json not found"),
    ("bad_json", "summary.json: invalid JSON at line 1"),
    ("bad_results", "summary.json: 'results' must be a list"),
    ("bad_row", "summary.json: results[0] has no 'strategy'"),
    ("bad_config", "config.json: invalid JSON"),
    ("bad_tree_line", "trees.jsonl:2: malformed tree line"),
    ("bad_tree_parent", "trees.jsonl:1: node 1 has parent 99"),
    ("bad_iterations", "summary.json: 'iterations' must be a list of rows"),
    ("bad_iteration_eval", "summary.json: iterations[1].eval must be an object"),
    ("suspects", "a `deliberate suspects` run; it writes its own page"),
])
def test_bad_run_dir_is_one_clear_error(tmp_path: Path, capsys, case: str, needle: str) -> None:
    d = tmp_path / "run"
    good = json.dumps({"task": "t", "model": "m", "results": []})
    if case == "file":
        d.write_text("x")
    elif case != "missing":
        d.mkdir()
        summary = {"no_summary": None, "bad_json": '{"task": ', "bad_results": '{"results": {}}',
                   "bad_row": '{"results": [{"n": 1}]}', "bad_iterations": '{"recipe": "rest-em", "iterations": {}}',
                   "bad_iteration_eval": '{"recipe": "grpo", "iterations": [{"eval": {}}, {"eval": [0.5]}]}',
                   "suspects": '{"suspects": {}, "budget_flops": 1}'
                   }.get(case, good)
        if summary is not None:
            (d / "summary.json").write_text(summary)
        if case == "bad_config":
            (d / "config.json").write_text("{oops")
        if case == "bad_tree_line":
            (d / "trees.jsonl").write_text(json.dumps(_tree(0)) + "\nnot json\n")
        if case == "bad_tree_parent":
            (d / "trees.jsonl").write_text(json.dumps({"nodes": [{"id": 0, "parent": None},
                                                                 {"id": 1, "parent": 99}]}) + "\n")
    code, _, err = _report([str(d)], capsys)
    assert code == 2
    assert needle in err and err.startswith("deliberate: error:") and err.count("\n") == 1
    assert not (d / "report.html").exists() if d.is_dir() else True


# --- headless Chromium over the DevTools pipe -----------------------------------------------------

def find_chromium() -> str | None:
    """The system Chromium/Chrome binary, or $DELIBERATE_CHROMIUM."""
    env = os.environ.get("DELIBERATE_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """A headless Chromium with one page, spoken to over the DevTools protocol on a pipe pair.

    Commands are synchronous: :meth:`call` writes one message and reads until its reply, keeping the
    events it reads on the way (for JS exceptions and load events).
    """

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._id = 0
        self._buf = b""
        self._profile = tempfile.mkdtemp(prefix="deliberate-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # move the child's ends above 10 so the dup2 onto 3 and 4 in the child cannot clobber one another
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:  # in the child: the protocol pipe is fd 3 (in) and fd 4 (out)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                "--allow-file-access-from-files", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=wire)
        os.close(hi_r)
        os.close(hi_w)
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Runtime.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("no answer from chromium over the DevTools pipe")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit status {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._read_message(deadline))

    def js_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the element, as a user would."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def screenshot(self, full_page: bool = False) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png",
                                          captureBeyondViewport=full_page)["data"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    os.write(self._to_child, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                    self.proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (install Debian's `chromium`, e.g. via scripts/setup.sh, "
                    "or set DELIBERATE_CHROMIUM)")
    b = Browser(binary)
    yield b
    b.close()


def _visible(selector: str) -> str:
    return (f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            "if (!e) return false; const r = e.getBoundingClientRect();"
            "return e.offsetParent !== null && r.width > 0 && r.height > 0; })()")


def test_report_renders_and_tree_expands_in_chromium(run_dir: Path, browser: Browser, capsys) -> None:
    from matplotlib import image as mpimg

    assert _report([str(run_dir)], capsys)[0] == 0
    browser.open((run_dir / "report.html").resolve().as_uri())
    assert browser.js_errors() == []
    assert browser.js("document.title").startswith("arith<&> — tiny")

    pixels = mpimg.imread(io.BytesIO(browser.screenshot()), format="png")[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    non_white = float((pixels.min(axis=-1) < 0.9).mean())
    assert pixels.std() > 0.05 and 0.05 < non_white < 0.95, (pixels.std(), non_white)
    assert browser.js("document.querySelector('#plots img').naturalWidth") > 0  # the embedded PNG decoded

    assert browser.js(_visible("#tree-ui")) and not browser.js(_visible("#tree-empty"))
    assert browser.js("document.querySelectorAll('#tree-select option').length") == 3
    # default: root open, depth-1 nodes visible but collapsed, so depth-2 nodes are not visible
    assert browser.js(_visible('li.node[data-node-id="1"]'))
    assert not browser.js(_visible('li.node[data-node-id="3"]'))
    assert not browser.js(_visible('li.node[data-node-id="4"]'))
    browser.click('li.node[data-node-id="1"] > .row > .toggle')
    assert browser.js(_visible('li.node[data-node-id="3"]')) and browser.js(_visible('li.node[data-node-id="4"]'))
    assert not browser.js(_visible('li.node[data-node-id="7"]'))  # grandchildren stay collapsed
    # the markup in node 4's text is shown as text, never run
    assert browser.js("document.querySelector('li.node[data-node-id=\"4\"] .step').textContent") == XSS
    assert browser.js("window.__xss === undefined")
    assert browser.js("document.querySelector('li.node[data-node-id=\"1\"]').classList.contains('chosen')")
    browser.click('li.node[data-node-id="1"] > .row > .toggle')  # and collapses again
    assert not browser.js(_visible('li.node[data-node-id="3"]'))
    browser.click("#expand-chosen")
    assert browser.js(_visible('li.node[data-node-id="7"]'))  # the chosen leaf (1 -> 3 -> 7)
    assert browser.js_errors() == []


def test_report_without_trees_in_chromium(tmp_path: Path, browser: Browser, capsys) -> None:
    d = tmp_path / "eval"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"task": "arith", "model": "m", "results": [
        {"strategy": "greedy", "n": 1, "accuracy": 0.5, "ci": [0.4, 0.6], "generated_tokens": 10, "wall_s": 1}]}))
    assert _report([str(d)], capsys)[0] == 0
    browser.open((d / "report.html").resolve().as_uri())
    assert browser.js_errors() == []
    assert browser.js(_visible("#tree-empty")) and not browser.js(_visible("#tree-ui"))


# --- several runs on one page ------------------------------------------------------------------------

def _training_run(root: Path, name: str, recipe: str, greedy: list[float], n_params: int = 1000) -> Path:
    """A training run written the way the recipes write theirs (IterationLog rows, cumulative summary)."""
    from deliberate.train.selfimprove import IterationLog

    d = root / name
    log = IterationLog(d, n_params)
    for it, acc in enumerate(greedy):
        ev = {"greedy": {"accuracy": acc, "ci": [acc - 0.05, acc + 0.05]},
              "maj@4": {"accuracy": acc + 0.01, "ci": [acc - 0.04, acc + 0.06]}}
        log.write(it, {"tokens_sampled": 100 * it, "tokens_trained": 1000 * it, "wall_s": 10.0 * it, "eval": ev,
                       **({"step": 50 * it} if recipe == "grpo" else {})})
    (d / "summary.json").write_text(json.dumps({"recipe": recipe, "config": {"init": "seed/model", "task": "arith"},
                                                "iterations": log.cumulative()}))
    return d


def test_several_training_runs_on_one_page(tmp_path: Path, capsys) -> None:
    a = _training_run(tmp_path / "x", "run", "rest-em", [0.3, 0.45, 0.5])
    b = _training_run(tmp_path / "y", "run", "grpo", [0.3, 0.32])  # same dir name: labels take the parent too
    out = tmp_path / "cmp.html"
    code, stdout, err = _report([str(a), str(b), "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    page = out.read_text()
    table = page.split("<h2>Side by side</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 2 and ">x/run<" in table and ">y/run<" in table
    assert "+20.0" in table and "+2.0" in table  # greedy change, end minus start, in points
    assert "1 (step 50)" in table  # a GRPO run's last evaluation is named by its step as well
    assert page.count('src="data:image/png;base64,') == 1 and "https://" not in page
    _, _, err = _report([str(a), str(make_run_dir(tmp_path)), "--out", str(out)], capsys)
    assert "cannot compare training runs with eval/sweep runs" in err


def test_several_eval_runs_on_one_page(tmp_path: Path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_run_dir(tmp_path / "a")
    b = make_run_dir(tmp_path / "b")
    code, _, err = _report([str(a), str(b), "--out", str(tmp_path / "c.html")], capsys)
    assert code == 0, err
    page = (tmp_path / "c.html").read_text()
    table = page.split("<h2>Side by side</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count(">a/sweep<") == 2 and table.count(">b/sweep<") == 2  # every row of each run
    assert "<b>0.620</b>" in table and "arith&lt;&amp;&gt;" in page  # the task name is escaped


@pytest.mark.parametrize("case, needle", [
    ("twice", "the same run directory is given twice"),
    ("no_iterations", "has no iterations to compare"),
    ("no_shared_metric", "share no held-out metric"),
])
def test_comparison_refusals(tmp_path: Path, capsys, case: str, needle: str) -> None:
    a = _training_run(tmp_path, "a", "rest-em", [0.3, 0.4])
    if case == "twice":
        b = a
    elif case == "no_iterations":
        b = tmp_path / "sos"
        b.mkdir()
        (b / "summary.json").write_text(json.dumps({"recipe": "sos", "results": {}}))
    else:
        b = tmp_path / "b"
        b.mkdir()
        (b / "summary.json").write_text(json.dumps({"recipe": "star", "iterations": [
            {"iteration": 0, "eval": {"3": {"accuracy": 0.1, "ci": [0, 0.2]}}}]}))
    code, _, err = _report([str(a), str(b), "--out", str(tmp_path / "c.html")], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_training_and_comparison_pages_in_chromium(tmp_path: Path, browser: Browser, capsys) -> None:
    a = _training_run(tmp_path, "a", "rest-em", [0.3, 0.45, 0.5])
    b = _training_run(tmp_path, "b", "grpo", [0.3, 0.35])
    _png(a / "curve.png")
    for argv, page in (([str(a)], a / "report.html"), ([str(a), str(b), "--out", str(tmp_path / "c.html")],
                                                       tmp_path / "c.html")):
        assert _report(argv, capsys)[0] == 0
        browser.open(page.resolve().as_uri())
        assert browser.js_errors() == []
        # every embedded plot decoded to a real image
        assert browser.js("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert browser.js("document.images.length") == 1
