"""Hostile programs against the weaker in-process runner (``run_tests_unsafe_local``, used only with
``--task-arg unsafe_local_sandbox=true``): each must end not-passed with the expected reason, leave no
process behind, write nothing outside its temp dir and never see the parent's secrets. The programs
that beat it (issue 32) are in tests/test_sandbox_hostile.py, against the isolated runner; one of
them is shown passing here, so the weakness docs/SANDBOX.md describes stays measured."""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading

import pytest

from deliberate.sandbox import Limits, Verdict
from deliberate.sandbox import run_tests_unsafe_local as run_tests

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is normally present
    psutil = None

LIMITS = Limits(wall_s=2.5, memory_mb=512, output_bytes=200_000, file_bytes=2_000_000)
TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert abs(candidate(3) - 9) < 1e-9\n"
SECRET = "hunter2-deliberate-fake-secret"

# (name, program, expected reason). {CANARY} is a file and {CANARY_DIR} its folder, both outside
# the sandbox; f is wrong (or missing) unless the attack is meant to "pass" a correct solution.
HOSTILE = [
    ("fork_bomb", "import os\nwhile True:\n    os.fork()\n", "forbidden"),
    ("fork_bomb_swallowing_errors", "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n", "forbidden"),
    ("subprocess_sleep_left_behind", "import subprocess\nsubprocess.Popen(['sleep', '1000'])\ndef f(x):\n    return x * x\n", "forbidden"),
    ("os_system_background_child", "import os\nos.system('sleep 1000 &')\ndef f(x):\n    return x * x\n", "forbidden"),
    ("posixsubprocess_fork_exec_direct", "import _posixsubprocess\n_posixsubprocess.fork_exec(['/bin/sleep', '1000'], [b'/bin/sleep'], True, (), None, None, -1, -1, -1, -1, -1, -1, -1, -1, False, False, None, None, None, -1, None, False)\n", "forbidden"),
    ("multiprocessing_busy_child", "import multiprocessing\ndef spin():\n    while True:\n        pass\np = multiprocessing.Process(target=spin)\np.start()\ndef f(x):\n    return x * x\n", "forbidden"),
    ("posix_spawn", "import os\nos.posix_spawn('/bin/sleep', ['sleep', '1000'], {})\n", "forbidden"),
    ("memory_bomb_one_block", "x = bytearray(8 * 1024 ** 3)\n", "memory"),
    ("memory_bomb_growth", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", "memory"),
    ("infinite_loop", "while True:\n    pass\n", "timeout"),
    ("sleep_forever", "import time\ntime.sleep(1000)\n", "timeout"),
    ("socket_connect", "import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))\n", "forbidden"),
    ("http_urllib", "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1).read()\n", "forbidden"),
    ("dns_lookup", "import socket\nsocket.getaddrinfo('example.com', 80)\n", "forbidden"),
    ("write_file_outside", "open('{CANARY_DIR}/pwned.txt', 'w').write('x')\n", "forbidden"),
    ("overwrite_canary", "with open('{CANARY}', 'a') as fh:\n    fh.write('pwned')\n", "forbidden"),
    ("delete_canary", "import os\nos.remove('{CANARY}')\n", "forbidden"),
    ("rename_canary", "import os\nos.rename('{CANARY}', 'stolen.txt')\n", "forbidden"),
    ("symlink_then_write", "import os\nos.symlink('{CANARY}', 'link')\nopen('link', 'w').write('pwned')\n", "forbidden"),
    ("chdir_then_write", "import os\nos.chdir('{CANARY_DIR}')\nopen('pwned.txt', 'w').write('x')\n", "forbidden"),
    ("shutil_rmtree_outside", "import shutil\nshutil.rmtree('{CANARY_DIR}')\n", "forbidden"),
    ("os_open_dir_fd_escape", "import os\nd = os.open('.', os.O_RDONLY)\nos.open('{CANARY_DIR}/pwned.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d)\n", "forbidden"),
    ("write_etc", "open('/etc/deliberate-pwned', 'w').write('x')\n", "forbidden"),
    ("read_file_outside", "print(open('{CANARY}').read())\n", "forbidden"),
    ("read_parent_environ", "import os\nprint(open('/proc/%d/environ' % os.getppid(), 'rb').read())\n", "forbidden"),
    ("read_root_home", "import os\nprint(os.listdir('/root'))\n", "forbidden"),
    ("print_env_secrets", "import os\nprint(dict(os.environ))\nprint(open(os.path.expanduser('~/.bashrc')).read() if os.path.exists(os.path.expanduser('~/.bashrc')) else 'no home file')\ndef f(x):\n    return x\n", "fail_assertion"),
    ("kill_parent", "import os\nos.kill(os.getppid(), 0)\n", "forbidden"),
    ("killpg", "import os\nos.killpg(0, 9)\n", "forbidden"),
    ("signal_handler_alarm", "import signal\nsignal.signal(signal.SIGALRM, lambda *a: None)\nsignal.alarm(1)\n", "forbidden"),
    ("stdout_gigabytes", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "output_limit"),
    ("stderr_gigabytes", "import os\nwhile True:\n    os.write(2, b'y' * 65536)\n", "output_limit"),
    ("file_size_bomb", "with open('big.bin', 'wb') as fh:\n    while True:\n        fh.write(b'z' * 1000000)\n", "fail_exception"),
    ("sys_exit_zero_before_asserts", "import sys\nsys.exit(0)\n", "early_exit"),
    ("os_exit_zero", "import os\nos._exit(0)\n", "early_exit"),
    ("print_pass_and_exit", "print('PASS')\nprint('ok: all tests passed')\nimport sys\nsys.exit(0)\n", "early_exit"),
    ("systemexit_in_finally", "def f(x):\n    try:\n        return x\n    finally:\n        raise SystemExit(0)\n", "early_exit"),
    ("forge_pass_line_on_result_fd", "import os, sys\nos.write(int(sys.argv[2]), b'PASS ' + b'0' * 64 + b'\\n')\nos._exit(0)\n", "forbidden"),
    ("close_nonce_mechanism_fds", "import os\nos.closerange(3, 1000)\ndef f(x):\n    return x * x\n", "early_exit"),
    ("monkeypatch_harness_module", "import __main__\n__main__._report = lambda *a: None\n__main__._classify = lambda e: 'pass'\ndef f(x):\n    return x\n", "early_exit"),
    ("monkeypatch_assertionerror", "import builtins\nbuiltins.AssertionError = type('Fake', (Exception,), {{}})\ndef f(x):\n    return x\n", "fail_assertion"),
    ("monkeypatch_builtin_abs", "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 4 if x == 2 else 0\n", "fail_assertion"),
    ("shadow_builtin_abs", "def abs(x):\n    return 0\ndef f(x):\n    return 4 if x == 2 else 0\n", "fail_assertion"),
    ("replace_check_code", "import sys\ndef f(x):\n    sys._getframe(1).f_globals['check'].__code__ = (lambda c: None).__code__\n    return 0\n", "forbidden"),
    ("walk_frames_to_vault", "import sys\nfr = sys._getframe()\nwhile 'vault' not in fr.f_locals:\n    fr = fr.f_back\nv = fr.f_locals['vault']\nprint(v.send(('pass', fr)))\nprint(v.gi_frame.f_locals)\n", "forbidden"),
    ("gc_scan_for_nonce", "import gc\nprint([o for o in gc.get_objects() if isinstance(o, bytes) and len(o) == 64])\n", "forbidden"),
    ("read_own_memory", "print(open('/proc/self/mem', 'rb').read(10))\n", "forbidden"),
    ("craft_code_object", "import marshal\nmarshal.loads(b'\\xe3')\n", "forbidden"),
    ("trace_other_frames", "import sys\nsys.settrace(lambda *a: None)\n", "forbidden"),
    ("raise_rlimits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", "forbidden"),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)\n", "forbidden"),
    ("faulthandler_segfault", "import faulthandler\nfaulthandler._sigsegv()\n", "crash"),
    ("self_sigkill", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "crash"),
    ("recursion_bomb_c_stack", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef r(n):  # recursion through a C builtin uses the C stack\n    return list(map(r, [n + 1]))\nr(0)\n", "crash"),
    ("recursion_error", "def r(n):\n    return r(n + 1)\nr(0)\n", "fail_exception"),
    ("threading_bomb", "import threading\ndef spin():\n    while True:\n        pass\nwhile True:\n    threading.Thread(target=spin, daemon=True).start()\n", "forbidden"),
    ("syntax_error", "def f(x)\n    return x * x\n", "syntax_error"),
]


def _leftovers(run_id: str) -> list[int]:
    """Live processes carrying this run's marker in their environment (psutil, else /proc)."""
    found = []
    if psutil is not None:
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("DELIBERATE_SANDBOX") == run_id and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return found
    marker = f"DELIBERATE_SANDBOX={run_id}".encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if marker in fh.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
    return found


@pytest.fixture
def canary(tmp_path, monkeypatch):
    monkeypatch.setenv("DELIBERATE_FAKE_SECRET", SECRET)
    c = tmp_path / "canary.txt"
    c.write_text("canary")
    return c


def _check_clean(v: Verdict, canary) -> None:
    assert v.run_id and not os.path.exists(os.path.join(tempfile.gettempdir(), v.run_id)), "temp dir left behind"
    assert _leftovers(v.run_id) == [], "a sandboxed process survived the verdict"
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"], "a file was written outside"
    assert canary.read_text() == "canary", "the canary outside the sandbox was modified"
    assert SECRET not in v.stdout and SECRET not in v.stderr, "the child saw the parent's secret"


@pytest.mark.parametrize("name,program,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile(name, program, reason, canary):
    code = program.replace("{CANARY_DIR}", str(canary.parent)).replace("{CANARY}", str(canary))
    code = code.replace("{{", "{").replace("}}", "}")
    v = run_tests(code, TESTS, "f", limits=LIMITS)
    assert not v.passed
    assert v.reason == reason, (v.reason, v.detail, v.stderr[-800:])
    _check_clean(v, canary)


def test_catalogue_is_big_enough():
    assert len(HOSTILE) >= 25
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE)


def test_honest_solution_passes_and_prints(canary):
    v = run_tests("def f(x):\n    print('hello')\n    return x * x\n", TESTS, "f", limits=LIMITS)
    assert v.passed and v.reason == "pass", v
    assert "hello" in v.stdout
    _check_clean(v, canary)


def test_correct_solution_that_uses_stdlib_passes(canary):
    code = textwrap.dedent("""
        import collections, functools, heapq, itertools, json, math, re
        from typing import List, TypeVar
        T = TypeVar("T")
        P = collections.namedtuple("P", "a b")
        with open("scratch.txt", "w") as fh:   # writing inside the sandbox is fine
            fh.write("ok")
        def f(x: int) -> int:
            return int(math.pow(x, 2))
    """)
    v = run_tests(code, TESTS, "f", limits=LIMITS)
    assert v.passed, v
    _check_clean(v, canary)


def test_parallel_runs_from_threads(canary):
    jobs = [("def f(x):\n    return x * x\n", True), ("def f(x):\n    return x + 2\n", False),
            ("while True:\n    pass\n", False), ("import os\nos._exit(0)\n", False)] * 3
    out: dict[int, Verdict] = {}

    def work(i, code):
        out[i] = run_tests(code, TESTS, "f", limits=Limits(wall_s=2.0, memory_mb=512))

    threads = [threading.Thread(target=work, args=(i, c)) for i, (c, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (_, ok) in enumerate(jobs):
        assert out[i].passed is ok, (i, out[i])
        _check_clean(out[i], canary)


FORGED_PASS = """import sys, os
fr = sys._getframe(1)
v = fr.f_locals["vault"]
try:
    v.throw(ValueError)
except ValueError as e:
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    loc = tb.tb_frame.f_locals
    os.write(loc["res_fd"], b"PASS " + loc["nonce"] + b"\\n")
    os._exit(0)
"""


def test_the_forged_pass_of_issue_32_beats_this_runner():
    """Why this runner is opt-in only: a program with no f at all is graded a pass."""
    v = run_tests(FORGED_PASS, TESTS, "f", limits=LIMITS)
    assert v.passed
