"""What every ``deliberate train <recipe>`` command shares: its flags come from the recipe's config
dataclass with ``--model`` naming the policy (``--init``, the field's own flag, stays accepted because
docs/RESULTS.md records commands with it), and a finished run writes the ``config.yaml`` that reruns it
and prints where its outputs are."""

from __future__ import annotations

from pathlib import Path

from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import add_config_arguments

#: the recipes' policy field is ``init``; ``--model`` is the name users of every other command know
POLICY_ALIASES = {"init": ("--model",)}


def add_recipe_arguments(parser, cls, helps: dict[str, str]) -> None:
    """One flag per field of the recipe config ``cls``, with ``--model`` for its policy."""
    add_config_arguments(parser, cls, helps, aliases=POLICY_ALIASES)


def finish(out: str | Path, args, *lines: str, plot: bool = True) -> int:
    """Write ``OUT/config.yaml`` from the parsed ``args``, print ``lines`` and the summary (and plot) paths."""
    write_run_config(out, args)
    for line in lines:
        print(line)
    print(f"summary: {Path(out) / 'summary.json'}" + (f"   plot: {Path(out) / 'curve.png'}" if plot else ""))
    return 0
