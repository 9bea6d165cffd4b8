"""``deliberate report``: a self-contained HTML page of a run directory, or of several side by side.

    deliberate report runs/sweep
    deliberate report runs/rest-em runs/star --out compare.html
"""

from __future__ import annotations

from deliberate.errors import DeliberateError
from deliberate.eval.compare import write_comparison
from deliberate.eval.report import MAX_TREES, REPORT_FILE, write_report


def add_arguments(parser) -> None:
    """Flags of ``deliberate report``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                        help="an eval, sweep or training run directory (holds summary.json); several: one page "
                             "comparing them (training runs: accuracy vs train compute; eval/sweep runs: accuracy "
                             "vs samples)")
    parser.add_argument("--out", default=None, help=f"output HTML file (default: RUN_DIR/{REPORT_FILE}; for several "
                                                    f"runs ./compare.html)")
    parser.add_argument("--max-trees", type=int, default=MAX_TREES,
                        help="search trees from trees.jsonl to embed (default: %(default)s)")


def main(args) -> int:
    """Run ``deliberate report`` from parsed :func:`add_arguments` flags; print where the page went."""
    if args.max_trees < 0:
        raise DeliberateError(f"--max-trees must be >= 0 (got {args.max_trees})")
    if len(args.run_dir) > 1:
        path = write_comparison(args.run_dir, args.out)
    else:
        path = write_report(args.run_dir[0], args.out, max_trees=args.max_trees)
    print(f"wrote {path}")
    return 0
