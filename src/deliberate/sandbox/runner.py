"""The grader's side of the isolated sandbox: start the checker and the candidate, watch, decide.

``run_tests(code, tests, entry_point, helpers=...)`` and ``run_io(code, cases)`` return a
:class:`~deliberate.sandbox.verdict.Verdict`. Two processes per run, wired by two pipes:

* the **candidate** (``candidate.py`` under bubblewrap, :mod:`deliberate.sandbox.isolation`) runs
  the model's program and answers calls with plain data;
* the **checker** (``checker.py``, a plain trusted child) runs the task's tests against proxies of
  the candidate's functions and writes the verdict to a pipe only this process reads.

This process enforces the wall-clock limit and the output cap (candidate stdout + stderr), kills
both process groups when the checker is done (the candidate's whole PID namespace dies with its
bwrap), and maps the checker's status plus the candidate's exit status to a reason. Thread-safe:
each call has its own pipes and processes.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time

from deliberate.errors import DeliberateError
from deliberate.sandbox import isolation
from deliberate.sandbox.verdict import REASONS, Limits, Verdict

CHECKER = str(isolation.HERE / "checker.py")
ISOLATION = ("bwrap", "userns", "pidns", "netns", "ipcns", "mountns", "tmpfs", "rlimits")


class IsolationUnavailable(DeliberateError):
    """No OS isolation tool works here; the caller may fall back to the unsafe local runner."""


def run_tests(code: str, tests: str, entry_point: str | None = None, *, limits: Limits | None = None,
              helpers: str | None = None, python: str | None = None) -> Verdict:
    """Run ``tests`` (then ``check(<entry_point>)`` when they define ``check``) against ``code``.

    ``helpers``: trusted code run in the checker before the tests (the task's prompt: helpers its
    tests call come from here, not from the candidate)."""
    return run({"mode": "tests", "code": code, "tests": tests, "entry_point": entry_point, "helpers": helpers},
               limits or Limits(), python)


def run_io(code: str, cases: list[tuple[str, str]], *, limits: Limits | None = None,
           python: str | None = None) -> Verdict:
    """Run the program ``code`` on each ``(stdin, expected stdout)`` case; the checker compares."""
    return run({"mode": "io", "code": code, "cases": [{"stdin": i, "stdout": o} for i, o in cases]},
               limits or Limits(), python)


def limits_for_candidate(lim: Limits) -> dict:
    return {"cpu_s": max(1, int(lim.cpu_s if lim.cpu_s is not None else math.ceil(lim.wall_s) + 1)),
            "memory": int(lim.memory_mb) * 1024 * 1024, "file_bytes": int(lim.file_bytes),
            "open_files": int(lim.open_files), "processes": int(lim.processes)}


def run(job: dict, lim: Limits, python: str | None) -> Verdict:
    ok, bwrap = isolation.available()
    if not ok:
        raise IsolationUnavailable(f"sandbox: {bwrap}")
    run_id = "deliberate-sandbox-" + secrets.token_hex(8)
    t0 = time.monotonic()
    fds: list[int] = []
    procs: list[subprocess.Popen] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w

    def close(*which: int) -> None:
        for fd in which:
            if fd in fds:
                fds.remove(fd)
                os.close(fd)

    try:
        req_r, req_w = pipe()
        rep_r, rep_w = pipe()
        res_r, res_w = pipe()
        job_fd = isolation.memfd_with("job", json.dumps(job).encode())
        fds.append(job_fd)
        program = isolation.seccomp_program()
        seccomp_fd = isolation.memfd_with("seccomp", program) if program is not None else None
        if seccomp_fd is not None:
            fds.append(seccomp_fd)
        argv = isolation.bwrap_argv(bwrap, tmpfs_bytes=lim.tmpfs_bytes, seccomp_fd=seccomp_fd, run_id=run_id,
                                    python=python)
        argv += [str(req_r), str(rep_w), json.dumps(limits_for_candidate(lim))]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "DELIBERATE_SANDBOX": run_id}
        try:
            procs.append(subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=tuple(f for f in (req_r, rep_w, seccomp_fd) if f is not None), close_fds=True,
                start_new_session=True, cwd="/"))
            procs.append(subprocess.Popen(
                [sys.executable, "-I", "-B", CHECKER, str(job_fd), str(req_w), str(rep_r), str(res_w)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(job_fd, req_w, rep_r, res_w), close_fds=True, start_new_session=True, cwd="/"))
        except OSError as e:
            return Verdict(False, "sandbox_error", f"cannot start the sandbox: {e}", isolation=ISOLATION,
                           run_id=run_id)
        # only the children hold these now: a dead peer then shows as end of file / broken pipe
        close(req_r, req_w, rep_r, rep_w, res_w, job_fd)
        if seccomp_fd is not None:
            close(seccomp_fd)
        return supervise(procs[0], procs[1], res_r, lim, t0, run_id, seccomp=program is not None)
    finally:
        for p in procs:
            kill_group(p)
            for s in (p.stdout, p.stderr):
                if s:
                    s.close()
        for fd in list(fds):
            close(fd)


def wait_briefly(p: subprocess.Popen, seconds: float = 0.5) -> None:
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL ``p``'s process group (it leads one) and reap it. For the candidate that is bwrap,
    whose death takes the sandbox's PID namespace, and so every process the model made, with it."""
    if p.returncode is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()


def supervise(cand: subprocess.Popen, checker: subprocess.Popen, res_r: int, lim: Limits, t0: float,
              run_id: str, seccomp: bool) -> Verdict:
    sel = selectors.DefaultSelector()
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "checker": bytearray(), "result": bytearray()}
    sel.register(cand.stdout.fileno(), selectors.EVENT_READ, "stdout")
    sel.register(cand.stderr.fileno(), selectors.EVENT_READ, "stderr")
    sel.register(checker.stdout.fileno(), selectors.EVENT_READ, "checker")
    sel.register(res_r, selectors.EVENT_READ, "result")
    deadline = t0 + lim.wall_s
    killed_for = None
    done_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed_for is None and done_at is None and now > deadline:
                killed_for = "timeout"
                kill_group(cand)
                kill_group(checker)
            if done_at is None and ("result" not in {k.data for k in sel.get_map().values()}):
                done_at = now  # the checker has spoken (or died): the candidate has nothing left to do
                if b'"candidate_gone"' in bufs["result"]:
                    wait_briefly(cand)  # its own exit status says why it went; our SIGKILL would hide it
                kill_group(cand)
                kill_group(checker)
            if done_at is not None and now - done_at > 1.0:
                break
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    continue
                bufs[key.data] += data
                if killed_for is None and len(bufs["stdout"]) + len(bufs["stderr"]) > lim.output_bytes:
                    killed_for = "output_limit"
                    kill_group(cand)
    finally:
        sel.close()
    rc_own = cand.poll()  # None: still running, so whatever status it gets next is our SIGKILL
    kill_group(cand)
    kill_group(checker)
    iso = ISOLATION + (("seccomp",) if seccomp else ())
    return decide(bufs, cand.returncode, rc_own, killed_for, lim, time.monotonic() - t0, run_id, iso)


def decide(bufs: dict, rc: int | None, rc_own: int | None, killed_for: str | None, lim: Limits, wall: float,
           run_id: str, iso: tuple[str, ...]) -> Verdict:
    """``rc`` is the candidate's final status; ``rc_own`` the status it reached before we killed it."""
    out = bytes(bufs["stdout"][:lim.output_bytes]).decode("utf-8", "replace")
    err = bytes(bufs["stderr"][:lim.output_bytes]).decode("utf-8", "replace")
    status, detail = None, ""
    line = bytes(bufs["result"]).split(b"\n", 1)[0]
    try:
        msg = json.loads(line)
        status, detail = str(msg["status"]), str(msg.get("detail", ""))
    except (ValueError, KeyError, TypeError):
        pass
    common = {"stdout": out, "stderr": err, "wall_s": wall, "returncode": rc, "isolation": iso, "run_id": run_id}
    if status == "pass":
        return Verdict(True, "pass", "", **common)
    if killed_for == "output_limit":
        return Verdict(False, "output_limit", f"more than {lim.output_bytes} bytes of output", **common)
    if killed_for == "timeout":
        return Verdict(False, "timeout", f"wall-clock limit {lim.wall_s:g}s", **common)
    if status is None:
        tail = bytes(bufs["checker"][-1500:]).decode("utf-8", "replace")
        return Verdict(False, "sandbox_error", "the checker wrote no verdict: " + tail, **common)
    if status == "candidate_gone":
        return candidate_ended(rc_own, wall, lim, err, common)
    if status in REASONS:
        return Verdict(False, status, detail, **common)
    return Verdict(False, "sandbox_error", f"unknown checker status {status!r}", **common)


def candidate_ended(rc: int | None, wall: float, lim: Limits, err: str, common: dict) -> Verdict:
    """Why the candidate stopped answering, from how its process ended. bwrap exits with the
    child's status, or 128 + the signal that killed it; SIGKILL is the CPU hard limit only once
    that much time has passed (else the program killed itself)."""
    sig = -rc if rc is not None and rc < 0 else rc - 128 if rc is not None and rc > 128 else None
    cpu_s = limits_for_candidate(lim)["cpu_s"]
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and wall >= cpu_s):
        return Verdict(False, "timeout", f"CPU-time limit (signal {signal.Signals(sig).name})", **common)
    if "MemoryError" in err or "Cannot allocate memory" in err:
        return Verdict(False, "memory", err[-500:], **common)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return Verdict(False, "crash", f"killed by {name}", **common)
    if rc is None:
        return Verdict(False, "early_exit", "closed its end of the channel before the tests finished", **common)
    return Verdict(False, "early_exit", f"exited with status {rc} before the tests finished", **common)
