"""Where the work of a sweep (or labelling run) executes: in this process, or sharded over Ray workers.

A long job is cut into *units* (a chunk of problems for one seed / strategy / budget). A unit is a
pure function of its inputs — the engine's sampling is seeded per (seed, prompt, sample index), so
which process runs a unit, and next to which other units, does not change what it returns. The
driver (the process running ``deliberate sweep``) is the only writer: it appends each unit's rows
to the resumable JSONL records when the unit comes back. Hence:

- ``--executor local`` (default) runs the units one after another with the backend of this process;
- ``--executor ray`` starts ``--workers`` Ray actors, each building its own backend, task and
  verifier from a picklable :class:`WorkerSpec` (a local model loaded once per worker, or a client
  of a shared OpenAI-compatible server), and hands each idle worker the next unit;
- a worker that dies (killed, out of memory, node lost) loses only the unit it was running: the
  driver starts a replacement worker and runs that unit again (up to ``max_unit_retries`` times),
  so nothing is lost and, because only the driver writes and only finished units are written,
  nothing is duplicated. An exception raised *by the unit's code* (bad data, a bug) is not retried:
  it would fail again; it is raised in the driver.

With the same seeds, ``--executor ray`` gives exactly the records of the in-process run (tested in
``tests/test_ray_executor.py``), provided every process uses the same number of torch threads
(``--worker-threads``; CPU matmul results may differ in the last bit between thread counts).

    deliberate sweep ... --executor ray --workers 2                        # local Ray on this machine
    deliberate sweep ... --executor ray --address ray://head:10001 --workers 16 --worker-gpus 1
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.plugins import ENV as PLUGINS_ENV
from deliberate.tasks.base import get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to rebuild the driver's backend, task and verifier by itself."""

    backend: str
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    #: builds the worker's verifier from its task, e.g. ``functools.partial(get_verifier, "prm:DIR",
    #: device="cpu")``: passed in rather than looked up here, because verifiers live a layer above the
    #: executor (rewards/ itself shards Monte-Carlo labelling through it); must be picklable
    verifier: Callable[..., Any] | None = None
    #: the driver's $DELIBERATE_PLUGINS (file paths made absolute), so workers register the same plug-in
    #: tasks / verifiers / backends; on a cluster those files or modules must exist on the workers too
    plugins: str = field(default_factory=lambda: os.environ.get(PLUGINS_ENV, ""))


class Worker:
    """Backend + task + verifier in one process; ``run(fn, unit)`` calls ``fn(worker, unit)``."""

    def __init__(self, backend, task, verifier=None):
        self.backend, self.task, self.verifier = backend, task, verifier

    @classmethod
    def from_spec(cls, spec: WorkerSpec, threads: int | None = None) -> Worker:
        if threads:
            import torch  # lazy: torch, only to set a worker's thread count; the executor itself never needs it

            torch.set_num_threads(int(threads))
        if spec.plugins:
            os.environ[PLUGINS_ENV] = spec.plugins  # read by the registries' plug-in loading
        task = get_task(spec.task, **spec.task_options)
        backend = get_backend(spec.backend, **spec.backend_kwargs)
        verifier = spec.verifier(task=task) if spec.verifier is not None else None
        return cls(backend, task, verifier)

    def run(self, fn: Callable[[Worker, Any], Any], unit: Any) -> Any:
        return fn(self, unit)

    def model_name(self) -> str:
        return self.backend.model_name

    def counters(self) -> dict[str, dict[str, int]]:
        """Engine and verifier counters of this worker (summed over workers by the executor)."""
        out: dict[str, dict[str, int]] = {}
        st = getattr(getattr(self.backend, "engine", None), "stats", None)
        if st is not None:
            out["engine"] = {k: int(v) for k, v in vars(st).items() if isinstance(v, int)}
        if self.verifier is not None:
            out["verifier"] = {k: v for k, v in self.verifier.stats.to_dict().items() if isinstance(v, (int, float))}
        return out

    def close(self) -> None:
        self.backend.close()


class LocalExecutor:
    """Runs units in order, in this process, on the caller's backend/task/verifier."""

    name = "local"

    def __init__(self, backend, task, verifier=None):
        self.worker = Worker(backend, task, verifier)
        self.stats = {"workers": 1, "units": 0, "worker_failures": 0, "units_retried": 0}

    def model_name(self) -> str:
        return self.worker.model_name()

    def map(self, fn: Callable[[Worker, Any], Any], units: Iterable[Any], on_result: Callable[[Any, Any], None]) -> None:
        for u in units:
            on_result(u, fn(self.worker, u))
            self.stats["units"] += 1

    def counters(self) -> dict[str, dict[str, int]]:
        return self.worker.counters()

    def close(self) -> None:  # the caller owns the backend
        pass


def _ray():
    try:
        import ray  # lazy: ray is an optional extra, needed only by --executor ray
    except ImportError:
        raise DeliberateError("--executor ray needs Ray: pip install 'ray>=2.9' "
                              "(or pip install -e '.[ray]')") from None
    return ray


class RayExecutor:
    """Shards units over Ray actors (one backend each); see the module docstring.

    ``address``: ``None`` starts (or joins) a local Ray instance; ``"auto"`` or ``"ray://host:10001"``
    joins a cluster. ``cpus``/``gpus`` are each worker's Ray resource request; ``threads`` the torch
    threads each worker uses (default: ``cpus``).
    """

    name = "ray"

    def __init__(self, spec: WorkerSpec, workers: int = 2, address: str | None = None, cpus: float = 1,
                 gpus: float = 0, threads: int | None = None, max_unit_retries: int = 3):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise DeliberateError(f"--workers must be an integer >= 1 (got {workers!r})")
        if not cpus > 0 or gpus < 0:
            raise DeliberateError(f"--worker-cpus must be > 0 and --worker-gpus >= 0 (got {cpus!r}, {gpus!r})")
        if not isinstance(max_unit_retries, int) or max_unit_retries < 0:
            raise DeliberateError(f"max_unit_retries must be an integer >= 0 (got {max_unit_retries!r})")
        ray = _ray()
        self.spec, self.max_unit_retries = spec, max_unit_retries
        self.threads = threads if threads is not None else max(1, int(cpus))
        self._started_ray = False
        if not ray.is_initialized():
            # the driver holds no model, so it needs no CPU of its own; workers get `cpus` each
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": False}
            if address is None:
                kwargs["num_cpus"] = max(os.cpu_count() or 1, int(workers * cpus + 0.999))
            ray.init(**kwargs)
            self._started_ray = True
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)(_RemoteWorker)
        self._actors = [self._new_actor() for _ in range(workers)]
        self.stats = {"workers": workers, "units": 0, "worker_failures": 0, "units_retried": 0}
        self._model_name: str | None = None
        self.model_name()  # fail here, with the worker's error, if a worker cannot build its backend

    def _new_actor(self):
        return self._actor_cls.remote(self.spec, self.threads)

    def model_name(self) -> str:
        if self._model_name is None:
            ray = _ray()
            try:
                self._model_name = ray.get(self._actors[0].model_name.remote())
            except ray.exceptions.RayTaskError as e:
                raise DeliberateError(f"a Ray worker could not start: {e.cause if e.cause else e}") from None
        return self._model_name

    def worker_pids(self) -> list[int]:
        ray = _ray()
        return ray.get([a.pid.remote() for a in self._actors])

    def map(self, fn: Callable[[Worker, Any], Any], units: Iterable[Any], on_result: Callable[[Any, Any], None]) -> None:
        ray = _ray()
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        pending = deque(enumerate(units))
        retries: dict[int, int] = {}
        idle = list(range(len(self._actors)))
        inflight: dict[Any, tuple[int, Any, int]] = {}
        try:
            while pending or inflight:
                while pending and idle:
                    slot = idle.pop()
                    i, u = pending.popleft()
                    inflight[self._actors[slot].run.remote(fn, u)] = (i, u, slot)
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    i, u, slot = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except lost as e:
                        self.stats["worker_failures"] += 1
                        retries[i] = retries.get(i, 0) + 1
                        if retries[i] > self.max_unit_retries:
                            raise DeliberateError(f"a unit of work failed on {retries[i]} Ray workers in a row; "
                                                  f"last error: {type(e).__name__}: {e}") from None
                        log.warning("Ray worker %d died (%s); running its unit again on a new worker",
                                    slot, type(e).__name__)
                        self.stats["units_retried"] += 1
                        self._actors[slot] = self._new_actor()
                        pending.appendleft((i, u))
                        idle.append(slot)
                        continue
                    except ray.exceptions.RayTaskError as e:
                        cause = e.cause if isinstance(e.cause, BaseException) else None
                        if cause is not None:
                            raise cause from None
                        raise
                    idle.append(slot)
                    self.stats["units"] += 1
                    on_result(u, res)
        finally:
            for ref in inflight:  # an error in the driver: do not leave units running
                ray.cancel(ref, force=True)

    def counters(self) -> dict[str, dict[str, int]]:
        ray = _ray()
        parts = []  # a worker that died took its counters with it
        for a in self._actors:
            try:
                parts.append(ray.get(a.counters.remote()))
            except ray.exceptions.RayActorError:
                pass
        out: dict[str, dict[str, int]] = {}
        for p in parts:
            for group, d in p.items():
                tgt = out.setdefault(group, {})
                for k, v in d.items():
                    tgt[k] = tgt.get(k, 0) + v
        return out

    def close(self) -> None:
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception as e:  # noqa: BLE001 - an actor that already died
                log.debug("ray.kill: %s", e)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


class _RemoteWorker:
    """The Ray actor: a :class:`Worker` built inside the actor's process from the spec."""

    def __init__(self, spec: WorkerSpec, threads: int | None):
        self.worker = Worker.from_spec(spec, threads)

    def run(self, fn: Callable[[Worker, Any], Any], unit: Any) -> Any:
        return fn(self.worker, unit)

    def model_name(self) -> str:
        return self.worker.model_name()

    def pid(self) -> int:
        return os.getpid()

    def counters(self) -> dict[str, dict[str, int]]:
        return self.worker.counters()


def progress_bar(total: int, desc: str, unit: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress or total == 0,
                dynamic_ncols=True)


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
