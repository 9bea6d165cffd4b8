"""``--config FILE.yaml`` for every command, the ``config.yaml`` each run directory gets, and the record of
each command's flags that reading a file relies on.

A config file is a mapping of option names (``n_problems`` or ``n-problems``: a flag's name without its
dashes) to values; flags given on the command line override it, and a key that is no option of the
command is refused. ``config.yaml`` in a run directory holds every option of the command that made it,
so ``deliberate eval --config RUN/config.yaml`` reruns that run (add ``--out`` for a fresh directory).

Flags added through :func:`add_flag` (all that :mod:`deliberate.cli.flags` and :mod:`deliberate.cli.common`
make) are recorded in a :class:`FlagRecord` that the parsed namespace carries, so reading a file needs no
argparse internals: the record says each option's type, which ones the command line gave and which are
required. A flag a command adds by hand (``parser.add_argument``) is still an option a file may set, its
value taken as the file gives it, and it cannot be a required option that the file supplies.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deliberate.errors import DeliberateError

CONFIG_YAML = "config.yaml"

#: the namespace entry holding the chosen command's :class:`FlagRecord` (set with ``parser.set_defaults``)
RECORD_KEY = "flag_record"

#: namespace entries that say which command runs, not how: never written, never read from a file
NOT_OPTIONS = {"help", "version", "config", "command", "recipe", "label_command", RECORD_KEY}


class FlagRecord:
    """The flags one (sub)command's parser got through :func:`add_flag`: each one's action, the
    ``add_argument`` call that made it (to parse a command line again without defaults), which are
    required and which repeatable."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.actions: dict[str, argparse.Action] = {}
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.needed: set[str] = set()
        self.repeatable: set[str] = set()

    def given(self, argv: Sequence[str]) -> set[str]:
        """The destinations of the recorded options that ``argv`` sets explicitly (a default is not a choice)."""
        probe = argparse.ArgumentParser(add_help=False)
        for names, kwargs in self.calls:
            if names[0].startswith("-"):
                probe.add_argument(*names, **{**kwargs, "default": argparse.SUPPRESS, "required": False})
        # the command words, --config and hand-added flags are not the probe's: they land among the extras
        seen, _ = probe.parse_known_args(list(argv))
        return set(vars(seen)) | {dest for dest, a in self.actions.items() if not a.option_strings}

    def relax(self) -> None:
        for dest in self.needed:
            self.actions[dest].required = False


#: the live records, so that :func:`relax_required` finds the subcommands' flags from the top-level parser
RECORDS: weakref.WeakSet[FlagRecord] = weakref.WeakSet()


def flag_record(parser: argparse.ArgumentParser) -> FlagRecord:
    """The record of ``parser``'s flags (made on first use and kept in the parser's defaults)."""
    record = parser.get_default(RECORD_KEY)
    if record is None:
        record = FlagRecord(parser.prog)
        parser.set_defaults(**{RECORD_KEY: record})
        RECORDS.add(record)
    return record


def add_flag(parser: argparse.ArgumentParser, *names: str, group=None, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*names, **kwargs)`` (into the argument ``group`` when given), recorded in the
    parser's :class:`FlagRecord`."""
    action = (group or parser).add_argument(*names, **kwargs)
    record = flag_record(parser)
    record.actions[action.dest] = action
    record.calls.append((names, kwargs))
    if action.required and action.option_strings:
        record.needed.add(action.dest)
    if kwargs.get("action") == "append":
        record.repeatable.add(action.dest)
    return action


def relax_required(parser: argparse.ArgumentParser) -> None:
    """Let the required options of ``parser``'s commands be missing from the command line: a config file
    may give them (:func:`apply_config_file` checks afterwards)."""
    for record in list(RECORDS):
        if record.prog == parser.prog or record.prog.startswith(parser.prog + " "):
            record.relax()


def given_on_command_line(record: FlagRecord | None, options: Sequence[str], argv: Sequence[str]) -> set[str]:
    """Which of ``options`` ``argv`` sets: a recorded one as the command line parses; a hand-added one
    when its own name is in ``argv`` (``--max-trees 3``, ``--max-trees=3``)."""
    given = record.given(argv) if record else set()
    for dest in set(options) - set(record.actions if record else ()):
        flag = "--" + dest.replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            given.add(dest)
    return given


def coerce(action: argparse.Action | None, repeatable: bool, key: str, value: Any, path: str) -> Any:
    """A file's value as the flag would have parsed it: a list becomes the comma-list text or tuple the
    flag gives, a string goes through the flag's type, a repeatable flag takes a list (or a mapping).
    ``action`` is None for a hand-added flag: its value stays as the file gives it."""
    if value is None:
        return None
    if repeatable:
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if action is None:
        return value
    if isinstance(value, str) and callable(action.type):
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise DeliberateError(f"{path}: {key}: {e}") from None
    elif isinstance(value, list) and action.nargs not in ("+", "*"):
        # a comma-list flag parsed later takes the joined text; one parsed by its type, the tuple
        value = ",".join(map(str, value)) if action.type in (None, str) else tuple(value)
    if action.choices is not None and value not in action.choices:
        raise DeliberateError(f"{path}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


#: keys that run directories written by earlier versions hold, and what they mean now, so their config.yaml
#: still reruns: (old key, new key, value map)
LEGACY_KEYS = (("no_greedy", "greedy", lambda v: None if v is None else not v),)


def read_config_file(path: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DeliberateError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise DeliberateError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DeliberateError(f"--config {path}: expected a mapping of option: value (got {type(values).__name__})")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for old, new, convert in LEGACY_KEYS:
        if old in values and new not in values:
            values[new] = convert(values.pop(old))
    return values


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str],
                      args: argparse.Namespace) -> argparse.Namespace:
    """``args`` (parsed from ``argv`` by ``parser``) with the values of its ``--config`` file under the
    options ``argv`` does not give explicitly. The options are the namespace's own entries: every flag of
    the chosen command, whichever way it was added."""
    path = args.config
    values = read_config_file(path)
    options = set(vars(args)) - NOT_OPTIONS
    if unknown := sorted(set(values) - options - NOT_OPTIONS):
        raise DeliberateError(f"--config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (not an option of this command)")
    record: FlagRecord | None = getattr(args, RECORD_KEY, None)
    actions = record.actions if record else {}
    given = given_on_command_line(record, sorted(options), argv)
    for key, value in values.items():
        if key in options and key not in given:
            repeatable = key in record.repeatable if key in actions else isinstance(getattr(args, key), list)
            setattr(args, key, coerce(actions.get(key), repeatable, key, value, path))
    for dest in sorted(record.needed if record else ()):
        if getattr(args, dest, None) is None:
            raise DeliberateError(f"{actions[dest].option_strings[-1]} is required (on the command line or in {path})")
    return args


def plain(value: Any) -> Any:
    """A namespace value as YAML writes it: tuples as lists, paths as strings."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_run_config(out_dir: str | os.PathLike, args: argparse.Namespace) -> Path:
    """Write ``OUT/config.yaml``: every option of the command as parsed (``--config`` applied), so
    ``--config OUT/config.yaml`` reruns it. Atomic; under a launcher only rank 0 writes."""
    path = Path(out_dir) / CONFIG_YAML
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return path
    options = {k: plain(v) for k, v in vars(args).items() if k not in NOT_OPTIONS}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_YAML}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# deliberate {' '.join(command_words(args))} --config {path}  reruns this run\n")
            yaml.safe_dump(options, f, sort_keys=False, allow_unicode=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def command_words(args: argparse.Namespace) -> list[str]:
    words = [getattr(args, "command", None), getattr(args, "recipe", None), getattr(args, "label_command", None)]
    return [w for w in words if w]
