"""Per-sample progress: a backend reports each finished sample to the progress bar that listens.

One batched backend call can run for many minutes (256 samples of SmolLM2 on a CPU); a bar moved
only when the call returns looks dead the whole time. So the engine calls :func:`sample_done` as each
of its samples finishes, and a job that draws samples (eval, a sweep's pool) wraps its backend calls
in :meth:`SampleTicks.during`: the bar then moves per sample. After each call the job
:meth:`~SampleTicks.settle` s the bar to the samples it actually wrote (a resumed run regenerates
samples already on disk and discards them). Ticks never carry the bar past its total. Backends in
other processes or threads (Ray workers, HTTP clients) do not tick: their bars move per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_LISTENER: ContextVar[Callable[[int], None] | None] = ContextVar("deliberate_sample_listener", default=None)


def sample_done(k: int = 1) -> None:
    """Report ``k`` finished samples to the bar listening in this context (if any)."""
    listener = _LISTENER.get()
    if listener is not None and k > 0:
        listener(k)


class SampleTicks:
    """Moves a tqdm ``bar`` per finished sample during backend calls, then settles it to what was written."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.pending = 0  # ticks since the last settle
        self.limit = 0

    def _tick(self, k: int) -> None:
        k = min(k, self.limit - self.pending)
        if k > 0:
            self.pending += k
            self.bar.update(k)

    @contextmanager
    def during(self, expected: int) -> Iterator[SampleTicks]:
        """Backend calls in this block tick the bar, by at most ``expected`` samples in all."""
        self.limit = expected
        token = _LISTENER.set(self._tick)
        try:
            yield self
        finally:
            _LISTENER.reset(token)

    def settle(self, written: int) -> None:
        """``written`` samples were recorded since the last settle: the bar counts those, not the ticks."""
        self.bar.update(written - self.pending)
        self.limit -= written
        self.pending = 0
