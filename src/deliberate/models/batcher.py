"""The request queue of ``deliberate serve``: one worker thread owns the backend and merges queued
requests into shared ``generate`` calls.

Why: local models are not thread-safe and a batch of 100 rows costs little more than one row, so
requests are neither run concurrently nor one at a time. Rules:

* A call takes the oldest queued request and every queued request with the same sampling settings
  (requests arriving while a call runs join the next one). Merging never changes a sample: under
  the seeding contract (``models/sampling.py``) sample ``j`` of prompt ``p`` depends only on
  ``(seed, p, j)``, so a prompt asked twice under one seed is generated once. Requests with
  different seeds cannot share a call (``Backend.generate`` takes one seed) and run in turn.
* Requests without a seed share one fresh random seed per call; two of them asking the same prompt
  go to different calls, so they still get different samples.
* A merged call that fails is re-run request by request, so one bad prompt fails only its request.
* The queue is bounded (:class:`QueueFull` past ``max_queue`` waiting requests).
* :meth:`Batcher.cancel` (the client went away) drops a queued request; when every request of the
  running call is cancelled, the call is stopped at the model's next forward pass (a pre-hook on
  the input embeddings of ``backend.model``, for backends with a torch model: tiny, hf), so the
  model is free within one decode step. Other backends finish the call and its result is dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams
from deliberate.types import Completion

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The request queue is at its bound; the client should retry later (HTTP 429)."""


class Cancelled(Exception):
    """Raised inside the model's forward pass to stop a call no client is waiting for."""


class BadBackendResult(Exception):
    """The backend returned the wrong number of completions."""


@dataclass(eq=False)
class Job:
    """One HTTP request's work: ``done(result, error)`` is called once, from the worker thread, with the
    completions (one list of ``params.n`` per prompt) or the exception."""

    prompts: list[str]
    params: SamplingParams
    seeded: bool
    done: Callable[[list[list[Completion]] | None, BaseException | None], None]
    cancelled: bool = field(default=False, init=False)

    @property
    def key(self) -> tuple[bool, SamplingParams]:
        """Requests with equal keys can share a call: equal settings, and the same seed unless unseeded."""
        return self.seeded, self.params if self.seeded else dataclasses.replace(self.params, seed=0)


class Batcher:
    """The worker thread and its queue; ``close()`` stops it and fails what is still queued."""

    def __init__(self, backend: Backend, max_queue: int):
        self.backend = backend
        self.max_queue = max_queue
        self.calls = 0  # engine calls made
        self.cancelled_calls = 0  # calls stopped mid-way because every client had gone
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._abort = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="deliberate-serve-batcher", daemon=True)
        self._hook = self._install_hook()
        self._thread.start()

    # -- called from the event loop

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting, --max-queue); retry later")
            self._queue.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        with self._cond:
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
            elif job in self._running and all(j.cancelled for j in self._running):
                self._abort = True

    @property
    def queued(self) -> int:
        """Requests waiting for the model."""
        with self._cond:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a call is running (the model is in use)."""
        with self._cond:
            return bool(self._running)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            left, self._queue = list(self._queue), collections.deque()
            self._abort = bool(self._running)
            self._cond.notify_all()
        for job in left:
            job.done(None, QueueFull("the server is shutting down"))
        self._thread.join(timeout=10)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- the worker thread

    def _install_hook(self):
        emb = getattr(getattr(self.backend, "model", None), "get_input_embeddings", None)
        module = emb() if callable(emb) else None
        if module is None or not hasattr(module, "register_forward_pre_hook"):
            return None
        return module.register_forward_pre_hook(self._maybe_abort)

    def _maybe_abort(self, module, args) -> None:
        # only our own calls: the same model may also be used in-process by other threads
        if self._abort and threading.current_thread() is self._thread:
            raise Cancelled()

    def _take(self) -> list[Job] | None:
        """The next call's jobs: the oldest queued one and every queued job that can share its call."""
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            key = self._queue[0].key
            batch, seen, rest = [], set(), collections.deque()
            for job in self._queue:
                unseeded_clash = not job.seeded and not seen.isdisjoint(job.prompts)
                if job.key == key and not unseeded_clash:
                    batch.append(job)
                    seen.update(job.prompts)
                else:
                    rest.append(job)
            self._queue = rest
            self._running, self._abort = batch, False
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = []

    def _run(self, batch: list[Job]) -> None:
        try:
            rows = self._generate(batch)
        except Cancelled:
            with self._cond:
                self.cancelled_calls += 1
            for job in batch:
                job.done(None, Cancelled())
            return
        except Exception as e:
            if len(batch) > 1:  # one bad request must not fail the others: retry each alone
                for job in batch:
                    if not job.cancelled:
                        self._run([job])
                return
            batch[0].done(None, e)
            return
        for job in batch:
            job.done([rows[p] for p in job.prompts], None)

    def _generate(self, batch: list[Job]) -> dict[str, list[Completion]]:
        prompts = list(dict.fromkeys(p for job in batch for p in job.prompts))
        params = batch[0].params
        if not batch[0].seeded:
            params = dataclasses.replace(params, seed=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
        self.calls += 1
        out = self.backend.generate(prompts, params)
        if len(out) != len(prompts) or any(len(row) != params.n for row in out):
            raise BadBackendResult("backend returned the wrong number of completions")
        return dict(zip(prompts, out))
