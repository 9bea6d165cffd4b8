"""The weaker, in-process runner: solution and tests in ONE child guarded by an audit hook.

Used only with ``--task-arg unsafe_local_sandbox=true`` (where bubblewrap cannot run): issue 32
lists programs that beat it (frame walking to the nonce vault, reading the tests through
``sys._getframe``, file access via ``readline``/``sqlite3``, native code), which the isolated runner
(:mod:`deliberate.sandbox.runner`) stops by construction. docs/SANDBOX.md compares the two.

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

from deliberate.sandbox.unsafe_harness import HARNESS, PASS_LINE
from deliberate.sandbox.verdict import REASONS, Limits, Verdict

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
        job = {"code": code, "tests": tests, "entry_point": entry_point, "pass_line": PASS_LINE + 1,
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
        argv = [*prefix, python or sys.executable, "-I", "-B", "-c", HARNESS, str(nonce_r), str(res_w)]
        try:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(nonce_r, res_w), close_fds=True,
                                    start_new_session=True)
        except OSError as e:
            return Verdict(False, "sandbox_error", f"cannot start the child: {e}", isolation=prefix)
        for fd in (nonce_r, res_w):
            os.close(fd)
            fds.remove(fd)
        fds.remove(res_r)  # _supervise closes it; a second close could hit another thread's new fd
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
