"""Hostile programs against the isolated sandbox (candidate under bubblewrap, tests in a separate
checker): every one ends not-passed with the expected reason, and the host is unaffected: a canary
file outside untouched and nothing written next to it, no process of the run left, no connection
accepted by a listener on 127.0.0.1, none of the parent's secrets seen. Issue 32's holes are here
(the forged pass, the frame-reading solver, readline/sqlite3 file access, native code that forks,
pidfd-killing the grader, legitimate mkdir), with the attacks a careful attacker tries next."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import threading

import pytest

from deliberate.sandbox import Limits, Verdict, isolation_available, run_io, run_tests

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is normally present
    psutil = None

pytestmark = pytest.mark.skipif(not isolation_available()[0],
                                reason=f"no isolating sandbox here: {isolation_available()[1]}")

LIMITS = Limits(wall_s=4.0, memory_mb=256, output_bytes=200_000, file_bytes=2_000_000, tmpfs_bytes=8_000_000)
TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert abs(candidate(3) - 9) < 1e-9\n"
SECRET = "hunter2-deliberate-fake-secret"
FAILED_SYSCALL = "fail_exception"  # the model's code sees the refusal as an ordinary OSError

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

FRAME_READING_SOLVER = """import re, sys
def f(x):
    fr = sys._getframe()
    while fr is not None:
        for space in (fr.f_locals, fr.f_globals):
            for v in list(space.values()):
                text = v if isinstance(v, str) else v.get("tests", "") if isinstance(v, dict) else ""
                m = re.search(r"candidate\\(%d\\) == (\\d+)" % x, str(text))
                if m:
                    return int(m.group(1))
        fr = fr.f_back
    return None
"""

# (name, program, expected reason(s), text stdout must contain). {CANARY} is a file, {CANARY_DIR}
# its folder and {PORT} a listener on 127.0.0.1, all on the host; f is wrong or missing unless the
# attack is to make a correct-looking solution pass.
HOSTILE = [
    # --- issue 32's holes ---
    ("forged_pass_via_vault_frames", FORGED_PASS, "fail_exception", ""),
    ("frame_reading_solver", FRAME_READING_SOLVER, "fail_assertion", ""),
    ("readline_append_history_outside", "import readline\nreadline.add_history('pwned')\nreadline.append_history_file(1, '{CANARY}')\n", "fail_exception", ""),
    ("readline_read_history_outside", "import readline\nreadline.read_history_file('{CANARY}')\nprint(readline.get_history_item(1))\n", "fail_exception", ""),
    ("sqlite3_file_outside", "import sqlite3\nc = sqlite3.connect('{CANARY_DIR}/pwned.db')\nc.execute('create table t(x)')\nc.commit()\n", "fail_exception", ""),
    ("shelve_file_outside", "import shelve\nwith shelve.open('{CANARY_DIR}/pwned') as s:\n    s['x'] = 1\n", "fail_exception", ""),
    ("dbm_file_outside", "import dbm\nwith dbm.open('{CANARY_DIR}/pwned', 'c') as d:\n    d['x'] = '1'\n", "fail_exception", ""),
    ("pidfd_kill_grader", "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)\n", FAILED_SYSCALL, ""),
    ("kill_every_other_pid", "import os\nfor pid in range(1, 5000):\n    if pid != os.getpid():\n        try:\n            os.kill(pid, 9)\n        except OSError:\n            pass\ndef f(x):\n    return x + 1\n", "fail_assertion", ""),
    ("killpg_everything", "import os\nos.killpg(0, 9)\n", "crash", ""),
    # --- the next attacks ---
    ("read_parent_mem", "import os\nwith open('/proc/%d/mem' % os.getppid(), 'rb') as fh:\n    fh.seek(0x400000)\n    print(fh.read(16))\n", "fail_exception", ""),
    ("read_parent_environ", "import os\nprint(open('/proc/%d/environ' % os.getppid(), 'rb').read())\ndef f(x):\n    return x + 1\n", "fail_assertion|fail_exception", ""),
    ("ptrace_attach_parent", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('ptrace', libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())\ndef f(x):\n    return x + 1\n", "fail_assertion", "ptrace -1 1"),
    ("process_vm_readv_parent", "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('readv', libc.process_vm_readv(os.getppid(), 0, 0, 0, 0, 0), ctypes.get_errno())\ndef f(x):\n    return x + 1\n", "fail_assertion", "readv -1 1"),
    ("write_inherited_fds", "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'PASS 0000\\n' * 10)\n    except OSError:\n        pass\ndef f(x):\n    return x * x\n", "protocol_error", ""),
    ("ctypes_libc_system", "import ctypes\nlibc = ctypes.CDLL(None)\nprint('system', 'ran' if libc.system(b'touch {CANARY_DIR}/pwned') == 0 else 'refused')\ndef f(x):\n    return x + 1\n", "fail_assertion", "system refused"),
    ("ctypes_libc_fork", "import ctypes\nlibc = ctypes.CDLL(None)\nprint('fork', libc.fork())\ndef f(x):\n    return x + 1\n", "fail_assertion", "fork -1"),
    ("connect_host_listener", "import socket\nsocket.create_connection(('127.0.0.1', {PORT}), timeout=1).sendall(b'pwned')\n", "fail_exception", ""),
    ("connect_internet", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n", "fail_exception", ""),
    ("dns_lookup", "import socket\nsocket.getaddrinfo('example.com', 80)\n", "fail_exception", ""),
    ("fill_the_tmpfs", "i = 0\nwhile True:\n    with open('fill%d' % i, 'wb') as fh:\n        fh.write(b'z' * 1000000)\n    i += 1\n", "fail_exception", ""),
    ("ten_thousand_threads", "import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n", "fail_exception|memory", ""),
    ("mmap_bomb", "import mmap\nmaps = [mmap.mmap(-1, 1 << 28) for _ in range(64)]\n", "fail_exception|memory", ""),
    ("import_checker_by_name", "import deliberate.sandbox.checker as c\ndef f(x):\n    return x * x\n", "fail_exception", ""),
    ("import_checker_by_path", "import sys\nsys.path.insert(0, '/opt/deliberate-sandbox')\nimport checker\ndef f(x):\n    return x * x\n", "fail_exception", ""),
    ("always_equal_object", "class E:\n    def __eq__(self, o):\n        return True\n    def __sub__(self, o):\n        return 0\ndef f(x):\n    return E()\n", "non_data_return", ""),
    ("int_subclass_equal_to_all", "class I(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return I(0)\n", "non_data_return", ""),
    ("unshare_mount", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint('unshare', libc.unshare(0x20000), ctypes.get_errno())\ndef f(x):\n    return x + 1\n", "fail_assertion", "unshare -1 1"),
    # --- the classics ---
    ("fork_bomb", "import os\nwhile True:\n    os.fork()\n", FAILED_SYSCALL, ""),
    ("subprocess_sleep_left_behind", "import subprocess\nsubprocess.Popen(['sleep', '1000'])\ndef f(x):\n    return x * x\n", FAILED_SYSCALL, ""),
    ("os_system_background_child", "import os\nprint('system', 'ran' if os.system('sleep 1000 &') == 0 else 'refused')\ndef f(x):\n    return x + 1\n", "fail_assertion", "system refused"),
    ("multiprocessing_busy_child", "import multiprocessing\ndef spin():\n    while True:\n        pass\np = multiprocessing.Process(target=spin)\np.start()\ndef f(x):\n    return x * x\n", FAILED_SYSCALL, ""),
    ("memory_bomb_one_block", "x = bytearray(8 * 1024 ** 3)\n", "memory", ""),
    ("memory_bomb_growth", "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", "memory|timeout", ""),
    ("infinite_loop", "while True:\n    pass\n", "timeout", ""),
    ("sleep_forever", "import time\ntime.sleep(1000)\n", "timeout", ""),
    ("write_file_outside", "open('{CANARY_DIR}/pwned.txt', 'w').write('x')\n", "fail_exception", ""),
    ("overwrite_canary", "with open('{CANARY}', 'a') as fh:\n    fh.write('pwned')\n", "fail_exception", ""),
    ("delete_canary", "import os\nos.remove('{CANARY}')\n", "fail_exception", ""),
    ("write_system_dir", "open('/usr/deliberate-pwned', 'w').write('x')\n", "fail_exception", ""),
    ("print_env_secrets", "import os\nprint(dict(os.environ))\ndef f(x):\n    return x\n", "fail_assertion", ""),
    ("stdout_gigabytes", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stdout.flush()\n", "output_limit", ""),
    ("stderr_gigabytes", "import os\nwhile True:\n    os.write(2, b'y' * 65536)\n", "output_limit", ""),
    ("file_size_bomb", "with open('big.bin', 'wb') as fh:\n    while True:\n        fh.write(b'z' * 1000000)\n", "fail_exception", ""),
    ("sys_exit_zero_before_asserts", "import sys\nsys.exit(0)\n", "early_exit", ""),
    ("os_exit_zero", "import os\nos._exit(0)\n", "early_exit", ""),
    ("systemexit_in_finally", "def f(x):\n    try:\n        return x\n    finally:\n        raise SystemExit(0)\n", "early_exit", ""),
    ("forge_pass_line_on_reply_fd", "import os, sys\nos.write(int(sys.argv[2]), b'PASS ' + b'0' * 64 + b'\\n')\nos._exit(0)\n", "protocol_error", ""),
    ("close_all_fds", "import os\nos.closerange(3, 1000)\ndef f(x):\n    return x * x\n", "early_exit", ""),
    ("monkeypatch_builtin_abs", "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 4 if x == 2 else 0\n", "fail_assertion", ""),
    ("shadow_builtin_abs", "def abs(x):\n    return 0\ndef f(x):\n    return 4 if x == 2 else 0\n", "fail_assertion", ""),
    ("raise_rlimits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", "fail_exception", ""),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)\n", "crash", ""),
    ("recursion_bomb_c_stack", "import sys\nsys.setrecursionlimit(10 ** 8)\ndef r(n):  # recursion through a C builtin uses the C stack\n    return list(map(r, [n + 1]))\nr(0)\n", "crash", ""),
    ("syntax_error", "def f(x)\n    return x * x\n", "syntax_error", ""),
]


def leftovers(run_id: str) -> list[int]:
    """Live processes carrying this run's marker in their environment (the checker and bwrap)."""
    found = []
    marker = f"DELIBERATE_SANDBOX={run_id}".encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if marker in fh.read().split(b"\0"):
                        with open(f"/proc/{name}/stat", "rb") as st:
                            if st.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                                found.append(int(name))
            except OSError:
                continue
    return found


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A canary file, a listener on 127.0.0.1 and a secret in the environment, all on the host."""
    monkeypatch.setenv("DELIBERATE_FAKE_SECRET", SECRET)
    c = tmp_path / "canary.txt"
    c.write_text("canary")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield c, listener
    listener.close()


def check_host(v: Verdict, host) -> None:
    canary, listener = host
    assert v.run_id and leftovers(v.run_id) == [], "a process of the run survived the verdict"
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"], "a file was written outside"
    assert canary.read_text() == "canary", "the canary outside the sandbox was modified"
    assert SECRET not in v.stdout and SECRET not in v.stderr, "the candidate saw the parent's secret"
    with pytest.raises(BlockingIOError):
        listener.accept()


def fill(program: str, host) -> str:
    canary, listener = host
    return (program.replace("{CANARY_DIR}", str(canary.parent)).replace("{CANARY}", str(canary))
            .replace("{PORT}", str(listener.getsockname()[1])))


@pytest.mark.parametrize("name,program,reasons,printed", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile(name, program, reasons, printed, host):
    v = run_tests(fill(program, host), TESTS, "f", limits=LIMITS)
    assert not v.passed and v.reason != "pass"
    assert v.reason in reasons.split("|"), (v.reason, v.detail, v.stderr[-800:])
    assert v.detail, "a failure without a reason"
    assert printed in v.stdout, v.stdout[-500:]
    check_host(v, host)


def test_catalogue_is_big_enough():
    assert len(HOSTILE) >= 50
    assert len({h[0] for h in HOSTILE}) == len(HOSTILE)


NATIVE = r"""
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
__attribute__((constructor)) static void escape(void) {
    pid_t p = fork();
    if (p == 0) { setsid(); sleep(15); _exit(0); }
    printf("native fork %d\n", (int)p);
    fflush(stdout);
    if (system("touch {DIR}/pwned") != 0) { printf("native system refused\n"); fflush(stdout); }
}
"""


def test_native_extension_cannot_fork_or_escape(host, tmp_path_factory):
    """Issue 32: a .so written into the temp dir and loaded with importlib/ctypes forked, setsid'd
    and outlived the verdict. Its constructor now gets -1 from fork and system."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the native extension")
    build = tmp_path_factory.mktemp("native")
    (build / "x.c").write_text(NATIVE.replace("{DIR}", str(host[0].parent)))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(build / "x.so"), str(build / "x.c")], check=True)
    blob = (build / "x.so").read_bytes().hex()
    program = (f"import ctypes\nopen('x.so', 'wb').write(bytes.fromhex('{blob}'))\n"
               "ctypes.CDLL('./x.so')\ndef f(x):\n    return x * x\n")
    v = run_tests(program, TESTS, "f", limits=LIMITS)
    assert "native fork -1" in v.stdout and "native system refused" in v.stdout, v
    check_host(v, host)
    # a correct solution that merely tried stays correct: the refusals are the whole effect
    assert v.passed


def test_legitimate_file_work_in_its_tmpfs_passes(host):
    code = textwrap.dedent("""
        import os, shutil, tempfile, pathlib
        os.mkdir("d")
        with open("d/a.txt", "w") as fh:
            fh.write("ok")
        fd, path = tempfile.mkstemp()
        os.write(fd, b"data")
        os.close(fd)
        with tempfile.TemporaryDirectory() as t:
            pathlib.Path(t, "b").write_text("x")
        shutil.rmtree("d")
        assert open(path, "rb").read() == b"data"
        def f(x):
            return x * x
    """)
    v = run_tests(code, TESTS, "f", limits=LIMITS)
    assert v.passed, v
    check_host(v, host)


def test_honest_solution_passes_and_prints(host):
    v = run_tests("def f(x):\n    print('hello')\n    return x * x\n", TESTS, "f", limits=LIMITS)
    assert v.passed and v.reason == "pass" and "hello" in v.stdout, v
    assert "bwrap" in v.isolation
    check_host(v, host)


def test_tests_catch_the_candidates_exception_by_its_builtin_class():
    tests = "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        return\n    assert False\n"
    ok = run_tests("def f(x):\n    if x < 0:\n        raise ValueError('neg')\n    return x\n", tests, "f", limits=LIMITS)
    bad = run_tests("def f(x):\n    return x\n", tests, "f", limits=LIMITS)
    assert ok.passed and not bad.passed and bad.reason == "fail_assertion"


def test_plain_data_round_trips_and_mbpp_style_tests():
    code = "def g(a, b=0):\n    return [a, (b, {1, 2}), {'k': b'\\x00', 3: None}, float('inf')]\n"
    tests = "assert g(1, b=2) == [1, (2, {1, 2}), {'k': b'\\x00', 3: None}, float('inf')]\n"
    assert run_tests(code, tests, None, limits=LIMITS).passed
    assert run_tests(code, tests.replace("b=2", "b=3"), None, limits=LIMITS).reason == "fail_assertion"


def test_helpers_come_from_the_task_not_the_candidate():
    helpers = "def double(x):\n    return 2 * x\n\ndef f(x):\n    pass\n"
    tests = "def check(candidate):\n    assert candidate(3) == double(3)\n"
    cheat = "def double(x):\n    return None\ndef f(x):\n    return None\n"
    assert run_tests(cheat, tests, "f", helpers=helpers, limits=LIMITS).reason == "fail_assertion"
    assert run_tests("def f(x):\n    return 6 if x == 3 else 0\n", tests, "f", helpers=helpers, limits=LIMITS).passed


def test_stdout_programs_are_compared_by_the_checker(host):
    prog = "n = int(input())\nprint(n * n)\n"
    assert run_io(prog, [("3\n", "9\n"), ("4", "16")], limits=LIMITS).passed
    wrong = run_io(prog, [("3\n", "9\n"), ("5\n", "24\n")], limits=LIMITS)
    assert wrong.reason == "fail_assertion" and "case 1" in wrong.detail
    forged = run_io("import os\nos.write(1, b'9\\n')\nos._exit(0)\n", [("3\n", "9\n")], limits=LIMITS)
    assert not forged.passed and forged.reason == "early_exit"
    check_host(forged, host)


def test_parallel_runs_from_threads(host):
    jobs = [("def f(x):\n    return x * x\n", True), ("def f(x):\n    return x + 2\n", False),
            ("while True:\n    pass\n", False), ("import os\nos._exit(0)\n", False)] * 2
    out: dict[int, Verdict] = {}

    def work(i, code):
        out[i] = run_tests(code, TESTS, "f", limits=Limits(wall_s=3.0, memory_mb=512))

    threads = [threading.Thread(target=work, args=(i, c)) for i, (c, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (_, ok) in enumerate(jobs):
        assert out[i].passed is ok, (i, out[i])
        check_host(out[i], host)
