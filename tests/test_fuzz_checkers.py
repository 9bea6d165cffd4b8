"""Property-based fuzzing of every answer checker (hypothesis): no exception escapes, no input hangs.

CI runs a few hundred examples per checker; ``scripts/fuzz_checkers.py --examples 10000`` runs the
same checkers on >= 10k generated inputs each (see docs/RESULTS.md, "Checker fuzzing"). Inputs here
are hypothesis text from a LaTeX-heavy alphabet, answer templates around it, and the script's own
grammar generator driven by a hypothesis-chosen seed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from script_loader import SCRIPTS, load_script

fuzz = load_script("fuzz_checkers")

TEMPLATES = ["{}", "\\boxed{{{}}}", "$\\boxed{{{}}}$", "Answer: {}", "#### {}", "The answer is {}.", "\\boxed{{{}",
             "{} \\boxed{{{}}}", "Answer: {}\nAnswer: {}", "\\boxed{{{}}} or \\boxed{{{}}}"]

texts = st.one_of(
    st.text(alphabet=st.sampled_from(fuzz.ALPHABET), max_size=300),
    st.text(max_size=100),
    st.builds(lambda t, a: t.format(a, a), st.sampled_from(TEMPLATES),
              st.text(alphabet=st.sampled_from(fuzz.ALPHABET), max_size=60)),
    st.integers(0, 2**32 - 1).map(lambda s: fuzz.make_input(random.Random(s))),
)

EXAMPLES = {"numeric": 400, "boxed": 400, "countdown": 400, "arith": 400, "addition": 400, "math_verify": 150}
LIMIT_S = {"math_verify": 2.0 + 6.0}  # its own 2 s timeout, plus a worker restart on a loaded machine
DEFAULT_LIMIT_S = 3.0


@pytest.mark.parametrize("name", list(fuzz.CHECKERS))
def test_checker_never_raises_or_hangs(name):
    fn = fuzz.CHECKERS[name]
    limit = LIMIT_S.get(name, DEFAULT_LIMIT_S)
    slowest = [0.0, ""]

    @settings(max_examples=EXAMPLES[name], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(text=texts, seed=st.integers(0, 2**16))
    def run(text, seed):
        t0 = time.monotonic()
        fn(text, random.Random(seed))  # any exception fails the test with the (shrunk) input
        dt = time.monotonic() - t0
        if dt > slowest[0]:
            slowest[:] = [dt, text[:80]]
        assert dt < limit, f"{name} took {dt:.2f}s on {text[:200]!r}"

    run()
    print(f"{name}: slowest {slowest[0]:.3f}s on {slowest[1]!r}")


def test_the_generator_reaches_the_traps():
    """The script's generator produces the inputs that used to hang or raise (so 10k runs test them)."""
    inputs = [fuzz.input_for("boxed", 0, i)[0] for i in range(1500)]
    assert any(t.count("{") > 1000 for t in inputs)
    assert any("9^{9^{9^9}}" in t for t in inputs)
    assert any(len(max(t.split(), key=len, default="")) > 4300 and t.lstrip().startswith("Answer:") for t in inputs)


def test_script_runs_and_reports():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "fuzz_checkers.py"), "--examples", "30", "--checkers", "boxed,countdown"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "boxed" in out and "countdown" in out and "TOTAL" in out
