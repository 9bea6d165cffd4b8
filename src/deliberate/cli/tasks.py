"""``deliberate tasks``: list the registered tasks and their ``--task-arg`` options."""

from __future__ import annotations

import argparse

from deliberate.tasks.base import TASKS


def add_arguments(parser) -> None:
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)


def main(args) -> int:
    for name in TASKS.names():
        d = TASKS.describe(name)
        print(f"{d.name:12s} {d.summary}")
        options = " ".join(d.options) + (" (and any option of the dataset's own config)" if d.any_option else "")
        if options.strip():
            print(f"{'':12s}   --task-arg {options.strip()}")
    return 0
