"""What a sandbox run returns (:class:`Verdict`, with one of :data:`REASONS`) and its :class:`Limits`.

Shared by the isolated runner (:mod:`deliberate.sandbox.runner`) and the weaker in-process one
(:mod:`deliberate.sandbox.unsafe_local`), so the ``code`` task reads one type whichever ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REASONS = (
    "pass",             # the tests ran to the end without raising
    "fail_assertion",   # an AssertionError from the tests
    "fail_exception",   # any other exception from the solution or the tests
    "timeout",          # wall-clock or CPU-time limit
    "memory",           # MemoryError / address-space limit
    "crash",            # killed by a signal (segfault, abort, ...)
    "forbidden",        # the solution tried something the sandbox refuses (or forged a pass)
    "output_limit",     # more than Limits.output_bytes of output
    "syntax_error",     # the solution (or the tests) do not compile
    "early_exit",       # exited (sys.exit, os._exit, ...) before the tests finished
    "non_data_return",  # the candidate returned something that is not plain data
    "protocol_error",   # the candidate's process sent a garbled reply (it wrote to its pipes itself)
    "sandbox_error",    # the sandbox itself could not run the program
)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run. ``cpu_s`` defaults to ``ceil(wall_s) + 1``.

    ``max_threads`` is enforced by the in-process runner only; the isolated runner bounds threads
    and processes with ``processes`` (RLIMIT_NPROC in the sandbox's user namespace) and the
    address space. ``tmpfs_bytes`` is the size of the isolated runner's only writable place."""

    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 1024
    output_bytes: int = 1_000_000
    file_bytes: int = 16_000_000
    max_threads: int = 4
    open_files: int = 256
    processes: int = 64
    tmpfs_bytes: int = 64_000_000


@dataclass(frozen=True)
class Verdict:
    """The grader's decision. ``passed`` is True only for ``reason == "pass"``."""

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
    #: the run's id: the in-process runner's temp dir name (removed after the run); both runners set
    #: ``DELIBERATE_SANDBOX`` to it in the environment of the processes they start
    run_id: str = ""
