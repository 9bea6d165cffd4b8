"""Plain data passed between layers: problems, completions, parsed samples, compute counters, records,
and the run data an eval or a sweep writes (``summary.json`` and a sweep's ``results.jsonl`` rows).

All are frozen dataclasses so nothing downstream mutates what a task or backend produced. The
``summary.json`` schema is defined here once (:class:`RunSummary`, :class:`ResultRow`); writers build
these types and write ``to_dict()``, readers (the report, the comparison page) call ``from_dict``,
which names the file and field of anything malformed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deliberate.errors import DeliberateError


@dataclass(frozen=True)
class Problem:
    """One problem: ``question`` is the statement, ``answer`` the gold final answer (as a string).

    ``metadata`` is task specific (gold rationale steps, difficulty, source file/line, tests ...).
    """

    id: str
    question: str
    answer: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one sampled continuation.

    ``logprobs`` are the per-token log-probabilities of the generated tokens under the model
    (temperature 1, before top-p), when the backend provides them.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length"
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Sample:
    """A completion parsed by a task: its reasoning steps and extracted final answer."""

    text: str
    steps: tuple[str, ...]
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Compute:
    """Compute counters; add them with ``+``."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    model_calls: int = 0
    wall_s: float = 0.0

    def __add__(self, other: Compute) -> Compute:
        return Compute(
            self.generated_tokens + other.generated_tokens,
            self.prompt_tokens + other.prompt_tokens,
            self.model_calls + other.model_calls,
            self.wall_s + other.wall_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SampleRecord:
    """One row of an eval/sweep records file (JSONL): one sample of one problem under one strategy.

    ``key`` identifies the row for resume: a rerun skips every key already on disk.
    """

    problem_id: str
    strategy: str  # e.g. "greedy", "sample"
    index: int  # sample index within (problem, strategy)
    seed: int
    text: str
    answer: str | None
    gold: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    wall_s: float = 0.0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.problem_id, self.strategy, self.index)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> SampleRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in row and f.default is dataclasses.MISSING]
        if missing:
            raise KeyError(f"record is missing field(s): {', '.join(missing)}")
        return cls(**{k: v for k, v in row.items() if k in names})


# --- run data: summary.json and sweep result rows ------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_number(x) for x in v)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


#: what a value of each annotated type must be (annotations are strings under ``from __future__``)
_CHECKS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "int": (_is_int, "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "float": (_is_number, "a number"),
}

#: summary.json "results" keys of an eval run (``deliberate eval``), in the order it writes them
EVAL_ROW_KEYS = ("strategy", "n", "accuracy", "ci", "generated_tokens", "wall_s", "n_problems")

#: (field, check, what it must be) of every key a result row may carry, in the order a sweep writes them
_ROW_FIELDS: tuple[tuple[str, Any, str], ...] = (
    ("strategy", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    ("n", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("accuracy", _is_number, "a number"),
    ("ci", lambda v: _is_numbers(v) and len(v) == 2, "a [low, high] pair of numbers"),
    ("n_problems", _is_int, "an integer"),
    ("generated_tokens", _is_number, "a number"),
    ("prompt_tokens", _is_number, "a number"),
    ("verifier_sequences", _is_number, "a number"),
    ("wall_s", _is_number, "a number"),
    ("pass_at_n", _is_number, "a number"),
    ("fraction_of_ceiling", _is_number, "a number"),
    ("accuracy_std", _is_number, "a number"),
    ("accuracy_per_seed", _is_numbers, "a list of numbers"),
    ("own_ceiling", _is_number, "a number"),
)
_ROW_REQUIRED = ("strategy", "n", "accuracy", "ci")
#: summary.json "results" keys of a sweep (``deliberate sweep``), in the order it writes them
SWEEP_ROW_KEYS = tuple(name for name, _, _ in _ROW_FIELDS)


@dataclass(frozen=True)
class ResultRow:
    """One row of summary.json "results": a strategy at budget ``n``, its accuracy over problems, its compute.

    ``accuracy`` is the mean over problems, ``ci`` its 95% bootstrap interval over problems. Compute
    (``generated_tokens``, ``prompt_tokens``, ``verifier_sequences``, ``wall_s``) is summed over the
    ``n_problems`` problems (a sweep: per seed). Sweep rows add ``pass_at_n`` (the pool's pass@N
    ceiling), ``fraction_of_ceiling``, ``accuracy_std`` and ``accuracy_per_seed`` (over seeds) and
    ``own_ceiling`` (how often any candidate the strategy saw was right). ``None``: not recorded.

    ``other`` keeps keys no writer here emits (a plug-in's, a newer version's), so a file read and
    written back loses nothing. ``keys`` is the key order of the written row: an eval and a sweep
    order them differently (:data:`EVAL_ROW_KEYS`, :data:`SWEEP_ROW_KEYS`) and a row read from a file
    keeps its own; a key listed with a ``None`` value is written as ``null``. Empty: every field that
    is set, in field order, then ``other``.
    """

    strategy: str
    n: int
    accuracy: float
    ci: tuple[float, float]
    n_problems: int | None = None
    generated_tokens: float | None = None
    prompt_tokens: float | None = None
    verifier_sequences: float | None = None
    wall_s: float | None = None
    pass_at_n: float | None = None
    fraction_of_ceiling: float | None = None
    accuracy_std: float | None = None
    accuracy_per_seed: tuple[float, ...] | None = None
    own_ceiling: float | None = None
    other: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ci", tuple(self.ci))
        if self.accuracy_per_seed is not None:
            object.__setattr__(self, "accuracy_per_seed", tuple(self.accuracy_per_seed))
        clash = sorted(set(self.other) & set(SWEEP_ROW_KEYS))
        if clash:
            raise DeliberateError(f"result row: {', '.join(clash)} are fields, not other keys")
        if self.keys:
            object.__setattr__(self, "keys", tuple(self.keys))
            unwritten = [k for k in SWEEP_ROW_KEYS if k not in self.keys
                         and (k in _ROW_REQUIRED or getattr(self, k) is not None)]
            unwritten += [k for k in self.other if k not in self.keys]
            unknown = [k for k in self.keys if k not in SWEEP_ROW_KEYS and k not in self.other]
            if unwritten or unknown or len(set(self.keys)) != len(self.keys):
                raise DeliberateError(f"result row {self.strategy!r}: keys {list(self.keys)} must name each set "
                                      f"field and other key once (missing {unwritten}, unknown {unknown})")

    def to_dict(self) -> dict[str, Any]:
        """The row as summary.json holds it (tuples as lists)."""
        names = self.keys or (tuple(k for k in SWEEP_ROW_KEYS if getattr(self, k) is not None) + tuple(self.other))
        out: dict[str, Any] = {}
        for k in names:
            v = self.other[k] if k in self.other else getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, row: Any, where: str = "result row") -> ResultRow:
        """Parse one row; anything malformed raises one :class:`DeliberateError` naming ``where`` and the field."""
        if not isinstance(row, Mapping):
            raise DeliberateError(f"{where} must be an object, got {_type_name(row)}")
        for name in _ROW_REQUIRED:
            if name not in row:
                raise DeliberateError(f"{where} has no {name!r}")
        values = {}
        for name, ok, what in _ROW_FIELDS:
            v = row.get(name)
            if name in row and not (v is None and name not in _ROW_REQUIRED) and not ok(v):
                raise DeliberateError(f"{where}: {name!r} must be {what} (got {v!r})")
            values[name] = v
        other = {k: v for k, v in row.items() if k not in values}
        return cls(**values, other=other, keys=tuple(str(k) for k in row))


@dataclass(frozen=True)
class RunSummary:
    """summary.json of an eval or a sweep run: what ran, one :class:`ResultRow` per (strategy, n), compute.

    ``seed`` is an eval's seed or a sweep's list of seeds; ``compute`` what the invocation spent
    (counters: tokens, calls, wall time; a sweep adds engine/verifier/executor sections); ``config``
    the run's configuration. A sweep adds ``n_problems``, ``extra`` (named tables: compute-matched
    accuracy, token buckets, the taste curve) and ``kind`` = ``"sweep"``. ``None``: not recorded
    (not written). ``other`` keeps top-level keys this schema does not define (e.g. a ``date``).
    ``to_dict`` writes the set fields in field order, then ``other``.
    """

    task: str
    model: str
    seed: int | tuple[int, ...] | None = None
    n_problems: int | None = None
    results: tuple[ResultRow, ...] = ()
    extra: Mapping[str, Any] | None = None
    compute: Mapping[str, Any] | None = None
    config: Mapping[str, Any] | None = None
    kind: str | None = None
    other: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", tuple(self.results))
        if isinstance(self.seed, list):
            object.__setattr__(self, "seed", tuple(self.seed))
        clash = sorted(set(self.other) & set(_SUMMARY_FIELDS))
        if clash:
            raise DeliberateError(f"run summary: {', '.join(clash)} are fields, not other keys")

    def to_dict(self) -> dict[str, Any]:
        """The summary as summary.json holds it."""
        out: dict[str, Any] = {}
        for name in _SUMMARY_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if name == "results":
                v = [r.to_dict() for r in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[name] = v
        out.update(self.other)
        return out

    @classmethod
    def from_dict(cls, summary: Any, where: str = "summary.json") -> RunSummary:
        """Parse a summary (``where`` names its file in errors); one :class:`DeliberateError` says what is wrong."""
        if not isinstance(summary, Mapping):
            raise DeliberateError(f"{where}: must be a JSON object, got {_type_name(summary)}")
        if "recipe" in summary:
            raise DeliberateError(f"{where}: a training run's summary (recipe {summary['recipe']!r}), "
                                  "not an eval or sweep summary")
        results = summary.get("results")
        if not isinstance(results, list):
            raise DeliberateError(f"{where}: 'results' must be a list of result rows "
                                  f"(got {type(results).__name__ if results is not None else 'nothing'})")
        rows = tuple(ResultRow.from_dict(r, f"{where}: results[{i}]") for i, r in enumerate(results))
        for name in ("task", "model"):
            if not isinstance(summary.get(name), str):
                raise DeliberateError(f"{where}: {name!r} must be a string (got {summary.get(name)!r})")
        seed = summary.get("seed")
        if seed is not None and not _is_int(seed) and not (isinstance(seed, list) and all(map(_is_int, seed))):
            raise DeliberateError(f"{where}: 'seed' must be an integer or a list of integers (got {seed!r})")
        if summary.get("n_problems") is not None and not _is_int(summary["n_problems"]):
            raise DeliberateError(f"{where}: 'n_problems' must be an integer (got {summary['n_problems']!r})")
        for name in ("extra", "compute", "config"):
            if summary.get(name) is not None and not isinstance(summary[name], Mapping):
                raise DeliberateError(f"{where}: {name!r} must be an object, got {_type_name(summary[name])}")
        if summary.get("kind") is not None and not isinstance(summary["kind"], str):
            raise DeliberateError(f"{where}: 'kind' must be a string (got {summary['kind']!r})")
        values = {name: summary.get(name) for name in _SUMMARY_FIELDS}
        values["results"] = rows
        return cls(**values, other={k: v for k, v in summary.items() if k not in values})


_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(RunSummary) if f.name != "other")


@dataclass(frozen=True)
class SweepRow:
    """One row of a sweep's ``results.jsonl``: one problem under one strategy at budget ``n`` and ``seed``.

    Pool strategies (majority, best-of-N, weighted) select among the first ``n`` pooled samples;
    search strategies run. ``correct``: the selected ``answer`` is right; ``any_correct``: some
    candidate was (the strategy's own ceiling). Compute is this problem's: its generated and prompt
    tokens, backend calls, verifier sequences scored and its share of wall time.
    """

    problem_id: str
    strategy: str
    n: int
    seed: int
    answer: str | None
    gold: str
    correct: bool
    any_correct: bool
    candidates: int
    generated_tokens: int
    prompt_tokens: int
    model_calls: int
    verifier_sequences: int
    wall_s: float
    text: str

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.problem_id, self.strategy, self.n, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: Any, where: str = "sweep row") -> SweepRow:
        """Parse one results.jsonl row; anything malformed raises one :class:`DeliberateError` naming ``where``."""
        if not isinstance(row, Mapping):
            raise DeliberateError(f"{where}: a sweep row must be an object, got {_type_name(row)}")
        for f in dataclasses.fields(cls):
            if f.name not in row:
                raise DeliberateError(f"{where}: sweep row has no {f.name!r}")
            ok, what = _CHECKS[f.type]
            if not ok(row[f.name]):
                raise DeliberateError(f"{where}: {f.name!r} must be {what} (got {row[f.name]!r})")
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

