"""Command-line flags derived from a config dataclass, so a default is written once (in the dataclass).

Every field is a flag (``n_train`` -> ``--n-train``); fields of a nested settings dataclass are
flattened (``finetune.epochs`` -> ``--epochs``; any other nested field keeps its name as a prefix:
``seed_sft.steps`` -> ``--seed-sft-steps``); ``task_options`` is ``--task-arg KEY=VALUE``
(repeatable); ``--threads`` sets torch's thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from deliberate.cli.common import set_threads
from deliberate.errors import DeliberateError
from deliberate.models.base import parse_kv


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_fields(cls, prefix: str = ""):
    """(dest, field, type, owner path) for every CLI-settable field of ``cls``, nested ones flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            sub = "" if f.name == "finetune" else f"{f.name}_"
            for dest, sf, st, path in config_fields(t, prefix + sub):
                yield dest, sf, st, (f.name, *path)
        elif f.name != "task_options":
            yield prefix + f.name, f, t, ()


def parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise DeliberateError(f"expected comma-separated integers (got {text!r})") from None


#: Help of flags many recipes share (a recipe's own ``helps`` override these).
COMMON_HELP = {
    "bf16": "bfloat16 autocast in every fine-tune (float32 weights and optimizer): up to ~2.3x faster on a CPU "
            "with AVX512-BF16 (10.9M parameters, dense batches; docs/BENCHMARKS.md); float rounding, so the samples, "
            "differ from a float32 run",
}


def add_config_arguments(parser, cls, helps: dict[str, str] | None = None,
                         aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per field of the config dataclass ``cls`` (defaults shown in --help); ``aliases``: more
    flags for a field (``{"init": ("--model",)}``)."""
    helps = {**COMMON_HELP, **(helps or {})}
    default = cls()
    for dest, f, t, path in config_fields(cls):
        obj = default
        for p in path:
            obj = getattr(obj, p)
        value = getattr(obj, f.name)
        args = typing.get_args(t)
        base = next((a for a in args if a is not type(None)), t) if args and type(None) in args else t
        kw: dict[str, Any] = {"default": value, "dest": dest, "help": helps.get(dest, "") + " (default: %(default)s)"}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            kw.update(type=parse_ints, default=value, metavar="N,N,...")
        elif base in (int, float, str):
            kw["type"] = base
        else:
            continue
        parser.add_argument(*(aliases or {}).get(dest, ()), flag_name(dest), **kw)
    if any(f.name == "task_options" for f in dataclasses.fields(cls)):
        parser.add_argument("--task-arg", action="append", default=None, metavar="KEY=VALUE",
                            help=("task option, repeatable; each overrides that one of the recipe's own task options "
                                  "(with another --task, of that task's defaults)"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def config_from_args(cls, args):
    """The config dataclass ``cls`` built from flags made by :func:`add_config_arguments`."""
    set_threads(getattr(args, "threads", None) or None)
    default = cls()
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dest, f, _t, path in config_fields(cls):
        if not hasattr(args, dest):
            continue
        if path:
            nested.setdefault(path[0], {})[f.name] = getattr(args, dest)
        else:
            top[f.name] = getattr(args, dest)
    for name, values in nested.items():
        top[name] = dataclasses.replace(getattr(default, name), **values)
    if hasattr(default, "task_options"):
        # the recipe's task options apply to its own task only: another task starts from its own defaults
        other_task = hasattr(default, "task") and top.get("task", default.task) != default.task
        options = {} if other_task else dict(default.task_options)
        if getattr(args, "task_arg", None):
            options.update(parse_kv(args.task_arg, "--task-arg"))  # each KEY=VALUE overrides one option
        top["task_options"] = options
    return cls(**top)
