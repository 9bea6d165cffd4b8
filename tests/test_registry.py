"""The one registry behind tasks, backends, verifiers, strategies and recipes: unknown names, option checks,
plug-ins and duplicate names behave the same for every kind."""

from __future__ import annotations

import dataclasses
import functools
import sys
import textwrap
import types

import pytest

from deliberate import plugins
from deliberate.cli import main_cli
from deliberate.cli.recipes import RECIPES, get_recipe, recipe_names, register_recipe
from deliberate.errors import DeliberateError
from deliberate.models.base import BACKENDS, backend_names, get_backend
from deliberate.registry import Registry
from deliberate.rewards.base import VERIFIERS, get_verifier, verifier_kinds
from deliberate.search.base import STRATEGIES, get_strategy, strategy_names
from deliberate.tasks.base import TASKS, get_task, task_names

# (registry, its public lookup, a misspelt name, the name it should suggest, a name it must list)
KINDS = [
    (TASKS, get_task, "arth", "arith", "countdown"),
    (BACKENDS, get_backend, "tniy", "tiny", "openai"),
    (VERIFIERS, get_verifier, "orcale", "oracle", "prm"),
    (STRATEGIES, get_strategy, "bema", "beam", "majority"),
    (RECIPES, get_recipe, "rest_em", "rest-em", "grpo"),
]
NAMES = {"task": task_names, "backend": backend_names, "verifier": verifier_kinds, "search strategy": strategy_names,
         "recipe": recipe_names}

PLUGIN = '''
"""A plug-in registering one of each kind."""
from dataclasses import dataclass

from deliberate.cli.recipes import register_recipe
from deliberate.models.base import Backend, register_backend
from deliberate.rewards.oracle import OracleVerifier
from deliberate.rewards.base import register_verifier
from deliberate.search.base import register_strategy
from deliberate.tasks.arith import ArithTask
from deliberate.tasks.base import register_task
from deliberate.types import Completion


@register_task("plug_task")
class PlugTask(ArithTask):
    """Arithmetic, from a plug-in."""


@register_backend("plug_backend")
class PlugBackend(Backend):
    """Always answers the same, from a plug-in."""

    def __init__(self, reply: str = "Answer: 7"):
        self.reply = reply

    def generate(self, prompts, params):
        return [[Completion(self.reply, 1, 1, "stop") for _ in range(params.n)] for _ in prompts]


@register_verifier("plug_verifier", options=("level",))
def plug_verifier(arg, task=None, level=0.5, **_):
    """The oracle, from a plug-in."""
    v = OracleVerifier(task)
    v.arg, v.level = arg, level
    return v


@register_strategy("plug_strategy")
def plug_strategy(problems, ctx):
    """Gives up at once, from a plug-in."""
    return []


@dataclass(frozen=True)
class PlugConfig:
    steps: int = 1
    out: str = "runs/plug"


@register_recipe("plug_recipe", config=PlugConfig)
def plug_recipe(cfg):
    """Counts its steps, from a plug-in."""
    return f"ran {cfg.steps} steps"
'''


@pytest.mark.parametrize("registry,lookup,typo,suggested,listed", KINDS, ids=[k[0].kind for k in KINDS])
def test_an_unknown_name_lists_the_valid_ones_and_the_closest(registry, lookup, typo, suggested, listed):
    with pytest.raises(DeliberateError) as e:
        lookup(typo)
    msg = str(e.value)
    assert msg.startswith(f"unknown {registry.kind} {typo!r}; valid {registry.plural}: ")
    assert msg.endswith(f" (did you mean {suggested!r}?)")
    valid = msg.split(f"valid {registry.plural}: ")[1].split(" (did you mean")[0].split(", ")
    assert valid == NAMES[registry.kind]() == registry.names() and listed in valid and typo not in valid
    with pytest.raises(DeliberateError) as e:
        lookup("zzzzzz")
    assert "did you mean" not in str(e.value)  # nothing close: no guess


def test_gym_is_listed_with_its_argument_and_needs_it():
    assert task_names()[-1] == "gym:<name>" and "gym" not in task_names()
    with pytest.raises(DeliberateError, match=r"bad options for task 'gym': missing a required argument: "
                                              r"'dataset' \(gym:<name>\)"):
        get_task("gym")
    with pytest.raises(DeliberateError, match=r"unknown task 'arith:x'.*\(did you mean 'arith'\?\)"):
        get_task("arith:x")  # arith takes no argument after a colon


@pytest.mark.parametrize("build,message", [
    (lambda: get_task("arith", max_opz=3, min_opz=1),
     "bad options for task 'arith': unknown options 'max_opz' (did you mean 'max_ops'?), 'min_opz' (did you mean "
     "'min_ops'?); its options: min_ops, max_ops, max_operand"),
    (lambda: get_backend("tiny", pth="x"),
     "bad options for backend 'tiny': unknown option 'pth' (did you mean 'path'?); its options: path, model, "),
    (lambda: get_verifier("prm:x", batchsize=2),
     "bad options for verifier 'prm': unknown option 'batchsize' (did you mean 'batch_size'?); its options: "
     "batch_size, device"),
    (lambda: get_verifier("oracle", task=None, seed=3, device="cpu"),  # task and seed are always accepted
     "bad options for verifier 'oracle': unknown option 'device'; its options: (none)"),
])
def test_a_bad_option_name_is_refused_before_the_factory_runs(build, message):
    with pytest.raises(DeliberateError) as e:
        build()
    assert str(e.value).startswith(message)


def test_create_checks_options_and_turns_value_errors_into_one_line():
    reg = Registry("widget")
    made = []

    @reg.register("plain")
    def plain(size: int, colour: str = "red"):
        """A plain widget.

        More text that listings do not show."""
        if size < 0:
            raise ValueError(f"size must be >= 0 (got {size})")
        made.append((size, colour))
        return size

    assert reg.create("plain", size=2) == 2 and made == [(2, "red")]
    with pytest.raises(DeliberateError, match="bad options for widget 'plain': missing a required argument: 'size'"):
        reg.create("plain", colour="blue")
    with pytest.raises(DeliberateError, match="unknown option 'color' \\(did you mean 'colour'\\?\\)"):
        reg.create("plain", size=1, color="blue")
    with pytest.raises(DeliberateError, match="bad options for widget 'plain': size must be >= 0 \\(got -1\\)"):
        reg.create("plain", size=-1)
    assert made == [(2, "red")]  # refused options never reached the factory
    d = reg.describe("plain")
    assert (d.name, d.summary, d.options, d.any_option) == ("plain", "A plain widget.", ("size", "colour=red"), False)


def test_any_callable_is_a_factory_and_names_may_take_an_argument():
    reg = Registry("recipe", positional=1, passed=("seed",))

    class Sized:
        """Callable objects work too."""

        def __call__(self, data, steps: int = 1, seed: int = 0):
            return ("sized", data, steps, seed)

    def load(data, path, seed=0):
        return ("load", data, path, seed)

    reg.register("sized")(Sized())
    reg.register("load", argument="path", metavar="FILE")(functools.partial(load))
    reg.register("open")(lambda data, **kw: ("open", data, kw))

    assert reg.names() == ["open", "sized", "load:<FILE>"]
    assert reg.create("sized", "d", steps=3, seed=1) == ("sized", "d", 3, 1)
    assert reg.create("load:a/b.txt", "d") == ("load", "d", "a/b.txt", 0)
    assert reg.create("open", "d", anything=1) == ("open", "d", {"anything": 1})  # **kwargs: not checked
    assert reg.describe("sized").options == ("steps=1",)  # the positional data and the passed seed are not options
    assert reg.describe("load:<FILE>").options == ()
    assert reg.describe("open").any_option
    with pytest.raises(DeliberateError, match="unknown option 'step' \\(did you mean 'steps'\\?\\)"):
        reg.create("sized", "d", step=3)
    with pytest.raises(DeliberateError, match=r"missing a required argument: 'path' \(load:<FILE>\)"):
        reg.create("load", "d")
    with pytest.raises(DeliberateError, match="bad recipe name"):
        reg.register("a:b")


@pytest.mark.parametrize("registry,lookup,name,summary", [
    (TASKS, lambda: get_task("plug_task", max_ops=2), "plug_task", "Arithmetic, from a plug-in."),
    (BACKENDS, lambda: get_backend("plug_backend", reply="hi"), "plug_backend",
     "Always answers the same, from a plug-in."),
    (VERIFIERS, lambda: get_verifier("plug_verifier:x", task=get_task("arith"), level=0.9), "plug_verifier",
     "The oracle, from a plug-in."),
    (STRATEGIES, lambda: get_strategy("plug_strategy"), "plug_strategy", "Gives up at once, from a plug-in."),
    (RECIPES, lambda: get_recipe("plug_recipe"), "plug_recipe", "Counts its steps, from a plug-in."),
], ids=["task", "backend", "verifier", "search strategy", "recipe"])
def test_a_plugin_from_the_environment_registers_each_kind(registry, lookup, name, summary, tmp_path, monkeypatch,
                                                           capsys, clean_registries):
    monkeypatch.delenv(plugins.ENV, raising=False)
    with pytest.raises(DeliberateError, match=f"unknown {registry.kind} {name!r}"):
        lookup()
    (tmp_path / "plug_all.py").write_text(PLUGIN)
    monkeypatch.setenv(plugins.ENV, str(tmp_path / "plug_all.py"))
    made = lookup()  # the lookup itself imports the plug-in
    assert name in registry.names() and registry.describe(name).summary == summary
    if registry is TASKS:
        assert made.problems("test", 2) == get_task("arith", max_ops=2).problems("test", 2)
    elif registry is BACKENDS:
        assert made.reply == "hi"
    elif registry is VERIFIERS:
        assert (made.arg, made.level) == ("x", 0.9) and registry.describe(name).options == ("level",)
        with pytest.raises(DeliberateError, match="unknown option 'levl' \\(did you mean 'level'\\?\\)"):
            get_verifier("plug_verifier", levl=1)
    elif registry is STRATEGIES:
        assert made.run(["p"], None) == []  # get_strategy gives a Strategy; a plain function is wrapped
    else:  # `deliberate train plug_recipe`: its config's fields are its flags; config.yaml reruns it
        assert made.help == summary
        out = tmp_path / "run"
        assert main_cli(["train", "plug_recipe", "--steps", "3", "--out", str(out)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == "ran 3 steps"
        assert main_cli(["train", "plug_recipe", "--config", str(out / "config.yaml")]) == 0
        assert capsys.readouterr().out.splitlines()[0] == "ran 3 steps"


def test_a_broken_plugin_stops_every_kind_with_the_same_line(tmp_path, monkeypatch, clean_registries):
    bad = tmp_path / "broken_plug.py"
    bad.write_text("import deliberate\n\nraise RuntimeError('no such thing')\n")
    monkeypatch.setenv(plugins.ENV, str(bad))
    said = set()
    for lookup in (task_names, backend_names, verifier_kinds, strategy_names, recipe_names, lambda: get_task("arith"),
                   lambda: get_backend("tiny"), lambda: get_verifier("oracle"), lambda: get_strategy("beam"),
                   lambda: get_recipe("sft")):
        with pytest.raises(DeliberateError) as e:
            lookup()
        said.add(str(e.value))
    assert len(said) == 1
    assert f"plug-in {str(bad)!r}" in said.pop()


def test_a_taken_name_is_refused_unless_the_newcomer_overrides():
    reg = Registry("widget")

    @reg.register("w")
    def first():
        return 1

    def second():
        return 2

    with pytest.raises(DeliberateError, match=r"widget 'w' is registered twice: by .*first and by .*second "
                                              r"\(a plug-in that means to replace it registers with override=True\)"):
        reg.register("w")(second)
    assert reg.create("w") == 1
    reg.register("w", override=True)(second)
    assert reg.create("w") == 2  # the later registration wins, as before the registry refused duplicates

    for i in range(2):  # the same function defined again (a module imported twice): it replaces itself
        @reg.register("again")
        def again(i=i):
            return i
    assert reg.create("again") == 1


def test_a_builtin_imported_after_an_override_leaves_it_in_place(tmp_path, monkeypatch):
    home = types.ModuleType("widget_home")
    home.WIDGETS = Registry("widget", builtins=["widget_builtin", "widget_optional"])
    monkeypatch.setitem(sys.modules, "widget_home", home)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "widget_builtin.py").write_text(textwrap.dedent('''
        from widget_home import WIDGETS

        @WIDGETS.register("w")
        def builtin_w():
            return "built-in"

        @WIDGETS.register("v")
        def builtin_v():
            return "built-in"
    '''))
    (tmp_path / "widget_optional.py").write_text("import no_such_optional_package_here\n")
    for name in ("widget_builtin", "widget_optional"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    @home.WIDGETS.register("w", override=True)  # a plug-in imported before anything looked a widget up
    def plugin_w():
        return "plug-in"

    assert home.WIDGETS.names() == ["v", "w"]  # the built-in with a missing dependency is simply not offered
    assert home.WIDGETS.create("w") == "plug-in" and home.WIDGETS.create("v") == "built-in"
    sys.modules.pop("widget_builtin")


def test_a_builtin_that_fails_on_its_own_code_is_not_hidden(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "widget_broken.py").write_text("import deliberate.no_such_module\n")
    reg = Registry("widget", builtins=["widget_broken"])
    with pytest.raises(ModuleNotFoundError, match="deliberate.no_such_module"):
        reg.names()


def test_a_recipe_name_is_taken_once_and_typos_get_the_registrys_error(tmp_path, capsys, clean_registries):
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        out: str = str(tmp_path)

    def mine(cfg):
        """Mine."""

    with pytest.raises(DeliberateError, match=r"recipe 'sft' is registered twice: by deliberate\.cli\.train\.sft\.main "
                                              r"and by test_registry\..*mine \(a plug-in that means to replace it"):
        register_recipe("sft", config=Cfg)(mine)
    register_recipe("sft", config=Cfg, override=True)(mine)
    assert get_recipe("sft").help == "Mine." and RECIPES.describe("sft").summary == "Mine."
    with pytest.raises(DeliberateError, match="config must be a dataclass with an `out` field"):
        register_recipe("no_out", config=dict)
    # the CLI refuses an unknown recipe with the same words as every registry, before argparse sees it
    assert main_cli(["train", "rest_em", "--k", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deliberate: error: unknown recipe 'rest_em'; valid recipes: ")
    assert err.rstrip().endswith("(did you mean 'rest-em'?)") and err.count("\n") == 1
