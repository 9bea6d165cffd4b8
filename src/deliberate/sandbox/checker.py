"""The trusted checker process: runs the task's tests against a proxy of the candidate.

Started by :mod:`deliberate.sandbox.runner` as ``python -I -B checker.py JOB_FD REQ_FD REP_FD
RESULT_FD``. It never runs the model's code: the names the candidate's program defines become
:class:`Proxy` objects that send the arguments to the candidate process and get back plain data
(decoded by :func:`protocol.decode`, so no object of the candidate's making exists here). The
tests, the comparison and the verdict all live in this process, which the candidate cannot reach
(another PID namespace, no shared memory, only two pipes that carry data). The verdict goes to
RESULT_FD as one JSON line ``{"status": REASON, "detail": TEXT}``.

Helpers: when the task gives trusted helper code (a HumanEval prompt defines ``poly`` or
``encode_cyclic`` that its ``check`` uses), it runs here first, so the tests use the task's helper,
not one the candidate redefined. Function names that shadow builtins are never proxied (a
solution-level ``def abs`` cannot change what the tests' ``abs`` means).
"""

import builtins
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocol  # noqa: E402  (the sibling file; this script runs by path, outside the package)

del sys.path[0]


class CandidateFault(BaseException):
    """The candidate broke the contract (died, non-data reply, garbled frame). A BaseException so
    that a test's ``except Exception`` cannot swallow it."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class TestsBroken(Exception):
    """The tests passed something that is not plain data: a problem with the task, not the model."""


def builtin_exception(info: dict) -> BaseException:
    """The checker-side exception for a candidate exception: the same builtin class when it is one
    (so ``except ValueError`` in the tests works), else a RuntimeError naming the type."""
    name, msg = str(info.get("type")), str(info.get("msg"))[:500]
    where = f" (solution line {info['line']})" if type(info.get("line")) is int else ""
    if info.get("exit") is True:
        return CandidateFault("early_exit", f"{name} during the tests{where}")
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg + where)
        except Exception:  # exception classes whose constructor wants other arguments
            pass
    return RuntimeError(f"{name}: {msg}{where}")


class Channel:
    """One request, one reply, in order; a closed or garbled channel is a :class:`CandidateFault`."""

    def __init__(self, req_fd: int, rep_fd: int):
        self.req_fd, self.rep_fd = req_fd, rep_fd

    def ask(self, message: dict) -> dict:
        try:
            protocol.send(self.req_fd, message)
        except BrokenPipeError:
            raise CandidateFault("candidate_gone", "the candidate process ended") from None
        try:
            reply = protocol.receive(self.rep_fd)
        except protocol.ProtocolError as e:
            raise CandidateFault("protocol_error", f"garbled reply from the candidate: {e}") from None
        if reply is None:
            raise CandidateFault("candidate_gone", "the candidate process ended")
        if "nondata" in reply:
            raise CandidateFault("non_data_return", f"non-data return: {str(reply['nondata'])[:300]}")
        if reply.get("ok") is not True:
            err = reply.get("error")
            if type(err) is not dict:
                raise CandidateFault("protocol_error", "a failed reply without an error")
            if err.get("syntax") is True:
                raise CandidateFault("syntax_error", f"{err.get('type')}: {str(err.get('msg'))[:500]}")
            raise builtin_exception(err)
        return reply


class Proxy:
    """Stands for the candidate's function ``name``: arguments go out as data, data comes back."""

    def __init__(self, channel: Channel, name: str):
        self.channel, self.name = channel, name
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        try:
            wire = {"op": "call", "name": self.name, "args": protocol.encode(list(args)),
                    "kwargs": protocol.encode(kwargs)}
        except protocol.NotData as e:
            raise TestsBroken(f"the tests passed a non-data argument to {self.name}: {e}") from None
        reply = self.channel.ask(wire)
        try:
            return protocol.decode(reply.get("value"))
        except protocol.ProtocolError as e:
            raise CandidateFault("protocol_error", f"garbled value from {self.name}: {e}") from None

    def __repr__(self):
        return f"<candidate function {self.name}>"


def namespace(channel: Channel, job: dict) -> dict:
    """The tests' globals: the trusted helpers, then proxies for the candidate's functions."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    if job.get("helpers"):
        try:
            exec(compile(job["helpers"], "<helpers>", "exec"), ns)
        except Exception:  # a prompt that is only a signature does not run; its helpers are then none
            pass
    names = channel.ask({"op": "load", "code": job["code"]}).get("names")
    if type(names) is not list:
        raise CandidateFault("protocol_error", "the candidate did not list its functions")
    entry = job.get("entry_point")
    for name in names:
        if type(name) is not str or not name.isidentifier() or name.startswith("__") or hasattr(builtins, name):
            continue
        if entry is None or name == entry or name not in ns:
            ns[name] = Proxy(channel, name)
    if entry and entry not in names:
        raise NameError(f"entry point {entry!r} is not defined by the solution")
    if entry:
        ns[entry] = Proxy(channel, entry)
    return ns


def run_tests(channel: Channel, job: dict) -> None:
    """Raises on any failure; returns only when every test passed."""
    tests = compile(job["tests"], "<tests>", "exec")
    has_check = any(isinstance(c, types.CodeType) and c.co_name == "check" for c in tests.co_consts)
    ns = namespace(channel, job)
    exec(tests, ns)
    if has_check and job.get("entry_point"):
        ns["check"](ns[job["entry_point"]])


def same_output(got: str, want: str) -> bool:
    """Judge-style comparison: trailing spaces on each line and trailing blank lines do not count."""
    def norm(s):
        return "\n".join(line.rstrip() for line in s.rstrip().split("\n"))
    return norm(got) == norm(want)


def run_io(channel: Channel, job: dict) -> None:
    for i, case in enumerate(job["cases"]):
        got = channel.ask({"op": "io", "code": job["code"], "stdin": case["stdin"]}).get("value")
        if type(got) is not str:
            raise CandidateFault("protocol_error", "io output is not text")
        if not same_output(got, case["stdout"]):
            raise AssertionError(f"case {i}: expected {case['stdout'][:200]!r}, got {got[:200]!r}")


def classify(e: BaseException) -> tuple[str, str]:
    if isinstance(e, CandidateFault):
        return e.status, e.detail
    if isinstance(e, TestsBroken):
        return "sandbox_error", str(e)
    text = f"{type(e).__name__}: {str(e)[:500]}"
    if isinstance(e, AssertionError):
        return "fail_assertion", text
    if isinstance(e, MemoryError):
        return "memory", text
    return "fail_exception", text


def main(job_fd: int, req_fd: int, rep_fd: int, result_fd: int) -> None:
    with os.fdopen(job_fd, "rb") as fh:
        job = json.loads(fh.read())
    channel = Channel(req_fd, rep_fd)
    try:
        if job.get("mode") == "io":
            run_io(channel, job)
        else:
            try:
                compile(job["tests"], "<tests>", "exec")
            except (SyntaxError, ValueError) as e:
                raise TestsBroken(f"the tests do not compile: {e}") from None
            run_tests(channel, job)
        status, detail = "pass", ""
    except BaseException as e:  # the verdict is written whatever happened
        status, detail = classify(e)
    os.write(result_fd, json.dumps({"status": status, "detail": detail[-2000:]}).encode() + b"\n")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
