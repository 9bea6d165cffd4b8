"""``--config FILE.yaml`` for every command, and the ``config.yaml`` each run directory gets.

A config file is a mapping of option names (``n_problems`` or ``n-problems``: a flag's name without its
dashes) to values; flags given on the command line override it, and a key that is no option of the
command is refused. ``config.yaml`` in a run directory holds every option of the command that made it,
so ``deliberate eval --config RUN/config.yaml`` reruns that run (add ``--out`` for a fresh directory).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from deliberate.errors import DeliberateError

CONFIG_YAML = "config.yaml"

#: namespace entries that say which command runs, not how: never written, never read from a file
NOT_OPTIONS = {"help", "version", "config", "command", "recipe", "label_command", "_module"}


def command_actions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[argparse.Action]:
    """The actions of the (sub)parsers ``args`` went through, the chosen subcommands' included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                yield from command_actions(action.choices[chosen], args)
        elif action.dest not in NOT_OPTIONS:
            yield action


def all_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_actions(sub)


def relax_required(parser: argparse.ArgumentParser) -> None:
    """Let required options be missing from the command line: a config file may give them
    (:func:`apply_config_file` checks afterwards)."""
    for action in all_actions(parser):
        if action.option_strings and action.required:
            action.required = False
            action.needed = True  # remembered for the check after the file is read


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options ``argv`` sets explicitly (a default is not a choice)."""
    actions = list(all_actions(parser))
    saved = [a.default for a in actions]
    for a in actions:
        if not isinstance(a, argparse._SubParsersAction):
            a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, d in zip(actions, saved):
            a.default = d


def coerce(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A file's value as the flag would have parsed it: a list becomes the comma-list text or tuple the
    flag gives, a string goes through the flag's type, a repeatable flag takes a list (or a mapping)."""
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(value, str) and callable(action.type):
        try:
            value = action.type(value)
        except (TypeError, ValueError) as e:
            raise DeliberateError(f"{path}: {key}: {e}") from None
    elif isinstance(value, list) and action.nargs not in ("+", "*"):
        # a comma-list flag parsed later (--ns 1,2,4) takes the joined text; one parsed by its type, the tuple
        value = ",".join(map(str, value)) if action.type in (None, str) else tuple(value)
    if action.choices is not None and value not in action.choices:
        raise DeliberateError(f"{path}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


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
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str],
                      args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the values of its ``--config`` file under the options ``argv`` gives explicitly."""
    path = args.config
    values = read_config_file(path)
    actions = {a.dest: a for a in command_actions(parser, args)}
    if unknown := sorted(set(values) - set(actions) - NOT_OPTIONS):
        raise DeliberateError(f"--config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (not an option of this command)")
    given = given_on_command_line(parser, argv)
    for key, value in values.items():
        if key in actions and key not in given:
            setattr(args, key, coerce(actions[key], key, value, path))
    for action in actions.values():
        if getattr(action, "needed", False) and getattr(args, action.dest, None) is None:
            raise DeliberateError(f"{action.option_strings[-1]} is required (on the command line or in {path})")
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
