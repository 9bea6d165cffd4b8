"""Run model-written Python code against unit tests in an isolated child process.

``run_tests(code, tests, entry_point)`` returns a :class:`Verdict`. The verdict is decided by the
parent process alone; the child can only *ask* for a pass, and only the trusted harness code,
after the tests really ran to completion, can do so (see "the pass signal" below).

Layers (each one on its own is bypassable by some program; together they cover the hostile
catalogue in ``tests/test_sandbox_hostile.py``; docs/SANDBOX.md says what they do NOT cover):

* **process**: a fresh ``python -I -B`` child (isolated mode: no ``PYTHON*`` variables, no user
  site, no script dir on ``sys.path``), started with ``start_new_session=True`` so it leads its own
  session and process group; ``close_fds`` keeps only stdin/stdout/stderr and two pipes.
* **network**: when ``unshare --net`` works (root, or unprivileged user namespaces), the child runs
  in a fresh network namespace with no interfaces but a downed loopback. Always, an audit hook
  refuses every ``socket.*`` event (creating, connecting, resolving) and ``urllib.Request``.
* **files**: cwd is a fresh temporary directory, removed afterwards, also used as ``HOME`` and
  ``TMPDIR``. The audit hook refuses opening a file for writing, and removing, renaming, linking,
  chmod-ing, truncating or making directories, outside it (paths resolved with symlinks); reads are
  allowed only under the temp dir, the Python installation and ``sys.path``, and a few system data
  paths (``/usr/lib``, ``/usr/share``, ``/etc/localtime``, ``/dev/null``, ``/dev/urandom``), so
  ``/proc`` (other processes' environment and memory), ``/root`` and the rest of the disk are out
  of reach. ``RLIMIT_FSIZE`` caps the size of any file written.
* **environment**: only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``/``LC_ALL`` and a run marker are
  passed; nothing of the parent's environment (API keys, tokens) reaches the child.
* **resources**: ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL at the hard limit), ``RLIMIT_AS`` (memory),
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``, set in the child before any untrusted
  code runs (``resource.setrlimit`` is then refused, so even root cannot raise them back). The
  parent enforces the wall-clock limit and the output cap (stdout + stderr + result pipe) and on
  either kills the whole process group with SIGKILL.
* **processes**: ``RLIMIT_NPROC`` is not used: it counts every process of the uid and is not
  enforced for root. Instead the audit hook refuses ``os.fork``/``forkpty``/``posix_spawn``/
  ``exec*``/``system``/``subprocess.Popen`` and ``_posixsubprocess.fork_exec`` is replaced, so no
  child process can be made at all; the thread count is capped (``Limits.max_threads``). After
  every run the parent SIGKILLs the process group and then scans ``/proc`` for any process still
  in the child's session, kills it and waits until none is left (``Verdict.stray_killed``).
* **signals**: ``os.kill`` of any pid but its own and ``os.killpg`` are refused; installing a
  Python signal handler is refused (handlers could run inside the harness at any bytecode).

The pass signal. The parent writes a random per-run nonce into a pipe; before any untrusted code
runs the harness reads it into a "vault" (a suspended generator whose frame is unreachable: the
audit hook refuses ``gi_frame``/``cr_frame``/``ag_frame``, ``gc.get_referents``/``get_objects``/
``get_referrers``, ``sys._current_frames``, tracing/profiling, ``ctypes``, crafted code objects,
``marshal`` and ``/proc/self/mem``) and registers its own frame with it. The vault writes the
nonce to the result pipe only when it is handed that very frame while the frame is executing the
harness's pass line, which the harness reaches only when the solution and the tests ran to the end
without raising. A ``sys.exit(0)``, ``os._exit(0)``, printed "PASS", patched harness or forged
message therefore cannot produce a pass; the parent also refuses a pass whose result line does
not carry the nonce.

The tests run in a copy of the solution's namespace with builtins restored (the solution may have
patched the ``builtins`` module) and with solution-level names that shadow builtins removed;
a ``check`` function, when the tests define one, must be the one compiled from the tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

REASONS = (
    "pass",            # the tests ran to the end without raising (nonce-verified)
    "fail_assertion",  # an AssertionError from the tests
    "fail_exception",  # any other exception from the solution or the tests
    "timeout",         # wall-clock or CPU-time limit
    "memory",          # MemoryError / address-space limit
    "crash",           # killed by a signal (segfault, abort, ...)
    "forbidden",       # the solution tried something the sandbox refuses (or forged a pass)
    "output_limit",    # more than Limits.output_bytes of output
    "syntax_error",    # the solution (or the tests) do not compile
    "early_exit",      # exited (sys.exit, os._exit, ...) before the tests finished
    "sandbox_error",   # the sandbox itself could not run the program
)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run. ``cpu_s`` defaults to ``ceil(wall_s) + 1``."""

    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 1024
    output_bytes: int = 1_000_000
    file_bytes: int = 16_000_000
    max_threads: int = 4
    open_files: int = 256


@dataclass(frozen=True)
class Verdict:
    """The parent's decision. ``passed`` is True only for ``reason == "pass"``."""

    passed: bool
    reason: str
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    returncode: int | None = None
    violations: tuple[str, ...] = ()
    stray_killed: int = 0
    isolation: tuple[str, ...] = field(default_factory=tuple)
    #: the run's temp dir name (removed after the run) and the child's ``DELIBERATE_SANDBOX`` value
    run_id: str = ""


# --------------------------------------------------------------------------------------------
# The child harness. Runs as ``python -I -B -c _HARNESS NONCE_FD RESULT_FD`` in the temp dir.
# Everything the audit hook and the vault use is bound in closures before untrusted code runs,
# so patching modules or builtins cannot make them call the solution's code.
_HARNESS = r'''
import sys, posix, json, resource, gc, threading, _thread, signal, _signal, builtins, types
try:
    import _posixsubprocess
except ImportError:
    _posixsubprocess = None


def _vault(write, exit_, res_fd, type_, tuple_, str_, len_, base_exc, frame_t, harness_code, pass_line):
    """Holds the nonce. Its frame is unreachable (gi_frame is refused) and it runs no foreign code:
    every name it uses is an argument bound before untrusted code exists."""
    nonce = yield
    registered = None
    answer = None
    while True:
        msg = yield answer
        answer = False
        try:
            if type_(msg) is not tuple_ or len_(msg) != 2 or type_(msg[0]) is not str_:
                continue
            if type_(msg[1]) is not frame_t:
                continue
            if msg[0] == "register" and registered is None:
                registered = msg[1]
                answer = True
            elif msg[0] == "pass" and registered is not None and msg[1] is registered:
                if registered.f_code is harness_code and registered.f_lineno == pass_line:
                    write(res_fd, b"PASS " + nonce + b"\n")
                    exit_(0)
        except base_exc:
            answer = False


def _install(tmpdir, res_fd, max_threads):
    write, getpid, lstat, readlink, getcwd = posix.write, posix.getpid, posix.lstat, posix.readlink, posix.getcwd
    type_, str_, bytes_, int_, tuple_, list_, len_ = type, str, bytes, int, tuple, list, len
    os_open = posix.open
    perm = PermissionError
    start_thread = _thread.start_new_thread
    own_pid = getpid()
    W = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    S_IFMT, S_IFLNK = 0o170000, 0o120000
    state = {"threads": 0, "reports": 0}

    def norm(parts):
        out = []
        for p in parts:
            if p == "" or p == ".":
                continue
            if p == "..":
                if out:
                    out.pop()
                continue
            out.append(p)
        return out

    def resolve(path):
        """Absolute, symlink-free form of an exact str path (pure: no patchable code)."""
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        todo = norm(path.split("/"))
        done = []
        hops = 0
        while todo:
            name = todo.pop(0)
            cand = "/" + "/".join(done + [name])
            try:
                st = lstat(cand)
                islink = (st.st_mode & S_IFMT) == S_IFLNK
            except OSError:
                islink = False
            if islink and hops < 40:
                hops += 1
                target = readlink(cand)
                if target.startswith("/"):
                    done = []
                todo = norm(target.split("/")) + todo
                continue
            done.append(name)
            done = norm(done)
        return "/" + "/".join(done)

    def under(path, roots):
        for r in roots:
            if path == r or path.startswith(r if r.endswith("/") else r + "/"):
                return True
        return False

    tmp = resolve(tmpdir)
    read_roots = [tmp, "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share", "/usr/local/lib",
                  "/etc/localtime", "/etc/timezone", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]
    for p in [sys.prefix, sys.base_prefix, sys.exec_prefix] + list(sys.path):
        if type_(p) is str_ and p.startswith("/"):
            read_roots.append(resolve(p))
    read_roots = tuple_(read_roots)

    def as_path(p):
        if type_(p) is str_:
            return p
        if type_(p) is bytes_:
            return p.decode("utf-8", "surrogateescape")
        return None

    def deny(what):
        if state["reports"] < 8:
            state["reports"] += 1
            try:
                write(res_fd, b"V " + what.encode("utf-8", "replace")[:300] + b"\n")
            except OSError:
                pass
        raise perm("deliberate sandbox: " + what + " is not allowed")

    def check_write(event, p):
        s = as_path(p)
        if s is None:
            deny(event + " (non-str path)")
        r = resolve(s)
        if not under(r, (tmp,)):
            deny(event + " outside the sandbox: " + r)

    def check_read(event, p):
        if p is None:
            p = "."
        if type_(p) is int_:
            return
        s = as_path(p)
        if s is None:
            deny(event + " (non-str path)")
        r = resolve(s)
        if not under(r, read_roots):
            deny(event + " outside the allowed paths: " + r)

    deny_events = frozenset((
        "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp", "os.spawn", "os.exec", "os.system",
        "subprocess.Popen", "pty.spawn", "os.killpg", "sys.addaudithook", "sys.settrace", "sys.setprofile",
        "sys._current_frames", "sys._current_exceptions", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "code.__new__", "function.__new__", "marshal.load", "marshal.loads",
        "resource.setrlimit", "resource.prlimit", "urllib.Request", "webbrowser.open", "os.mknod",
        "os.mkfifo", "sys._settraceallthreads", "sys._setprofileallthreads",
    ))
    deny_imports = frozenset((
        "_posixsubprocess", "_thread", "_signal", "signal", "gc", "ctypes", "_ctypes", "_testcapi",
        "_testinternalcapi", "_testbuffer", "_testmultiphase", "_testsinglephase", "_xxsubinterpreters",
        "_xxinterpchannels", "_posixshmem", "resource", "_lsprof", "_tracemalloc", "tracemalloc",
    ))
    dir_fd_last = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime"))
    frame_attrs = frozenset(("gi_frame", "cr_frame", "ag_frame"))
    one_path_write = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.chflags",
                                "os.lchflags", "os.utime", "os.setxattr", "os.removexattr", "os.truncate"))

    def hook(event, args):
        if type_(event) is not str_:
            return
        if event in deny_events or event.startswith("socket.") or event.startswith("ctypes."):
            deny(event)
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if type_(path) is int_:
                return
            writing = False
            if type_(flags) is int_ and flags & W:
                writing = True
            if type_(mode) is str_:
                for ch in "wax+":
                    if ch in mode:
                        writing = True
            elif mode is not None:
                writing = True
            if writing:
                check_write("open for writing", path)
            else:
                check_read("open", path)
        elif event == "os.listdir" or event == "os.scandir":
            check_read(event, args[0])
        elif event in one_path_write:
            if event == "os.truncate" and type_(args[0]) is int_:
                return
            if event in dir_fd_last and args[-1] is not None:
                deny(event + " with dir_fd")
            check_write(event, args[0])
        elif event == "os.rename" or event == "os.link":
            if len_(args) > 2 and (args[2] is not None or args[3] is not None):
                deny(event + " with dir_fd")
            check_write(event, args[0])
            check_write(event, args[1])
        elif event == "os.symlink":
            if len_(args) > 2 and args[2] is not None:
                deny(event + " with dir_fd")
            check_write(event, args[1])
        elif event == "deliberate.sandbox.os_open":
            path, flags, mode, dir_fd, box = args
            if dir_fd is not None:
                deny("os.open with dir_fd")
            if type_(box) is list_:
                box.append(os_open(path, flags, mode))
        elif event == "os.kill":
            if not (type_(args[0]) is int_ and args[0] == own_pid):
                deny("os.kill of another process")
        elif event == "object.__getattr__":
            if type_(args[1]) is str_ and args[1] in frame_attrs:
                deny("frame access (" + args[1] + ")")
        elif event == "object.__setattr__":
            if type_(args[1]) is str_ and args[1] == "__code__":
                deny("replacing a function's __code__")
        elif event == "import":
            if type_(args[0]) is str_ and args[0] in deny_imports:
                deny("import of " + args[0])
        elif event == "deliberate.sandbox.blocked":
            deny(args[0] if type_(args[0]) is str_ else "blocked call")
        elif event == "deliberate.sandbox.thread":
            if state["threads"] >= max_threads:
                deny("more than " + str(max_threads) + " threads")
            state["threads"] += 1
            if type_(args[3]) is list_:
                args[3].append(start_thread(args[0], args[1], args[2]))

    return hook


def _blocked(name):
    audit = sys.audit
    def blocked(*a, **k):
        audit("deliberate.sandbox.blocked", name)
        raise PermissionError("deliberate sandbox: " + name + " is not allowed")
    blocked.__name__ = name
    return blocked


def _thread_starter():
    audit, list_ = sys.audit, list
    def start_new_thread(function, args, kwargs={}):
        box = list_()
        audit("deliberate.sandbox.thread", function, args, kwargs, box)
        return box[0]
    return start_new_thread


def _os_open_wrapper():
    audit, list_ = sys.audit, list
    def open(path, flags, mode=0o777, *, dir_fd=None):
        box = list_()
        audit("deliberate.sandbox.os_open", path, flags, mode, dir_fd, box)
        return box[0]
    return open


def _report(res_fd, status, detail):
    try:
        posix.write(res_fd, b"S " + json.dumps({"status": status, "detail": detail[-2000:]}).encode() + b"\n")
    except Exception:
        pass


def _describe(e):
    tb = e.__traceback__
    where = ""
    while tb is not None:
        where = " (line %d)" % tb.tb_lineno
        tb = tb.tb_next
    try:
        msg = str(e)
    except BaseException:
        msg = "?"
    return "%s: %s%s" % (type(e).__name__, msg[:500], where)


def _classify(e):
    if isinstance(e, AssertionError):
        return "fail_assertion"
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, (SystemExit, KeyboardInterrupt)):
        return "early_exit"
    if isinstance(e, PermissionError) and str(e).startswith("deliberate sandbox:"):
        return "forbidden"
    return "fail_exception"


def _run(nonce_fd, res_fd):
    # 1. read the nonce and the job before anything untrusted exists; remove the job file
    chunks = []
    while True:
        b = posix.read(nonce_fd, 4096)
        if not b:
            break
        chunks.append(b)
    posix.close(nonce_fd)
    with open("job.json", "rb") as fh:
        job = json.loads(fh.read())
    posix.unlink("job.json")
    lim = job["limits"]

    # 2. resource limits (hard = soft, except CPU: SIGXCPU at soft, SIGKILL one second later)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory"], lim["memory"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))

    # 3. compile (a syntax error is the solution's, reported as such)
    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        _report(res_fd, "syntax_error", _describe(e))
        return
    try:
        tests = compile(job["tests"], "<tests>", "exec")
    except (SyntaxError, ValueError) as e:
        _report(res_fd, "sandbox_error", "tests do not compile: " + _describe(e))
        return
    check_codes = [c for c in tests.co_consts if isinstance(c, types.CodeType) and c.co_name == "check"]
    entry = job["entry_point"]

    # 4. the vault takes the nonce; nothing else keeps it
    vault = _vault(posix.write, posix._exit, res_fd, type, tuple, str, len, BaseException, types.FrameType, _run.__code__, job["pass_line"])
    next(vault)
    vault.send(b"".join(chunks))
    del chunks, b

    # 5. neutralise process creation, threads and signal handlers, then install the hook
    if _posixsubprocess is not None:
        _posixsubprocess.fork_exec = _blocked("_posixsubprocess.fork_exec")
    starter = _thread_starter()
    _thread.start_new_thread = _thread.start_new = threading._start_new_thread = starter
    for name in ("signal", "setitimer", "alarm", "set_wakeup_fd", "pthread_sigmask", "siginterrupt"):
        if hasattr(_signal, name):
            setattr(_signal, name, _blocked("signal." + name))
            setattr(signal, name, getattr(_signal, name))
    gc.disable()
    gc.enable = lambda: None
    sys.dont_write_bytecode = True
    sys.pycache_prefix = posix.getcwd() + "/.nopycache"
    sys.addaudithook(_install(posix.getcwd(), res_fd, lim["max_threads"]))
    import os as _os
    posix.open = _os.open = _os_open_wrapper()

    # 6. run: solution, then tests in a clean namespace, then check(candidate)
    _bi = builtins.__dict__
    saved_builtins = dict(_bi)
    _exec, _dict, _list, _getframe, _send, _type, _fn_t = exec, dict, list, sys._getframe, vault.send, type, types.FunctionType
    _send(("register", _getframe()))
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        _exec(code, ns)
        _bi.clear()
        _bi.update(saved_builtins)
        tns = _dict(ns)
        for k in _list(tns):
            if k in saved_builtins and k not in ("__name__", "__builtins__", "__doc__"):
                del tns[k]
        tns["__builtins__"] = builtins
        _exec(tests, tns)
        if check_codes:
            chk = tns.get("check")
            if _type(chk) is not _fn_t or chk.__code__ is not check_codes[-1] or chk.__globals__ is not tns:
                raise AssertionError("the tests' check function was replaced")
            if entry:
                if entry not in tns:
                    raise NameError("entry point %r is not defined by the solution" % entry)
                chk(tns[entry])
    except BaseException as e:
        _report(res_fd, _classify(e), _describe(e))
        return
    try:
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        pass
    _send(("pass", _getframe()))  # PASS_LINE
    _report(res_fd, "sandbox_error", "pass line reached but the vault refused")


_run(int(sys.argv[1]), int(sys.argv[2]))
'''

_PASS_LINE = next(i for i, line in enumerate(_HARNESS.split("\n")) if line.rstrip().endswith("# PASS_LINE"))

_ISOLATION: tuple[str, ...] | None = None
_ISOLATION_LOCK = threading.Lock()


def _unshare_prefix() -> tuple[str, ...]:
    """``unshare --net`` (or ``unshare --user --map-root-user --net`` when not root) if it works here."""
    global _ISOLATION
    with _ISOLATION_LOCK:
        if _ISOLATION is None:
            _ISOLATION = ()
            exe = shutil.which("unshare")
            if exe and os.environ.get("DELIBERATE_SANDBOX_NO_UNSHARE") != "1":
                cands = [(exe, "--net", "--")] if os.geteuid() == 0 else []
                cands.append((exe, "--user", "--map-root-user", "--net", "--"))
                for c in cands:
                    try:
                        r = subprocess.run([*c, "true"], capture_output=True, timeout=10, check=False)
                    except (OSError, subprocess.SubprocessError):
                        continue
                    if r.returncode == 0:
                        _ISOLATION = c
                        break
        return _ISOLATION


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (its pid stays reserved until we wait)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _session_members(sid: int) -> list[int]:
    """Pids of live processes whose session id is ``sid`` (scans /proc)."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # fields[0] = state, [1] = ppid, [2] = pgrp, [3] = session
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != b"Z":
            out.append(int(name))
    return out


def _kill_session(pid: int) -> int:
    """SIGKILL the process group ``pid`` and anything left in session ``pid``; wait until none is."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    killed = 0
    deadline = time.monotonic() + 5.0
    while True:
        left = [p for p in _session_members(pid) if p != pid]
        if not left or time.monotonic() > deadline:
            return killed
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def run_tests(code: str, tests: str, entry_point: str | None = None, *, limits: Limits | None = None,
              python: str | None = None) -> Verdict:
    """Run ``code`` then ``tests`` (then ``check(<entry_point>)`` when the tests define ``check``).

    Thread-safe: each call has its own temp dir, pipes and process group.
    """
    lim = limits or Limits()
    cpu_s = int(lim.cpu_s if lim.cpu_s is not None else math.ceil(lim.wall_s) + 1)
    nonce = secrets.token_hex(32).encode()
    prefix = _unshare_prefix()
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="deliberate-sandbox-")
    proc = None
    fds: list[int] = []
    try:
        job = {"code": code, "tests": tests, "entry_point": entry_point, "pass_line": _PASS_LINE + 1,
               "limits": {"cpu_s": max(1, cpu_s), "memory": int(lim.memory_mb) * 1024 * 1024,
                          "file_bytes": int(lim.file_bytes), "open_files": int(lim.open_files),
                          "max_threads": int(lim.max_threads)}}
        with open(os.path.join(tmp, "job.json"), "w", encoding="utf-8") as fh:
            json.dump(job, fh)
        nonce_r, nonce_w = os.pipe()
        res_r, res_w = os.pipe()
        fds = [nonce_r, nonce_w, res_r, res_w]
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        fds.remove(nonce_w)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "DELIBERATE_SANDBOX": os.path.basename(tmp)}
        argv = [*prefix, python or sys.executable, "-I", "-B", "-c", _HARNESS, str(nonce_r), str(res_w)]
        try:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(nonce_r, res_w), close_fds=True,
                                    start_new_session=True)
        except OSError as e:
            return Verdict(False, "sandbox_error", f"cannot start the child: {e}", isolation=prefix)
        for fd in (nonce_r, res_w):
            os.close(fd)
            fds.remove(fd)
        return dataclasses.replace(_supervise(proc, res_r, lim, nonce, t0, prefix), run_id=os.path.basename(tmp))
    finally:
        if proc is not None:
            if proc.returncode is None:
                _kill_session(proc.pid)
                proc.wait()
            for s in (proc.stdout, proc.stderr):
                if s:
                    s.close()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _supervise(proc: subprocess.Popen, res_r: int, lim: Limits, nonce: bytes, t0: float,
               prefix: tuple[str, ...]) -> Verdict:
    sel = selectors.DefaultSelector()
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    sel.register(res_r, selectors.EVENT_READ, "result")
    deadline = t0 + lim.wall_s
    killed_for = None
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed_for is None and now > deadline:
                killed_for = "timeout"
                _kill_session(proc.pid)
            if exited_at is None and _exited(proc.pid):
                exited_at = now
                _kill_session(proc.pid)  # the leader is gone: nothing of its group may stay
            if exited_at is not None and now - exited_at > 2.0:
                break  # a pipe kept open by something we could not kill: stop waiting
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    continue
                bufs[key.data] += data
                if killed_for is None and sum(len(b) for b in bufs.values()) > lim.output_bytes:
                    killed_for = "output_limit"
                    _kill_session(proc.pid)
    finally:
        sel.close()
        try:
            os.close(res_r)
        except OSError:
            pass
    # kill what is left while the leader is still unreaped (so its pid cannot be reused), then reap
    stray = _kill_session(proc.pid)
    rc = proc.wait()
    wall = time.monotonic() - t0
    return _decide(bufs, rc, killed_for, nonce, lim, wall, stray, prefix)


def _decide(bufs, rc, killed_for, nonce, lim, wall, stray, prefix) -> Verdict:
    out = bytes(bufs["stdout"][:lim.output_bytes]).decode("utf-8", "replace")
    err = bytes(bufs["stderr"][:lim.output_bytes]).decode("utf-8", "replace")
    passed, forged, status, detail = False, False, None, ""
    violations: list[str] = []
    for line in bytes(bufs["result"]).split(b"\n"):
        if line.startswith(b"PASS "):
            if secrets.compare_digest(line[5:], nonce):
                passed = True
            else:
                forged = True
        elif line.startswith(b"V "):
            violations.append(line[2:].decode("utf-8", "replace"))
        elif line.startswith(b"S ") and status is None:
            try:
                msg = json.loads(line[2:])
                status, detail = str(msg["status"]), str(msg.get("detail", ""))
            except (ValueError, KeyError, TypeError):
                pass
    common = {"stdout": out, "stderr": err, "wall_s": wall, "returncode": rc, "violations": tuple(violations),
              "stray_killed": stray, "isolation": prefix}
    if passed:
        return Verdict(True, "pass", "", **common)
    if forged:
        return Verdict(False, "forbidden", "a pass line without the run's nonce (forged pass)", **common)
    if violations:
        return Verdict(False, "forbidden", "; ".join(violations), **common)
    if killed_for == "output_limit":
        return Verdict(False, "output_limit", f"more than {lim.output_bytes} bytes of output", **common)
    if killed_for == "timeout":
        return Verdict(False, "timeout", f"wall-clock limit {lim.wall_s:g}s", **common)
    if rc is not None and rc < 0 and -rc in (signal.SIGXCPU, signal.SIGKILL):
        return Verdict(False, "timeout", f"CPU-time limit (signal {signal.Signals(-rc).name})", **common)
    if status in REASONS and status != "pass":
        return Verdict(False, status, detail, **common)
    if "MemoryError" in err or "Cannot allocate memory" in err:
        return Verdict(False, "memory", err[-500:], **common)
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return Verdict(False, "crash", f"killed by {name}", **common)
    return Verdict(False, "early_exit", f"exited with status {rc} before the tests finished", **common)
