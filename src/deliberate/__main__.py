"""``python -m deliberate`` = the ``deliberate`` command."""

from deliberate.cli import entry

entry()
