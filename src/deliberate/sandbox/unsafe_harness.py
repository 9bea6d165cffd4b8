"""The child harness of the in-process runner (:mod:`deliberate.sandbox.unsafe_local`), as source.

``HARNESS`` runs as ``python -I -B -c HARNESS NONCE_FD RESULT_FD`` in the run's temp dir: it reads
the nonce into the vault, installs the audit hook, runs the solution and the tests, and asks the
vault for a pass. ``PASS_LINE`` is the (0-based) line of the pass request, which the vault checks.
Kept only for ``--task-arg unsafe_local_sandbox=true``; docs/SANDBOX.md says why it is weaker.
"""

# --------------------------------------------------------------------------------------------
# The child harness. Runs as ``python -I -B -c _HARNESS NONCE_FD RESULT_FD`` in the temp dir.
# Everything the audit hook and the vault use is bound in closures before untrusted code runs,
# so patching modules or builtins cannot make them call the solution's code.
HARNESS = r'''
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

PASS_LINE = next(i for i, line in enumerate(HARNESS.split("\n")) if line.rstrip().endswith("# PASS_LINE"))
