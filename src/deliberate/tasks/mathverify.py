"""The math_verify worker pool behind :func:`deliberate.tasks.grading.math_equal`.

Why a pool of plain subprocesses: sympy can hang on hostile LaTeX, and only a process can be killed
at a wall-clock deadline; plain ``subprocess`` (not ``multiprocessing``) also works inside daemonic
pool workers, and the caller never touches signals, so it is safe from any thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading


def worker_main() -> None:
    """Worker process loop: one JSON request per stdin line, one JSON reply per stdout line.

    Runs in the worker's main thread, so math_verify's own signal-based timeouts are allowed there
    (they bound single sympy operations; the caller's wall-clock timeout bounds the whole request).
    """
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # anything math_verify/sympy prints must not corrupt the protocol
    logging.disable(logging.WARNING)
    from math_verify import parse, verify  # lazy: sympy takes a second to import, only workers need it

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            req = json.loads(line)
            inner = max(1, int(req.get("inner_timeout", 2)))
            gold = parse(wrap_boxed(req["gold"]), parsing_timeout=inner)
            pred = parse(wrap_boxed(req["pred"]), parsing_timeout=inner)
            ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=inner))
        except Exception:  # malformed input or a math_verify failure: not equal
            ok = False
        out.write(json.dumps({"ok": ok}) + "\n")


def wrap_boxed(s: str) -> str:
    s = s.strip()
    return s if "\\boxed" in s else "\\boxed{" + s + "}"


class Worker:
    """One math_verify worker process and the thread that reads its replies."""

    def __init__(self, start_timeout: float):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from deliberate.tasks.mathverify import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.replies), daemon=True).start()
        try:
            ready = self.replies.get(timeout=start_timeout)
        except queue.Empty:
            ready = None
        if not ready or not ready.get("ready"):
            self.kill()
            raise RuntimeError("math_verify worker failed to start")

    @staticmethod
    def _read(proc: subprocess.Popen, replies: queue.Queue) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    replies.put(json.loads(line))
                except ValueError:
                    continue
        except (OSError, ValueError):
            pass
        replies.put(None)  # EOF: the worker died

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, req: dict, timeout: float) -> dict | None:
        """The worker's reply, or None when it timed out or died (the caller then kills it)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            return self.replies.get(timeout=max(0.0, timeout))
        except (OSError, queue.Empty, ValueError):
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


class MathChecker:
    """A small pool of persistent math_verify worker processes with a per-call wall-clock timeout.

    Thread-safe: each call borrows an idle worker, or starts one while fewer than ``max_workers``
    exist, or waits for one; so concurrent callers run in parallel (up to ``max_workers``) instead
    of queueing behind one slow check. On timeout the borrowed worker is killed (a fresh one is
    started when next needed) and the call returns False. A checker used after ``fork`` starts its
    own workers in the child (the parent's are not touched).
    """

    def __init__(self, start_timeout: float = 60.0, max_workers: int | None = None):
        if max_workers is None:
            max_workers = int(os.environ.get("DELIBERATE_MATH_WORKERS", "0")) or min(4, os.cpu_count() or 1)
        self.start_timeout = start_timeout
        self.max_workers = max(1, int(max_workers))
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._count = 0  # workers alive or starting, idle or borrowed
        self._pid = os.getpid()
        self.restarts = 0

    def _reset_after_fork(self) -> None:
        if os.getpid() != self._pid:  # forked child: the parent's workers are not ours
            self._idle, self._count, self._pid = [], 0, os.getpid()

    def _borrow(self) -> Worker:
        with self._cond:
            self._reset_after_fork()
            while True:
                while self._idle:
                    w = self._idle.pop()
                    if w.alive():
                        return w
                    w.kill()
                    self._count -= 1
                if self._count < self.max_workers:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return Worker(self.start_timeout)  # started outside the lock: others keep working
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _give_back(self, w: Worker, ok: bool) -> None:
        if not ok:
            w.kill()
        with self._cond:
            if os.getpid() != self._pid:
                return
            if ok:
                self._idle.append(w)
            else:
                self._count -= 1
            self._cond.notify()

    def check(self, pred: str, gold: str, timeout: float = 5.0) -> bool:
        w = self._borrow()
        req = {"pred": pred, "gold": gold, "inner_timeout": max(1, int(timeout / 3))}
        reply = w.request(req, timeout)
        if reply is None:  # timed out or died: kill it; a fresh one starts when next needed
            self._give_back(w, ok=False)
            with self._cond:
                self.restarts += 1
            return False
        self._give_back(w, ok=True)
        return bool(reply.get("ok"))

    def shutdown(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            mine = os.getpid() == self._pid
            self._count -= len(idle)
        if mine:
            for w in idle:
                w.kill()
