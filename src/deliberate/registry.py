"""One registry class for everything chosen by name: tasks, backends, verifiers, search strategies, recipes.

Each kind keeps one :class:`Registry` (``TASKS`` in ``tasks/base.py``, ``BACKENDS`` in ``models/base.py``,
``VERIFIERS`` in ``rewards/base.py``, ``STRATEGIES`` in ``search/base.py``, ``RECIPES`` in ``cli/recipes.py``),
so every kind behaves the same:

* ``@REG.register("name")`` adds a factory: any callable (a class, a function, a strategy itself);
* every lookup first imports the kind's built-in modules (once) and the user's plug-ins
  (:func:`deliberate.plugins.load_plugins`: a broken plug-in stops it with the same one-line error
  for every kind);
* an unknown name is refused with the valid names and the closest one ("did you mean");
* ``create(name, **options)`` checks the option names against the factory (its signature, or the
  ``options`` it was registered with) before calling it, again with a "did you mean";
* ``names()`` and ``describe(name)`` (first docstring line, or an entry object's own ``help``, + options)
  feed the CLI listings.

A name is taken once. Registering a second factory under a taken name is refused, unless the
newcomer passes ``override=True`` (a plug-in deliberately replacing a built-in): then, as before this
registry existed, the later registration wins, and a built-in module imported after the override
does not take its name back. A module imported again (``importlib.reload``) replaces its own entry.

Names may take an argument after a colon, ``gym:chain_sum``: ``register("gym", argument="dataset")``
passes the text after the colon as the factory's ``dataset`` keyword.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.plugins import load_plugins


@dataclass(frozen=True)
class Entry:
    """One registered factory and what its registration said about it."""

    name: str
    factory: Callable[..., Any]
    #: keyword options it takes, when registered with a list; None: read them from its signature
    options: tuple[str, ...] | None = None
    #: the keyword that receives the text after ``name:`` in a spec (None: the name takes no argument)
    argument: str | None = None
    #: how listings show that argument (``gym:<name>``); defaults to ``argument``
    metavar: str | None = None
    override: bool = False

    @property
    def origin(self) -> str:
        """``module.qualname`` of the factory: which code registered it. An entry object that stands for
        other code (a recipe built around a plug-in's run function) names that code in its ``origin``:
        its own class would make every such entry look like the same code re-registered."""
        f = self.factory
        own = getattr(f, "origin", None)
        if isinstance(own, str) and own:
            return own
        return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


@dataclass(frozen=True)
class Description:
    """What a listing shows of one entry: its name, first docstring line and options."""

    name: str  # as listed, e.g. ``gym:<name>``
    summary: str
    options: tuple[str, ...]  # ``key=default``, or ``key`` when it has no default
    any_option: bool  # takes options beyond these (a ``**kwargs`` factory)


class Registry:
    """Factories of one kind, by name. ``kind`` ("task", "search strategy") and ``plural`` word the errors.

    ``builtins``: modules whose import registers the built-in entries, imported at the first lookup.
    ``positional``: how many leading arguments callers pass to every factory before the options (a
    verifier's text after ``kind:``; a strategy's ``problems, ctx``): not options, never listed.
    ``passed``: keywords the library itself passes to every factory (a verifier's ``task`` and ``seed``):
    always accepted, never listed.
    """

    def __init__(self, kind: str, plural: str | None = None, *, builtins: Sequence[str] = (),
                 positional: int = 0, passed: Sequence[str] = ()):
        self.kind, self.plural = kind, plural or kind + "s"
        self.builtins = tuple(builtins)
        self.positional, self.passed = positional, tuple(passed)
        self._entries: dict[str, Entry] = {}
        self._builtins_loaded = False

    # --- registration -----------------------------------------------------------------------
    def register(self, name: str, *, options: Sequence[str] | None = None, argument: str | None = None,
                 metavar: str | None = None, override: bool = False) -> Callable[[Callable], Callable]:
        """Decorator adding ``factory`` under ``name``; returns the factory unchanged.

        ``options``: the keyword options a ``**kwargs`` factory takes (anything else is refused with
        the list); None reads them from the signature. ``argument``: see the module docstring.
        ``override=True``: replace an entry of that name (see the module docstring)."""
        if not name or ":" in name:
            raise DeliberateError(f"bad {self.kind} name {name!r}: it must be non-empty and without ':'")

        def deco(factory: Callable) -> Callable:
            new = Entry(name, factory, None if options is None else tuple(options), argument, metavar, override)
            old = self._entries.get(name)
            if old is None or override or old.origin == new.origin:
                self._entries[name] = new
            elif not (old.override and getattr(factory, "__module__", None) in self.builtins):
                raise DeliberateError(
                    f"{self.kind} {name!r} is registered twice: by {old.origin} and by {new.origin} "
                    f"(a plug-in that means to replace it registers with override=True)")
            return factory

        return deco

    # --- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in modules (once) and the plug-ins not imported yet."""
        if not self._builtins_loaded:
            self._builtins_loaded = True  # before importing: a module that looks a name up must not re-enter
            # Imported here, not at the top of the module that holds the registry: each built-in
            # module imports that one (a cycle otherwise), and some pull torch (the tiny backend, the
            # learned verifiers: seconds to import) that `import deliberate.tasks` should not pay for.
            try:
                for module in self.builtins:
                    try:
                        importlib.import_module(module)
                    except ModuleNotFoundError as e:
                        if not e.name or e.name.split(".")[0] == "deliberate":
                            raise
                        # a third-party package this built-in needs is not installed: it is not offered
            except BaseException:
                self._builtins_loaded = False  # the next lookup tries again and fails the same way
                raise
        load_plugins()  # the user's own entries ($DELIBERATE_PLUGINS, entry points)

    # --- lookup -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name, as listings show it: plain names sorted, then the ``name:<argument>`` ones."""
        self.load()
        return [self._listed(e) for e in sorted(self._entries.values(), key=lambda e: (self._needs_arg(e), e.name))]

    def entry(self, spec: str) -> tuple[Entry, str | None]:
        """The entry ``spec`` names and the text after its colon (None without one); unknown names
        are refused with the valid ones and the closest match."""
        self.load()
        found = self._entries.get(spec)
        if found is not None:
            return found, None
        name, colon, text = spec.partition(":")
        found = self._entries.get(name) if colon else None
        if found is not None and found.argument is not None:
            return found, text
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" (did you mean {self._listed(self._entries[close[0]])!r}?)" if close else ""
        raise DeliberateError(f"unknown {self.kind} {spec!r}; valid {self.plural}: "
                              f"{', '.join(self.names()) or '(none)'}{hint}")

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name`` (a strategy registry's entries are the strategies)."""
        return self.entry(name)[0].factory

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names, as :meth:`names` lists them."""
        return iter(self.names())

    def check(self, spec: str, options: dict[str, Any]) -> Entry:
        """The entry of ``spec``, after checking that it takes every key of ``options`` (a typo gets a
        "did you mean"); checked against the signature before any call, so that a TypeError raised
        inside a factory stays a bug report rather than a "bad option"."""
        entry, _ = self.entry(spec)
        self._check(entry, options)
        return entry

    def create(self, spec: str, *args: Any, **options: Any) -> Any:
        """Call the factory ``spec`` names with ``args`` (the registry's ``positional`` ones) and
        ``options``, after :meth:`check`. A missing required option, or a plain ValueError raised by the
        factory's own checks of a value, becomes a one-line DeliberateError naming the entry."""
        entry, text = self.entry(spec)
        if text is not None:
            options = {**options, entry.argument: text}  # type: ignore[dict-item]
        self._check(entry, options)
        sig = signature(entry.factory)
        if sig is not None:
            try:
                sig.bind(*args, **options)
            except TypeError as e:  # e.g. "missing a required argument: 'dataset'"
                usage = f" ({self._listed(entry)})" if self._needs_arg(entry) else ""
                raise DeliberateError(f"bad options for {self.kind} {entry.name!r}: {e}{usage}") from None
        try:
            return entry.factory(*args, **options)
        except DeliberateError:
            raise
        except ValueError as e:  # the factory's own check of a value, raised as a plain ValueError
            raise DeliberateError(f"bad options for {self.kind} {entry.name!r}: {e}") from e

    def _check(self, entry: Entry, options: dict[str, Any]) -> None:
        valid = self._options(entry)
        if valid is None:
            return
        unknown = [k for k in options if k not in valid and k not in self.passed]
        if unknown:
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {hints[k][0]!r}?)" if hints[k] else "") for k in unknown)
            raise DeliberateError(f"bad options for {self.kind} {entry.name!r}: unknown option"
                                  f"{'s' if len(unknown) > 1 else ''} {said}; "
                                  f"its options: {', '.join(valid) or '(none)'}")

    def describe(self, name: str) -> Description:
        """First docstring line and options of ``name``, for listings."""
        entry, _ = self.entry(name)
        own = getattr(entry.factory, "help", None)  # an entry object with its own line (a recipe)
        doc = (own if isinstance(own, str) else getattr(entry.factory, "__doc__", None) or "").strip().splitlines()
        sig = signature(entry.factory)
        if entry.options is not None or sig is None:
            options = entry.options or ()
            return Description(self._listed(entry), doc[0] if doc else "", tuple(options), entry.options is None)
        params = list(sig.parameters.values())[self.positional:]
        hidden = set(self.passed) | ({entry.argument} if self._needs_arg(entry) else set())
        shown = tuple(p.name if p.default is p.empty else f"{p.name}={p.default}" for p in params
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in hidden)
        return Description(self._listed(entry), doc[0] if doc else "", shown,
                           any(p.kind is p.VAR_KEYWORD for p in params))

    # --- for tests: forget what a test registered ---------------------------------------------
    def snapshot(self) -> dict[str, Entry]:
        return dict(self._entries)

    def restore(self, snapshot: dict[str, Entry]) -> None:
        self._entries.clear()
        self._entries.update(snapshot)

    # --- helpers ------------------------------------------------------------------------------
    def _options(self, entry: Entry) -> list[str] | None:
        """The option names ``entry`` takes; None when it takes any (a ``**kwargs`` factory with no list)."""
        if entry.options is not None:
            return list(entry.options)
        sig = signature(entry.factory)
        if sig is None:
            return None
        params = list(sig.parameters.values())[self.positional:]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in self.passed]

    def _needs_arg(self, entry: Entry) -> bool:
        """Whether ``entry`` is only usable as ``name:<argument>`` (its argument has no default)."""
        if entry.argument is None:
            return False
        sig = signature(entry.factory)
        p = sig.parameters.get(entry.argument) if sig is not None else None
        return p is not None and p.default is p.empty

    def _listed(self, entry: Entry) -> str:
        return f"{entry.name}:<{entry.metavar or entry.argument}>" if self._needs_arg(entry) else entry.name


def signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    """``factory``'s signature, or None when it has none to read (some C callables): the call decides."""
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None
