"""A sweep's per-problem results table, ``table.parquet``: one row per (problem, seed), as
search-and-learn writes its datasets, so analysis scripts written for those port over.

    import datasets
    table = datasets.load_dataset("parquet", data_files="runs/sweep/table.parquet", split="train")
    table.to_pandas()  # or table.push_to_hub(...), table.to_json(...)

Columns: ``problem_id``, ``seed``, ``problem`` (the question), ``answer`` (the gold answer);
``completions`` (the pool's ``max(budgets)`` samples), ``completion_tokens``, ``preds`` (each
completion's extracted answer, None when it has none), ``scores`` (the verifier's per-step scores of
each completion, steps split as search splits them; empty lists without a verifier) and ``agg_scores``
(aggregated with the sweep's ``aggregation``; None without a verifier); for each budget N,
``pred_maj@N``, ``pred_weighted@N`` and ``pred_naive@N`` (majority, weighted majority and best-of-N over
the first N completions, the sweep's own selection rules; the weighted and naive ones None without a
verifier), and ``pred_<strategy>@N`` for each search strategy the sweep ran (beam, dvts ...). A
prediction is ``\\boxed{answer}``, as search-and-learn writes it (None when there is no answer). A
sweep without a pool (search strategies only) has empty ``completions``.

The table is rebuilt from ``pool.jsonl``, ``pool_scores.jsonl`` and ``results.jsonl`` at the end of
each invocation, so it always holds everything on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deliberate.rewards.base import aggregate
from deliberate.search.base import Candidate, SearchSettings, get_strategy
from deliberate.tasks.base import Task
from deliberate.types import Problem, SampleRecord, SweepRow

TABLE_FILE = "table.parquet"
#: search-and-learn's names for the pool selections, and the strategies that make them
POOL_PREDICTIONS = {"maj": "majority", "weighted": "weighted", "naive": "best_of_n"}


def boxed(answer: str | None) -> str | None:
    return None if answer is None else "\\boxed{" + answer + "}"


def table_rows(task: Task, problems: Sequence[Problem], seeds: Sequence[int], budgets: Sequence[int],
               settings: SearchSettings, pool: Mapping[tuple[str, int], list[SampleRecord]],
               pool_scores: Mapping[tuple[str, int, int], list[float]], rows: Mapping[tuple, SweepRow],
               strategies: Sequence[str]) -> list[dict[str, Any]]:
    """The table's rows (plain dicts), in problem order then seed order."""
    searched = [s for s in strategies if not get_strategy(s).selects_from_pool]
    selectors = {k: get_strategy(name) for k, name in POOL_PREDICTIONS.items()}
    out = []
    for p in problems:
        for seed in seeds:
            recs = pool.get((p.id, seed), [])
            scores = [pool_scores.get((p.id, seed, j)) for j in range(len(recs))]
            agg = [None if s is None else aggregate(s, settings.aggregation) for s in scores]
            row: dict[str, Any] = {
                "problem_id": p.id, "seed": seed, "problem": p.question, "answer": p.answer,
                "completions": [r.text for r in recs], "completion_tokens": [r.completion_tokens for r in recs],
                "preds": [r.answer for r in recs], "scores": [s or [] for s in scores], "agg_scores": agg}
            cands = [Candidate(r.text, task.split_steps(r.text, settings.step_delimiter), r.answer, a)
                     for r, a in zip(recs, agg)]
            for n in budgets:
                for key, strategy in selectors.items():
                    pred = None
                    if cands and (not strategy.needs_verifier(settings) or all(a is not None for a in agg)):
                        best = strategy.select(task, p, cands[:n])
                        pred = boxed(best.answer) if best is not None else None
                    row[f"pred_{key}@{n}"] = pred
                for s in searched:
                    got = rows.get((p.id, s, n, seed))
                    row[f"pred_{s}@{n}"] = boxed(got.answer) if got is not None else None
            out.append(row)
    return out


def write_table(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as ``out/table.parquet`` through ``datasets`` (loadable with ``load_dataset``)."""
    # lazy: datasets and pyarrow take seconds to import; only the table's writing needs them
    import pyarrow.parquet as pq
    from datasets import Dataset

    path = Path(out) / TABLE_FILE
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(Dataset.from_list(rows).data.table, str(tmp))  # the Arrow table, its features in its schema
    tmp.replace(path)  # a reader never sees half a table
    return path
