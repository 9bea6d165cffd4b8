"""The candidate process: runs the model's program inside the sandbox and answers calls with data.

Started by :mod:`deliberate.sandbox.runner` as ``python -I -B candidate.py REQ_FD REP_FD LIMITS``
under bubblewrap (see :mod:`deliberate.sandbox.isolation`), with this file and ``protocol.py``
bind-mounted read-only and nothing of the deliberate package. It sets its resource limits, then
serves requests from the checker: ``load`` (run the program, list the functions it defines),
``call`` (call one with decoded arguments, return the encoded result) and ``io`` (run the program
on a stdin text, return what it printed). Nothing here is trusted by the checker: whatever this
process (or the model's code, which may rewrite it) sends is decoded as plain data or refused.
"""

import io
import json
import os
import resource
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocol  # noqa: E402  (the sibling file, bind-mounted next to this one)

del sys.path[0]


def set_limits(lim: dict) -> None:
    """Hard = soft, so nothing in here can raise them back (no CAP_SYS_RESOURCE in the sandbox);
    CPU gets one second of grace between SIGXCPU and SIGKILL."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory"], lim["memory"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))


def describe(e: BaseException) -> dict:
    """Type, message and solution line of an exception, never raising (``__str__`` is the model's)."""
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<solution>":
            line = tb.tb_lineno
        tb = tb.tb_next
    try:
        msg = str(e)[:500]
    except BaseException:
        msg = "?"
    t = type(e)
    return {"type": t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}",
            "msg": msg, "line": line, "exit": isinstance(e, (SystemExit, KeyboardInterrupt)),
            "syntax": isinstance(e, SyntaxError)}


def exported(ns: dict) -> list:
    """Names the checker may call: the program's top-level callables that are not classes or modules."""
    return sorted(k for k, v in ns.items() if type(k) is str and not k.startswith("__") and callable(v)
                  and not isinstance(v, (type, types.ModuleType)))


def run_io(code, stdin: str):
    """Run the program as ``__main__`` with ``stdin`` as its input; its printed text is the result."""
    out = io.StringIO()
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(stdin), out
    try:
        exec(code, {"__name__": "__main__"})
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.stdin, sys.stdout = saved
    return out.getvalue()


def serve(req_fd: int, rep_fd: int) -> None:
    ns: dict = {"__name__": "__main__"}
    code = None
    while True:
        msg = protocol.receive(req_fd)
        if msg is None:
            return
        reply = {"ok": True}
        try:
            op = msg.get("op")
            if op in ("load", "io") and code is None:
                code = compile(msg["code"], "<solution>", "exec")
            if op == "load":
                exec(code, ns)
                reply["names"] = exported(ns)
            elif op == "call":
                args = protocol.decode(msg["args"])
                kwargs = protocol.decode(msg["kwargs"])
                value = ns[msg["name"]](*args, **kwargs)
                try:
                    reply["value"] = protocol.encode(value)
                except protocol.NotData as e:
                    reply = {"ok": False, "nondata": str(e)}
            elif op == "io":
                reply["value"] = run_io(code, msg["stdin"])
        except BaseException as e:  # the model's exception, SystemExit included, goes to the checker
            reply = {"ok": False, "error": describe(e)}
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        try:
            protocol.send(rep_fd, reply)
        except (protocol.NotData, ValueError) as e:  # too large, or an int past the JSON digit limit
            protocol.send(rep_fd, {"ok": False, "nondata": str(e)[:300]})
        if reply.get("error", {}).get("exit"):
            return


if __name__ == "__main__":
    set_limits(json.loads(sys.argv[3]))
    serve(int(sys.argv[1]), int(sys.argv[2]))
