"""Why Stream-of-Search models fail: arithmetic, goal checks, length.

    python scripts/sos_diagnose.py runs/sos/s0 runs/sos/s1 runs/sos/s2
"""

import sys
from pathlib import Path

from deliberate.train.sos import CONDITIONS, diagnose

print(f"{'run':18s} {'trained on':>10} {'op error':>9} {'ops':>6}  failure kinds (share of greedy + sampled completions)")
for run in sys.argv[1:]:
    for cond in CONDITIONS:
        d = diagnose(Path(run) / cond / "eval" / "records.jsonl")
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in d["outcomes"].items())
        print(f"{run:18s} {cond:>10} {d['op_error_rate']:>9.3f} {d['op_lines']:>6}  {kinds}")
