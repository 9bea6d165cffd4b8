"""Markdown table of self-improvement runs (ReST-EM, GRPO, STaR): one row per run and iteration.

    python scripts/selfimprove_table.py runs/si/rest-em-s0 runs/si/rest-em-s1 runs/si/rest-em-s2

Reads each run's ``iterations/NNN.json`` (so it also works while a run is still going) and prints
held-out accuracy with its 95% CI, the change from iteration 0, and cumulative train compute.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from deliberate.train.selfimprove import IterationLog


def rows_of(run: Path) -> list[dict]:
    if not (run / "iterations").is_dir():
        raise SystemExit(f"{run}: no iterations/ (not a rest-em, grpo or star run directory)")
    return IterationLog(run, n_params=0).cumulative()


def cell(e: dict | None, base: dict | None) -> str:
    if not e:
        return "-"
    d = "" if base is None else f" ({100 * (e['accuracy'] - base['accuracy']):+.1f})"
    return f"{e['accuracy']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]{d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    a = ap.parse_args()
    keys = None
    deltas: dict[tuple[int, str], list[float]] = {}
    for run in a.runs:
        rows = rows_of(run)
        if not rows:
            continue
        if keys is None:
            ev = rows[0]["eval"]
            keys = [k for k in ("greedy", *sorted(k for k in ev if k.startswith("maj@")),
                                *sorted(k for k in ev if k.startswith("pass@"))) if k in ev] or sorted(ev)
            star = any("kept_rationalized" in r for r in rows)  # STaR: what rationalization added
            print("| run | iter | " + " | ".join(keys) + (" | kept (rationalized)" if star else "")
                  + " | train PFLOPs (cum.) | train wall s (cum.) |")
            print("|---|---|" + "---|" * (len(keys) + star) + "---|---|")
        base = rows[0]["eval"]
        for r in rows:
            it = r["iteration"]
            print(f"| {run.name} | {it} | " + " | ".join(cell(r["eval"].get(k), base.get(k) if it else None)
                                                         for k in keys)
                  + (f" | {r.get('kept', '-')} ({r.get('kept_rationalized', '-')})" if star else "")
                  + f" | {r['cum_flops'] / 1e15:.3f} | {r['cum_wall_s']:.0f} |")
            for k in keys:
                if k in r["eval"] and k in base:
                    deltas.setdefault((it, k), []).append(r["eval"][k]["accuracy"] - base[k]["accuracy"])
    if len(a.runs) > 1 and deltas:
        print()
        print("| iter | metric | runs | mean change (points) | min | max |")
        print("|---|---|---|---|---|---|")
        for (it, k), v in sorted(deltas.items()):
            if it:
                print(f"| {it} | {k} | {len(v)} | {100 * statistics.mean(v):+.1f} | {100 * min(v):+.1f} | "
                      f"{100 * max(v):+.1f} |")


if __name__ == "__main__":
    main()
