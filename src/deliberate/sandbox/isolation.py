"""OS isolation for the candidate process: bubblewrap namespaces, a seccomp filter, the mounts.

:func:`bwrap_argv` builds the command line that runs ``candidate.py`` under bubblewrap (Debian
package ``bubblewrap``, installed by scripts/setup.sh): new user, PID, network, IPC, UTS and
cgroup namespaces; uid/gid 65534 inside; ``/usr``, the Python installation and the two sandbox
files mounted read-only; a fresh size-limited tmpfs at ``/tmp`` as the only writable place; a
fresh ``/proc`` that shows only the sandbox's own processes; no capabilities; ``--die-with-parent``
and ``--new-session``. :func:`seccomp_program` is a classic-BPF filter (no libseccomp needed) that
refuses process creation (fork, vfork, clone without ``CLONE_THREAD``; clone3 answers ENOSYS so
libc falls back to clone), ptrace and cross-process memory access, and kernel-facing calls
(mount, bpf, keyctl, unshare/setns, pidfd, io_uring ...). :func:`available` probes once whether
bwrap runs here (it needs user namespaces); docs/SANDBOX.md says what each layer stops.
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSIDE = "/opt/deliberate-sandbox"  # where candidate.py and protocol.py appear in the sandbox

# x86_64 syscall numbers (asm/unistd_64.h); other architectures run without the filter.
AUDIT_ARCH_X86_64 = 0xC000003E
NR_CLONE, NR_CLONE3 = 56, 435
DENIED_X86_64 = {
    "fork": 57, "vfork": 58, "ptrace": 101, "syslog": 103, "personality": 135, "pivot_root": 155,
    "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176,
    "quotactl": 179, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "pidfd_getfd": 438, "mount_setattr": 442,
}
CLONE_THREAD = 0x00010000
EPERM, ENOSYS = 1, 38
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
X32_SYSCALL_BIT = 0x40000000


def seccomp_program() -> bytes | None:
    """The filter as raw ``struct sock_filter`` records (what ``bwrap --seccomp FD`` reads), or None
    off x86_64. Classic BPF jumps only forward, so the exits sit at the end."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    denied = sorted(DENIED_X86_64.values())
    n = len(denied)
    allow, clone_check, eperm, enosys = 7 + n, 8 + n, 11 + n, 12 + n

    def to(target: int, at: int) -> int:
        return target - at - 1

    prog = [
        (LD_W_ABS, 0, 0, 4),                             # 0: arch
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),                # 1: x86_64 -> 3
        (RET_K, 0, 0, RET_KILL_PROCESS),                 # 2: another ABI (int 0x80): kill
        (LD_W_ABS, 0, 0, 0),                             # 3: syscall number
        (JGE_K, to(eperm, 4), 0, X32_SYSCALL_BIT),       # 4: x32 ABI: refuse
        (JEQ_K, to(clone_check, 5), 0, NR_CLONE),        # 5: clone: look at its flags
        (JEQ_K, to(enosys, 6), 0, NR_CLONE3),            # 6: clone3: flags unreadable, say ENOSYS
    ]
    prog += [(JEQ_K, to(eperm, 7 + i), 0, nr) for i, nr in enumerate(denied)]
    prog += [
        (RET_K, 0, 0, RET_ALLOW),                        # allow
        (LD_W_ABS, 0, 0, 16),                            # clone_check: low 32 bits of args[0]
        (JSET_K, 0, 1, CLONE_THREAD),                    # a thread -> next, a process -> eperm
        (RET_K, 0, 0, RET_ALLOW),
        (RET_K, 0, 0, RET_ERRNO | EPERM),                # eperm
        (RET_K, 0, 0, RET_ERRNO | ENOSYS),               # enosys
    ]
    assert len(prog) == enosys + 1 and allow == 7 + n
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def python_roots() -> list[str]:
    """Folders the candidate's Python needs (installation, virtual env), outside ``/usr``."""
    roots = []
    for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))):
        for q in (p, os.path.realpath(p)):
            # never "/": that would mount the whole host (a Python installed at / runs from /usr anyway)
            if q and q != "/" and not q.startswith("/usr/") and q != "/usr" and q not in roots and os.path.isdir(q):
                roots.append(q)
    return roots


def bwrap_argv(bwrap: str, *, tmpfs_bytes: int, seccomp_fd: int | None, run_id: str,
               python: str | None = None) -> list[str]:
    """bwrap, its options and ``python -I -B candidate.py`` (the caller appends the fds and limits)."""
    argv = [bwrap, "--unshare-user", "--uid", "65534", "--gid", "65534", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        link = Path("/") / name
        if link.is_symlink():
            argv += ["--symlink", os.readlink(link), str(link)]
        elif link.is_dir():
            argv += ["--ro-bind", str(link), str(link)]
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf"):
        argv += ["--ro-bind-try", f, f]
    for root in python_roots():
        argv += ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(int(tmpfs_bytes)), "--tmpfs", "/tmp",
             "--ro-bind", str(HERE / "candidate.py"), f"{INSIDE}/candidate.py",
             "--ro-bind", str(HERE / "protocol.py"), f"{INSIDE}/protocol.py",
             "--remount-ro", "/", "--chdir", "/tmp", "--clearenv",
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
             "--setenv", "LANG", "C.UTF-8", "--setenv", "DELIBERATE_SANDBOX", run_id]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + [python or sys.executable, "-I", "-B", f"{INSIDE}/candidate.py"]


def memfd_with(name: str, data: bytes) -> int:
    """An in-memory file holding ``data``, rewound: how bwrap gets the filter and the checker its
    job, with no temp file on disk. Close-on-exec; ``pass_fds`` hands it to one child."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_PROBE: tuple[bool, str] | None = None
_PROBE_LOCK = threading.Lock()


def available() -> tuple[bool, str]:
    """``(True, bwrap path)`` when bubblewrap starts a namespaced process here, else ``(False, why)``.
    Probed once per process; ``DELIBERATE_SANDBOX_NO_BWRAP=1`` pretends it is missing (for tests)."""
    global _PROBE
    with _PROBE_LOCK:
        if _PROBE is None:
            _PROBE = probe()
        if os.environ.get("DELIBERATE_SANDBOX_NO_BWRAP") == "1":
            return False, "DELIBERATE_SANDBOX_NO_BWRAP=1"
        return _PROBE


def probe() -> tuple[bool, str]:
    """Start Python under bwrap with the seccomp filter, exactly as a run would (minus the job)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed"
    program = seccomp_program()
    fd = memfd_with("seccomp", program) if program is not None else None
    argv = bwrap_argv(exe, tmpfs_bytes=1 << 20, seccomp_fd=fd, run_id="probe")[:-1] + ["-c", "pass"]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=20, check=False, pass_fds=(fd,) if fd is not None else ())
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"bwrap did not run: {e}"
    finally:
        if fd is not None:
            os.close(fd)
    if r.returncode != 0:
        return False, "bwrap cannot create its namespaces here: " + r.stderr.decode(errors="replace").strip()[-300:]
    return True, exe
