"""Math-Shepherd step labels from Monte-Carlo rollouts, and the PRM800K label format.

    deliberate label mc --model runs/quickstart/sft/model --task arith --n-problems 1000 \\
        --samples 4 --rollouts 8 --out runs/labels

For each training problem the policy samples ``samples`` solutions. From every step prefix of a
solution, ``k = rollouts`` completions are sampled with the same policy; a step's **soft label** is
the fraction of them that reach the gold answer (an estimate of the prefix's value: "can this still
end well?"), its **hard label** whether any does. The last step needs no rollouts: its label is the
solution's own outcome. Why this way: it needs no human labels and no step checker, only the task's
final-answer verifier, so it works for any task (Wang et al. 2024, "Math-Shepherd").

Output, in ``OUT/``:

- ``labels.jsonl``: one row per sampled solution, written as soon as its labels exist::

      {"problem_id", "index", "question", "gold", "steps", "answer", "outcome",
       "soft", "hard", "rollouts_k", "generated_tokens"}

  ``generated_tokens`` is the sample's tokens plus the rollout tokens first spent for it (a prefix
  shared by several samples of one problem is rolled out once).
- ``rollouts.jsonl``: the rollout cache, one row per distinct (problem, prefix): how many of the
  ``k`` rollouts were correct. Rollouts are seeded per prompt (the seeding contract), so a cached
  result is exactly what recomputing would give.
- ``meta.json``: the config, the fingerprint of the model's weights, and the compute spent
  (generated/prompt tokens, model calls, wall), summed over resumed runs.

Resume: rerunning the same command skips every solution already in ``labels.jsonl`` (a torn last
line, from a killed run, is cut off) and every prefix in the cache; a different config in the same
``OUT`` is an error, and so are other weights under the same ``--model``. Only ``--n-problems`` may
change (problems are a deterministic list, so more problems extends the same list). A run holds a
lock on ``OUT`` from before its first write.

PRM800K (OpenAI, "Let's Verify Step by Step") rows, one per labelled solution::

    {"question": {"problem", "ground_truth_answer"},
     "label": {"steps": [{"completions": [{"text", "rating"}], "chosen_completion": 0}],
               "finish_reason": "solution" | "found_error" | ...}}

with ratings 1 (good), 0 (neutral), -1 (bad). :func:`read_prm800k` turns them into label rows
(rating -> label via ``neutral``), :func:`write_prm800k` exports ours (hard label -> 1 / -1); our
export also carries a ``deliberate`` field with the soft labels and ids, so a round trip is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.executor import LocalExecutor
from deliberate.models.sampling import SamplingParams
from deliberate.fingerprint import FINGERPRINT_KEY, check_fingerprint, model_fingerprint
from deliberate.records import (
    JsonlAppender,
    json_line,
    lock_out_dir,
    read_jsonl_rows,
    write_json_atomic,
)
from deliberate.tasks import get_task
from deliberate.types import Compute, Problem

log = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
CACHE_FILE = "rollouts.jsonl"
META_FILE = "meta.json"
LABEL_TYPES = ("soft", "hard")


# --------------------------------------------------------------------------------------------
# Label rows: validation and reading
# --------------------------------------------------------------------------------------------

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_label_row(row: dict, where: str) -> None:
    """Check the fields training needs: ``question``, ``steps`` and per-step ``soft``/``hard`` in [0, 1]."""
    for name in ("question", "steps", "soft", "hard", "outcome"):
        if name not in row:
            raise DeliberateError(f"{where}: label row is missing field {name!r}")
    steps = row["steps"]
    if not isinstance(row["question"], str):
        raise DeliberateError(f"{where}: 'question' must be a string")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DeliberateError(f"{where}: 'steps' must be a list of strings")
    for name in ("soft", "hard"):
        v = row[name]
        if not isinstance(v, list) or len(v) != len(steps):
            raise DeliberateError(f"{where}: {name!r} must be a list with one label per step "
                                  f"({len(steps)} steps)")
        if not all(_is_num(x) and 0 <= x <= 1 for x in v):
            raise DeliberateError(f"{where}: {name!r} labels must be numbers in [0, 1]")
    if not (isinstance(row["outcome"], bool) or (_is_num(row["outcome"]) and 0 <= row["outcome"] <= 1)):
        raise DeliberateError(f"{where}: 'outcome' must be true/false or a number in [0, 1]")


def labels_file(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/labels.jsonl``."""
    p = Path(path)
    return p / LABELS_FILE if p.is_dir() else p


def read_labels(path: str | os.PathLike) -> list[dict]:
    """Label rows of a labels JSONL (or a ``label mc`` output directory), validated.

    A missing file or one without rows is an error; a torn last line is ignored with a warning."""
    f = labels_file(path)
    if not f.exists():
        raise DeliberateError(f"labels file {str(f)!r} not found (make one with `deliberate label mc`)")
    rows, end = read_jsonl_rows(f, validate_label_row)
    if end < f.stat().st_size:
        log.warning("%s: ignoring a partial last line (a run was killed mid-write)", f)
    if not rows:
        raise DeliberateError(f"labels file {str(f)!r} has no rows")
    return rows


# --------------------------------------------------------------------------------------------
# Monte-Carlo labelling
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MCConfig:
    """What to label and how. ``out`` is where the three files go."""

    task: str = "arith"
    task_options: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"
    n_problems: int = 1000
    samples: int = 4  # sampled solutions per problem
    rollouts: int = 8  # k completions per step prefix
    temperature: float = 1.0
    max_tokens: int | None = None  # None -> the task's default
    seed: int = 0
    prompt_style: str = "plain"
    batch_problems: int = 32  # problems per sampling call
    rollout_batch: int = 64  # prefixes per rollout call (x rollouts rows)
    model: str | None = None  # recorded in meta.json
    out: str = "runs/labels"

    #: fields that must match to resume into an existing OUT
    IDENTITY = ("task", "task_options", "split", "samples", "rollouts", "temperature", "max_tokens", "seed",
                "prompt_style", "model")

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_problems", "samples", "rollouts", "batch_problems", "rollout_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not _is_num(self.temperature) or self.temperature <= 0:
            problems.append(f"temperature must be > 0 for Monte-Carlo rollouts (got {self.temperature!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            problems.append(f"max_tokens must be None or an integer >= 1 (got {self.max_tokens!r})")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        if problems:
            raise DeliberateError("invalid labelling config: " + "; ".join(problems))
        object.__setattr__(self, "task_options", dict(self.task_options))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def _prefix_prompt(task, problem: Problem, steps: Sequence[str], i: int, style: str) -> str:
    """The prompt that continues a solution after its first ``i`` steps."""
    return task.prompt(problem, style=style) + "".join(s + "\n" for s in steps[:i])


def _prefix_key(problem_id: str, steps: Sequence[str], i: int) -> str:
    h = hashlib.blake2b("\n".join(steps[:i]).encode(), digest_size=12).hexdigest()
    return f"{problem_id}\x00{i}\x00{h}"


def check_resume(cfg: MCConfig, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The ``meta.json`` of an earlier run in ``cfg.out`` (None if there is none); an error if that
    run used a different config, or weights whose fingerprint is not ``fingerprint`` (when given)."""
    meta_path = Path(cfg.out) / META_FILE
    if not meta_path.exists():
        return None
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeliberateError(f"{meta_path}: malformed JSON ({e})") from None
    if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
        raise DeliberateError(f"{meta_path}: not the meta.json of a `deliberate label mc` run (no 'config' object)")
    cfg_dict = cfg.to_dict()
    diff = [k for k in MCConfig.IDENTITY if old["config"].get(k) != cfg_dict.get(k)]
    if diff:
        raise DeliberateError(f"{cfg.out} holds labels made with a different config ({', '.join(diff)} differ); "
                              "use another --out")
    check_fingerprint(old, fingerprint, cfg.out, old.get("backend"))
    return old


@dataclass(frozen=True)
class LabelUnit:
    """One chunk of problems: sample its solutions, roll out every step prefix not cached yet."""

    problems: tuple[Problem, ...]
    done: frozenset[tuple[str, int]]  # (problem id, sample index) already labelled: no rollouts for them
    cached: frozenset[str]  # prefix keys already in the rollout cache
    sample_params: Any
    roll_params: Any
    prompt_style: str
    rollout_batch: int


def _label_unit(worker, u: LabelUnit):
    """Runs on a worker (or in this process): the solutions' completions, new cache rows, compute."""
    task, backend = worker.task, worker.backend
    t0 = time.perf_counter()
    comps = backend.generate([task.prompt(p, style=u.prompt_style) for p in u.problems], u.sample_params)
    spent = Compute(sum(x.completion_tokens for r in comps for x in r),
                    sum(x.prompt_tokens for r in comps for x in r), 1, time.perf_counter() - t0)
    # distinct prefixes not yet in the cache (the last step is labelled by the outcome)
    need: dict[str, tuple[Problem, tuple[str, ...], int]] = {}
    for p, row in zip(u.problems, comps):
        for j, x in enumerate(row):
            if (p.id, j) in u.done:
                continue
            steps = task.parse(x).steps
            for i in range(1, len(steps)):
                k = _prefix_key(p.id, steps, i)
                if k not in u.cached and k not in need:
                    need[k] = (p, steps, i)
    items = list(need.items())
    cache_rows = []
    for r in range(0, len(items), u.rollout_batch):
        part = items[r:r + u.rollout_batch]
        t0 = time.perf_counter()
        outs = backend.generate([_prefix_prompt(task, p, st, i, u.prompt_style) for _, (p, st, i) in part],
                                u.roll_params)
        spent = spent + Compute(sum(x.completion_tokens for o in outs for x in o),
                                sum(x.prompt_tokens for o in outs for x in o), 1, time.perf_counter() - t0)
        for (k, (p, st, i)), o in zip(part, outs):
            prefix = "".join(s + "\n" for s in st[:i])
            n_ok = sum(bool(task.is_correct(task.extract_answer(prefix + x.text), p)) for x in o)
            toks = sum(x.completion_tokens for x in o)
            cache_rows.append({"key": k, "problem_id": p.id, "step": i, "correct": n_ok, "k": len(o),
                               "generated_tokens": toks})
    return comps, cache_rows, spent


def label_mc(cfg: MCConfig, backend=None, task=None, progress: bool = True, executor=None) -> dict[str, Any]:
    """Run (or resume) Monte-Carlo labelling; returns the meta dict (config, compute, counts).

    The sampling and rollouts run on ``executor`` (``deliberate.executor``: Ray workers, one chunk of
    ``batch_problems`` problems per unit), by default in this process on ``backend``; only this
    process writes the labels and the cache."""
    task = task or get_task(cfg.task, **cfg.task_options)
    if executor is None:
        if backend is None:
            raise DeliberateError("label_mc needs a backend or an executor")
        executor = LocalExecutor(backend, task)
    with lock_out_dir(cfg.out) as out:  # before the first write: one labelling run per directory
        return _label_mc_locked(cfg, task, executor, out, progress)


def _label_mc_locked(cfg: MCConfig, task, executor, out: Path, progress: bool) -> dict[str, Any]:
    model_name = executor.model_name()
    fingerprint = model_fingerprint(executor)
    meta_path = out / META_FILE
    cfg_dict = cfg.to_dict()
    old = check_resume(cfg, fingerprint)
    spent = Compute(**(old or {}).get("compute", {})) if old else Compute()

    problems = task.problems(cfg.split, cfg.n_problems, cfg.seed)
    max_tokens = cfg.max_tokens or task.max_tokens
    sample_params = SamplingParams(n=cfg.samples, temperature=cfg.temperature, max_tokens=max_tokens,
                                   stop=task.stop, seed=cfg.seed)
    # a separate stream for rollouts (prompts differ anyway; this keeps the two roles independent)
    roll_params = SamplingParams(n=cfg.rollouts, temperature=cfg.temperature, max_tokens=max_tokens,
                                 stop=task.stop, seed=cfg.seed + 1)

    def write_meta(writer: JsonlAppender) -> dict[str, Any]:
        meta = {"config": cfg_dict, "compute": spent.to_dict(), "rows": len(writer.rows), "backend": model_name,
                FINGERPRINT_KEY: fingerprint, "executor": {"name": executor.name, **executor.stats}}
        write_json_atomic(meta_path, meta)
        return meta

    with JsonlAppender(out / LABELS_FILE, key=lambda r: (r["problem_id"], r["index"]),
                       validate=validate_label_row) as writer, \
            JsonlAppender(out / CACHE_FILE, key=lambda r: r["key"]) as cache:
        todo = [p for p in problems if any((p.id, j) not in writer for j in range(cfg.samples))]
        bar = tqdm(total=len(problems) * cfg.samples, initial=(len(problems) - len(todo)) * cfg.samples,
                   desc="mc labels", unit="sol", disable=not progress, dynamic_ncols=True)
        meta = write_meta(writer)
        cached_by_problem: dict[str, set[str]] = {}
        for k in cache.rows:
            cached_by_problem.setdefault(k.split("\x00", 1)[0], set()).add(k)
        units = []
        for c in range(0, len(todo), cfg.batch_problems):
            chunk = tuple(todo[c:c + cfg.batch_problems])
            units.append(LabelUnit(
                chunk, frozenset((p.id, j) for p in chunk for j in range(cfg.samples) if (p.id, j) in writer),
                frozenset(k for p in chunk for k in cached_by_problem.get(p.id, ())), sample_params, roll_params,
                cfg.prompt_style, cfg.rollout_batch))

        def write(u: LabelUnit, got) -> None:
            nonlocal spent, meta
            comps, cache_rows, unit_spent = got
            spent = spent + unit_spent
            cache.append(cache_rows)
            every = [(p, j, task.parse(x)) for p, row in zip(u.problems, comps) for j, x in enumerate(row)]
            rows, charged = [], set()
            # a prefix's rollout tokens count once, for the first solution (in (problem, index) order)
            # needing it; solutions already on disk are walked too, so a resumed run charges the same
            for p, j, s in every:
                if (p.id, j) in writer:
                    charged.update(_prefix_key(p.id, s.steps, i) for i in range(1, len(s.steps)))
                    continue
                outcome = bool(task.is_correct(s.answer, p))
                soft, used = [], s.completion_tokens
                for i in range(1, len(s.steps)):
                    k = _prefix_key(p.id, s.steps, i)
                    hit = cache.rows[k]
                    soft.append(hit["correct"] / hit["k"])
                    if k not in charged:
                        charged.add(k)
                        used += int(hit.get("generated_tokens", 0))
                if s.steps:
                    soft.append(float(outcome))
                rows.append({"problem_id": p.id, "index": j, "question": p.question, "gold": p.answer,
                             "steps": list(s.steps), "answer": s.answer, "outcome": outcome, "soft": soft,
                             "hard": [float(x > 0) for x in soft], "rollouts_k": cfg.rollouts,
                             "generated_tokens": used})
            bar.update(writer.append(rows))
            meta = write_meta(writer)

        executor.map(_label_unit, units, write)
        bar.close()
    return meta


# --------------------------------------------------------------------------------------------
# PRM800K format
# --------------------------------------------------------------------------------------------

def _prm800k_row(raw: Any, where: str, neutral: float) -> dict | None:
    if not isinstance(raw, dict):
        raise DeliberateError(f"{where}: a PRM800K line must be a JSON object")
    q, lab = raw.get("question"), raw.get("label")
    if not isinstance(q, dict) or not isinstance(q.get("problem"), str):
        raise DeliberateError(f"{where}: missing question.problem")
    if not isinstance(lab, dict) or not isinstance(lab.get("steps"), list):
        raise DeliberateError(f"{where}: missing label.steps")
    steps, labels = [], []
    for n, st in enumerate(lab["steps"], start=1):
        if not isinstance(st, dict):
            raise DeliberateError(f"{where}: label.steps[{n - 1}] must be an object")
        chosen = st.get("chosen_completion")
        comps = st.get("completions") or []
        if chosen is None:
            human = st.get("human_completion")
            if isinstance(human, dict) and isinstance(human.get("text"), str):
                steps.append(human["text"])
                labels.append(1.0)  # a labeller's own step is taken as good
                continue
            break  # no step was chosen: the labelled solution ends here
        if not isinstance(chosen, int) or not 0 <= chosen < len(comps) or not isinstance(comps[chosen], dict):
            raise DeliberateError(f"{where}: label.steps[{n - 1}].chosen_completion {chosen!r} does not name a completion")
        c = comps[chosen]
        rating = c.get("rating")
        if not isinstance(c.get("text"), str) or rating not in (-1, 0, 1, None):
            raise DeliberateError(f"{where}: label.steps[{n - 1}] needs a text and a rating of 1, 0 or -1")
        steps.append(c["text"])
        labels.append({1: 1.0, 0: neutral, -1: 0.0, None: neutral}[rating])
    ext = raw.get("deliberate") if isinstance(raw.get("deliberate"), dict) else {}
    gold = q.get("ground_truth_answer")
    outcome = lab.get("finish_reason") == "solution"
    soft = ext.get("soft") if isinstance(ext.get("soft"), list) and len(ext["soft"]) == len(steps) else labels
    pid = ext.get("problem_id") or "prm800k-" + hashlib.blake2b(q["problem"].encode(), digest_size=6).hexdigest()
    row = {"problem_id": pid, "index": ext.get("index", 0), "question": q["problem"],
           "gold": None if gold is None else str(gold), "steps": steps, "answer": ext.get("answer"),
           "outcome": bool(ext.get("outcome", outcome)), "soft": [float(x) for x in soft],
           "hard": [float(x > 0) for x in (labels if "soft" not in ext else soft)],
           "rollouts_k": ext.get("rollouts_k"), "generated_tokens": ext.get("generated_tokens", 0)}
    validate_label_row(row, where)
    return row


def read_prm800k(path: str | os.PathLike, neutral: float = 1.0) -> list[dict]:
    """Label rows from a PRM800K JSONL file: ``rating`` 1 -> 1.0, -1 -> 0.0, 0 -> ``neutral``.

    Why ``neutral=1.0`` by default: a neutral step is not a mistake, and "Let's Verify Step by Step"
    found counting neutral steps as positive works as well as excluding them. The prefix-level
    semantics of our labels are kept by the steps themselves: PRM800K solutions stop at the first
    bad step. Solutions whose ``finish_reason`` is ``"solution"`` have outcome True."""
    f = Path(path)
    if not f.exists():
        raise DeliberateError(f"PRM800K file {str(f)!r} not found")
    if not 0 <= neutral <= 1:
        raise DeliberateError(f"neutral must be in [0, 1] (got {neutral!r})")
    data = f.read_bytes()
    rows = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{f}:{lineno}"
        row = _prm800k_row(json_line(raw, where), where, neutral)
        if row is not None:
            rows.append(row)
    if not rows:
        raise DeliberateError(f"PRM800K file {str(f)!r} has no rows")
    return rows


def write_prm800k(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Export label rows as PRM800K JSONL (hard label 1 -> rating 1, 0 -> -1); returns rows written.

    ``finish_reason`` is ``"solution"`` for a correct outcome, else ``"found_error"``. Our soft labels
    and ids ride along in a ``deliberate`` field (PRM800K readers ignore it)."""
    f = Path(path)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for n, r in enumerate(rows):
            validate_label_row(dict(r), f"row {n}")
            steps = [{"completions": [{"text": s, "rating": 1 if h > 0 else -1}], "chosen_completion": 0}
                     for s, h in zip(r["steps"], r["hard"])]
            out = {"question": {"problem": r["question"], "ground_truth_answer": r.get("gold")},
                   "label": {"steps": steps, "finish_reason": "solution" if r["outcome"] else "found_error"},
                   "deliberate": {k: r.get(k) for k in ("problem_id", "index", "answer", "outcome", "soft",
                                                         "rollouts_k", "generated_tokens")}}
            fh.write(json.dumps(out) + "\n")
    os.replace(tmp, f)
    return len(rows)


# --------------------------------------------------------------------------------------------
# CLI: deliberate label mc | label export | label import
# --------------------------------------------------------------------------------------------
