"""Spreading requests over several OpenAI-compatible servers: which server gets the next attempt.

Why: with several servers of one model, each question should keep going to the server that holds its
prefix in cache, no server should carry more than ``concurrency`` requests at once, and a failing
server should be left alone for a while. :func:`affinity_index` picks the preferred server,
:class:`Server` keeps each server's counters and cool-down, :class:`Slots` counts the requests in
flight and holds the balancing rule (described in the docstring of :mod:`deliberate.models.openai`).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Sequence


def affinity_index(key: str, n_servers: int) -> int:
    """The preferred server (0 .. n_servers-1) for affinity key ``key``: stable across runs and machines."""
    h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "little") % n_servers


class Server:
    """One base URL and its counters (kept for the backend's lifetime; ``repr`` hides the password)."""

    __slots__ = ("consecutive_failures", "cool_until", "failures", "ok", "peak_inflight", "requests", "shown", "url")

    def __init__(self, url: str, shown: str):
        self.url, self.shown = url, shown
        self.requests = self.ok = self.failures = self.peak_inflight = self.consecutive_failures = 0
        self.cool_until = 0.0

    def __repr__(self) -> str:
        return f"<server {self.shown}>"


# httpcore's connection pool does work proportional to (connections x queued requests) on every
# request event, which made 64 connections in one pool cost ~9 ms of CPU per request. So each server's
# `concurrency` connections are split over several small httpx clients ("shards") of at most SHARD_SIZE.
SHARD_SIZE = 8


def shard_sizes(concurrency: int) -> list[int]:
    """The connection limit of each client shard of one server: ``SHARD_SIZE`` each, summing to ``concurrency``."""
    return [min(SHARD_SIZE, concurrency - start) for start in range(0, concurrency, SHARD_SIZE)]


class Slots:
    """Per-call accounting of requests in flight on each server (and each of its client shards), with
    FIFO waiting for a free slot.

    Only used from one event loop (no locking needed); ``pick`` holds the balancing rule (the docstring
    of :mod:`deliberate.models.openai`).
    """

    def __init__(self, servers: Sequence[Server], concurrency: int, margin: int, shard_caps: Sequence[int]):
        self.servers, self.cap, self.margin = servers, concurrency, margin
        self.shard_caps = list(shard_caps)
        self.inflight = [0] * len(servers)
        self.shard_inflight = [[0] * len(self.shard_caps) for _ in servers]
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def _eligible(self, now: float) -> list[int]:
        healthy = [i for i, s in enumerate(self.servers) if s.cool_until <= now]
        return healthy or list(range(len(self.servers)))

    def pick(self, preferred: int, avoid: int | None) -> int | None:
        """The server for the next attempt, or ``None`` when every usable server is full. Whether it is
        ``None`` does not depend on ``preferred`` / ``avoid``, so waking one waiter per freed slot is enough."""
        free = [i for i in self._eligible(time.monotonic()) if self.inflight[i] < self.cap]
        if not free:
            return None
        if avoid is not None and avoid in free and len(free) > 1:
            free.remove(avoid)  # failover: retry elsewhere when there is an elsewhere
        if preferred in free and self.inflight[preferred] - min(self.inflight[i] for i in free) <= self.margin:
            return preferred
        k = len(self.servers)
        return min(free, key=lambda i: (self.inflight[i], (i - preferred) % k))

    def _next_change(self) -> float | None:
        """Seconds until the next cool-down ends (which may make a server usable again), if any."""
        now = time.monotonic()
        ends = [s.cool_until - now for s in self.servers if s.cool_until > now]
        return max(0.001, min(ends)) if ends else None

    async def acquire(self, preferred: int, avoid: int | None) -> tuple[int, int]:
        """A free slot: ``(server, shard)``."""
        while True:
            i = self.pick(preferred, avoid)
            if i is not None:
                self.inflight[i] += 1
                server = self.servers[i]
                server.peak_inflight = max(server.peak_inflight, self.inflight[i])
                shards = self.shard_inflight[i]  # the first shard with room (re-uses its kept-alive connections)
                j = next(j for j, cap in enumerate(self.shard_caps) if shards[j] < cap)
                shards[j] += 1
                return i, j
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, self._next_change())
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self.wake(1)  # we were woken for a slot we will not use: pass it on
                raise

    def release(self, i: int, j: int, extra_wakes: int = 0) -> None:
        self.inflight[i] -= 1
        self.shard_inflight[i][j] -= 1
        self.wake(1 + extra_wakes)

    def wake(self, k: int) -> None:
        while k > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                k -= 1
