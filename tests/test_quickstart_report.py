"""The quickstart's HTML report in headless Chromium: the results and quickstart tables, both plots decoded, and a
search tree in the viewer (the driver is tests/test_report.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import Browser, find_chromium

from deliberate.cli import main_cli


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (install Debian's `chromium`, e.g. via scripts/setup.sh, "
                    "or set DELIBERATE_CHROMIUM)")
    b = Browser(binary)
    yield b
    b.close()


def test_quickstart_report_in_chromium(tmp_path: Path, browser: Browser, capsys) -> None:
    assert main_cli(["quickstart", "--n-problems", "2", "--sampling-seeds", "1", "--workers", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    browser.open((tmp_path / "report.html").resolve().as_uri())
    assert browser.js_errors() == []
    # the results table (one row per method and N) and the quickstart table (one row per method)
    assert browser.js("document.querySelectorAll('#results table tbody tr').length") >= 40
    extra = browser.js("document.querySelector('#extra').textContent")
    for method in ("pass@N (ceiling)", "PRM best-of-N", "ORM weighted", "PRM MCTS", "minus maj@16"):
        assert method in extra
    # both plots, decoded by the browser
    names = browser.js("[...document.querySelectorAll('#plots img')].map(i => i.alt + ':' + i.naturalWidth)")
    widths = dict(n.rsplit(":", 1) for n in names)
    assert int(widths["accuracy_vs_n.png"]) > 0 and int(widths["accuracy_vs_tokens.png"]) > 0
    # a search tree (beam or MCTS) in the viewer, its root's children listed
    assert browser.js("(() => { const e = document.querySelector('#tree-ui'); return !!e && e.offsetParent !== null; })()")
    assert browser.js("document.querySelectorAll('#tree-select option').length") >= 1
    assert browser.js("document.querySelectorAll('li.node').length") >= 2
    assert browser.js_errors() == []
