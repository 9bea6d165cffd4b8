"""Command-line flags derived from a config dataclass, so a default is written once (in the dataclass).

Every field is a flag (``n_train`` -> ``--n-train``); fields of a nested settings dataclass are
flattened (``finetune.epochs`` -> ``--epochs``; any other nested field keeps its name as a prefix:
``seed_sft.steps`` -> ``--seed-sft-steps``, unless the command flattens it too); a tuple field takes a
comma list (``--budgets 4,16``); ``task_options`` is ``--task-arg KEY=VALUE`` (repeatable), and another
mapping field is a repeatable ``KEY=VALUE`` flag when the command names it; ``--threads`` sets torch's
thread count. A command says the rest in one :class:`ConfigFlags`: help texts, other flag names,
aliases, choices, fields that are not flags, defaults of its own, and how a mapping flag's items read.
The same object turns the parsed flags back into the dataclass, so the two directions cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

from deliberate.cli.common import set_threads
from deliberate.cli.config_file import add_flag
from deliberate.models.base import parse_kv


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def comma_list(convert: Callable[[str], Any], what: str) -> Callable[[str], tuple]:
    """A flag type reading ``"a,b,c"`` into a tuple of ``convert``-ed items ('' is the empty tuple)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(convert(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (got {text!r})") from None

    parse.__name__ = f"comma-separated {what}"
    return parse


parse_ints = comma_list(int, "integers")
parse_floats = comma_list(float, "numbers")
parse_strs = comma_list(str, "names")
LIST_TYPES = {int: (parse_ints, "N,N,..."), float: (parse_floats, "X,X,..."), str: (parse_strs, "A,B,...")}

#: Help of flags many recipes share (a recipe's own ``helps`` override these).
COMMON_HELP = {
    "lora_r": "LoRA rank of an HF model's fine-tune (peft; 0: full fine-tune); the adapter is merged into the checkpoint",
    "lora_alpha": "LoRA scaling alpha (with --lora-r)",
    "lora_dropout": "LoRA dropout (with --lora-r)",
    "lora_targets": "modules LoRA adapts: all-linear, or comma-separated module names (with --lora-r)",
    "chat": "prompts through the chat template (default: when the model's tokenizer has one)",
    "prompt_style": "the task's prompt format: plain (Q: ... A:, the tiny model's) or instruct (HF instruct models)",
    "bf16": "bfloat16 autocast in every fine-tune (float32 weights and optimizer): up to ~2.3x faster on a CPU "
            "with AVX512-BF16 (10.9M parameters, dense batches; docs/BENCHMARKS.md); float rounding, so the samples, "
            "differ from a float32 run",
    "task_options": "task option, repeatable; each overrides that one of the recipe's own task options (with another "
                    "--task, of that task's defaults)",
}
THREADS_HELP = "torch threads (default: all cores)"


@dataclass(frozen=True)
class Field:
    """One leaf field of a config dataclass: its flag destination, where it sits, its type and default."""

    dest: str
    name: str
    path: tuple[str, ...]  # the nested fields that hold it (() for a top-level field)
    type: Any  # Optional[...] stripped
    default: Any  # MISSING when the dataclass has none


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def config_fields(cls, prefix: str = "", flatten: tuple[str, ...] = ("finetune",), default: Any = None,
                  path: tuple[str, ...] = ()) -> Iterator[Field]:
    """Every leaf field of ``cls``, nested dataclasses flattened (``flatten``: those without a prefix);
    ``default``: the instance whose values are the defaults (a nested field's own default)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t)
        if args and type(None) in args and typing.get_origin(t) is not tuple:
            t = next(a for a in args if a is not type(None))
        value = field_default(f) if default is None else getattr(default, f.name)
        if dataclasses.is_dataclass(t):
            sub = "" if f.name in flatten else f"{f.name}_"
            yield from config_fields(t, prefix + sub, flatten, value, (*path, f.name))
        else:
            yield Field(prefix + f.name, f.name, path, t, value)


def show(value: Any) -> str:
    """A default as a user types it (a tuple as its comma list)."""
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return text.replace("%", "%%")


@dataclass
class ConfigFlags:
    """How one command's flags come from its config dataclass ``cls``; all mappings are keyed by the
    field's destination (``n_problems``; a nested one flattened: ``epochs``).

    ``helps``: help texts ("(default: ...)" is added unless the text has its own; a callable is called when
    the flags are added, for texts that list registered names); ``names``: a flag name
    other than the field's (``{"out_dir": "out"}``: ``--out``, namespace ``out``; a mapping field becomes a
    flag only when named here, ``task_options`` always is ``--task-arg``); ``aliases``: more option strings
    (``{"init": ("--model",)}``); ``choices``; ``metavars``; ``skip``: fields that are no flags (they keep
    the dataclass default unless :meth:`config` is told otherwise); ``defaults``: a default of the command's
    own (a field without a default is otherwise a required flag); ``readers``: how a mapping flag's
    ``KEY=VALUE`` items become the field's value (default :func:`parse_kv`); ``flatten``: nested
    dataclasses whose fields take no prefix; ``threads``: the help of ``--threads`` (None: no such flag)."""

    cls: type
    helps: Mapping[str, str | Callable[[], str]] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    metavars: Mapping[str, str] = field(default_factory=dict)
    skip: frozenset[str] | set[str] | tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    readers: Mapping[str, Callable[[list[str] | None], Any]] = field(default_factory=dict)
    flatten: tuple[str, ...] = ("finetune",)
    threads: str | None = THREADS_HELP

    def __post_init__(self) -> None:
        self.names = {"task_options": "task_arg", **self.names}
        self.fields = list(config_fields(self.cls, flatten=self.flatten))
        dests = [f.dest for f in self.fields]
        if len(set(dests)) != len(dests):
            raise ValueError(f"{self.cls.__name__}: two fields flatten to one flag: {sorted(dests)}")

    def is_flag(self, f: Field) -> bool:
        if f.dest in self.skip:
            return False
        if self.is_mapping(f):
            return f.dest in self.names
        return f.type in (bool, int, float, str) or self.list_type(f) is not None

    @staticmethod
    def is_mapping(f: Field) -> bool:
        return f.type in (dict, Mapping) or typing.get_origin(f.type) in (dict, Mapping)

    @staticmethod
    def list_type(f: Field):
        if typing.get_origin(f.type) is tuple:
            items = [a for a in typing.get_args(f.type) if a is not Ellipsis]
            return LIST_TYPES.get(items[0] if items else int)
        return None

    def flag_dest(self, f: Field) -> str:
        return self.names.get(f.dest, f.dest)

    def add_to(self, parser) -> None:
        """One flag per field (defaults shown in --help), and ``--threads``."""
        helps = {**COMMON_HELP, **self.helps}
        for f in self.fields:
            if not self.is_flag(f):
                continue
            dest = self.flag_dest(f)
            default = self.defaults.get(f.dest, f.default)
            text = helps.get(f.dest, "")
            if callable(text):  # a help that lists registered names: read when the parser is built, after plug-ins load
                text = text()
            kw: dict[str, Any] = {"dest": dest}
            if self.is_mapping(f):
                kw.update(action="append", default=None, metavar="KEY=VALUE")
            else:
                kw["default"] = None if default is MISSING else default
                if default is MISSING:
                    kw["required"] = True
                elif "(default" not in text and default is not None:  # "(default: None)" says nothing
                    text += f" (default: {show(default)})"
                if f.type is bool:
                    kw["action"] = argparse.BooleanOptionalAction
                elif (listed := self.list_type(f)) is not None:
                    kw.update(type=listed[0], metavar=listed[1])
                else:
                    kw["type"] = f.type
            if f.dest in self.choices:
                kw["choices"] = self.choices[f.dest]
            if f.dest in self.metavars:
                kw["metavar"] = self.metavars[f.dest]
            add_flag(parser, *self.aliases.get(f.dest, ()), flag_name(dest), help=text.strip(), **kw)
        if self.threads is not None:
            add_flag(parser, "--threads", type=int, default=None, help=self.threads)

    def config(self, args, **given: Any):
        """The dataclass from the parsed flags; ``given``: values of fields by destination (a field that is
        no flag, or one whose flag the command resolved itself, e.g. a computed ``out``)."""
        set_threads(getattr(args, "threads", None) or None)
        top: dict[str, Any] = {}
        nested: dict[tuple[str, ...], dict[str, Any]] = {}
        for f in self.fields:
            if f.dest in given:
                value = given[f.dest]
            elif self.is_flag(f) and hasattr(args, self.flag_dest(f)):
                value = getattr(args, self.flag_dest(f))
                if self.is_mapping(f):
                    value = self.mapping(f, value, args)
            elif f.path and f.default is not MISSING:
                value = f.default  # the holder's own default for this field (finetune's epochs=4.0)
            else:
                continue  # the dataclass's default (a fresh one from its factory), or its error when missing
            (nested.setdefault(f.path, {}) if f.path else top)[f.name] = value
        for path in sorted(nested, key=len, reverse=True):  # innermost first
            holder = top
            for p in path[:-1]:
                holder = holder.setdefault(p, {})
            cls = self.nested_class(path)
            holder[path[-1]] = cls(**{**nested[path], **holder.get(path[-1], {})})
        return self.cls(**top)

    def nested_class(self, path: tuple[str, ...]) -> type:
        cls = self.cls
        for p in path:
            cls = typing.get_type_hints(cls)[p]
            if typing.get_args(cls) and type(None) in typing.get_args(cls):
                cls = next(a for a in typing.get_args(cls) if a is not type(None))
        return cls

    def mapping(self, f: Field, items: list[str] | None, args) -> Any:
        if f.dest in self.readers:
            return self.readers[f.dest](items)
        if f.dest != "task_options":
            return parse_kv(items, flag_name(self.flag_dest(f)))
        # the config's task options apply to its own task only: another task starts from its own defaults
        task = next((g for g in self.fields if g.dest == "task" and not g.path), None)
        other_task = (task is not None and task.default is not MISSING
                      and getattr(args, "task", task.default) != task.default)
        options = {} if other_task else dict(f.default)
        options.update(parse_kv(items, "--task-arg"))  # each KEY=VALUE overrides one option
        return options


def add_config_arguments(parser, cls, helps: dict[str, str] | None = None,
                         aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per field of the config dataclass ``cls`` (defaults shown in --help); ``aliases``: more
    flags for a field (``{"init": ("--model",)}``)."""
    ConfigFlags(cls, helps=helps or {}, aliases=aliases or {}).add_to(parser)


def config_from_args(cls, args):
    """The config dataclass ``cls`` built from flags made by :func:`add_config_arguments`."""
    return ConfigFlags(cls).config(args)
