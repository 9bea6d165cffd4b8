"""Plug-ins: a user's own module from $DELIBERATE_PLUGINS or an entry point, and a broken one's one-line error.
(The examples/ plug-ins themselves run in tests/test_examples.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from deliberate import plugins
from deliberate.cli import main_cli


def test_plugin_by_module_name_and_by_entry_point(tmp_path):
    """In fresh processes: a module on sys.path named in $DELIBERATE_PLUGINS, and an installed
    package's `deliberate.plugins` entry point (a dist-info folder on sys.path is what pip writes)."""
    (tmp_path / "const_verifier.py").write_text(textwrap.dedent("""
        from deliberate.rewards.base import Verifier, register_verifier

        class Const(Verifier):
            def score_batch(self, items):
                return [[0.25] * len(steps) for _, steps in items]

        @register_verifier("const", options=())
        def _const(arg, task=None, **_):
            return Const()
    """))
    probe = ("from deliberate.rewards.base import get_verifier, verifier_kinds; "
             "print('const' in verifier_kinds(), get_verifier('const').score(None, ['a', 'b']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop(plugins.ENV, None)

    def run(e):
        return subprocess.run([sys.executable, "-c", probe], env=e, capture_output=True, text=True, timeout=120,
                              check=False)

    p = run(env)
    assert p.returncode != 0 and "unknown verifier" in p.stderr  # not a plug-in yet
    p = run({**env, plugins.ENV: "const_verifier"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "[0.25,", "0.25]"]

    dist = tmp_path / "const_verifier-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: const-verifier\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[deliberate.plugins]\nconst = const_verifier\n")
    p = run(env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "[0.25,", "0.25]"]


def test_a_broken_plugin_stops_the_command_with_its_name(tmp_path, capsys, monkeypatch, clean_registries):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import deliberate\n\nraise RuntimeError('forgot to install numpy-foo')\n")
    monkeypatch.setenv(plugins.ENV, str(bad))
    assert main_cli(["tasks"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(bad) in err and "RuntimeError: forgot to install numpy-foo" in err and "bad_plugin.py:3" in err

    monkeypatch.setenv(plugins.ENV, str(tmp_path / "missing.py"))
    assert main_cli(["tasks"]) == 2
    err = capsys.readouterr().err
    assert "missing.py" in err and "does not exist" in err

    monkeypatch.setenv(plugins.ENV, "no_such_module_here")
    assert main_cli(["tasks"]) == 2
    assert "'no_such_module_here'" in capsys.readouterr().err
