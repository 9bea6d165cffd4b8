"""The code verifier: run model-written Python against a task's tests, soundly.

Two runners return the same :class:`Verdict`:

* :func:`run_tests` / :func:`run_io` (:mod:`.runner`): the model's code runs in its own process
  under bubblewrap (:mod:`.isolation`, :mod:`.candidate`); a separate trusted process
  (:mod:`.checker`) runs the tests against a proxy that exchanges plain data only
  (:mod:`.protocol`). Raises :class:`IsolationUnavailable` where bubblewrap cannot run.
* :func:`run_tests_unsafe_local` (:mod:`.unsafe_local`): the old single-process runner guarded by
  an audit hook, for machines without bubblewrap; weaker, see docs/SANDBOX.md.
"""

from deliberate.sandbox.isolation import available as isolation_available
from deliberate.sandbox.runner import IsolationUnavailable, run_io, run_tests
from deliberate.sandbox.unsafe_local import run_tests as run_tests_unsafe_local
from deliberate.sandbox.verdict import REASONS, Limits, Verdict

__all__ = ["REASONS", "IsolationUnavailable", "Limits", "Verdict", "isolation_available", "run_io", "run_tests",
           "run_tests_unsafe_local"]
