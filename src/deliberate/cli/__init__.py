"""The ``deliberate`` command line (``deliberate.cli:entry``): :mod:`deliberate.cli.main` builds the parser
and dispatches to one module per command; library code never sees an argparse namespace."""

from deliberate.cli.main import COMMANDS, TRAIN_RECIPES, build_parser, entry, main_cli

__all__ = ["COMMANDS", "TRAIN_RECIPES", "build_parser", "entry", "main_cli"]
