"""Data-parallel training under ``accelerate launch`` (DDP), and a no-op stand-in for plain runs.

    accelerate launch --config_file configs/accelerate/cpu_ddp_2.yaml -m deliberate train sft ...

:func:`setup` returns a :class:`Dist`. Run without a launcher it is :class:`Single`: every method is
the identity or does nothing, accelerate is not even imported, and the recipes run exactly the code
they ran before (on the CPU: same numbers, byte-identical weights); ``--device`` (default ``auto``: a CUDA GPU when
there is one) only moves the model and each batch. Under ``accelerate launch`` (or ``torchrun``)
it is :class:`Accelerated`, a thin layer over ``accelerate.Accelerator``:

* ``shard(items)``: this rank's contiguous slice of a global list (a batch's examples, a step's
  problems); slices differ in size by at most one and, concatenated in rank order, give the list back;
* ``sum(*numbers)``: all-reduced sums (token counts, so the logs show global numbers);
* ``gather(items)``: every rank's list, concatenated in rank order, on every rank;
* ``prepare(model, optimizer)``: DDP wrapping (gloo on CPU, NCCL on GPUs: accelerate picks it);
  gradients are averaged over ranks in ``backward``;
* ``main_first()``, ``barrier()``, ``is_main``: only the main process writes logs, checkpoints and
  final models; the others wait.

Only data parallelism is supported: every rank holds the whole model and optimizer (the tiny model
is ~1M parameters; there is nothing to shard). FSDP / DeepSpeed launches are refused with a clear
message rather than run with checkpoints that would silently hold one shard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine.device import resolve_device

T = TypeVar("T")


def launched() -> bool:
    """True when this process was started by ``accelerate launch`` or ``torchrun``."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def is_main_process() -> bool:
    """Rank 0 of a launched job, or any plain process (for printing results once)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


class Dist:
    """What a training loop needs from data parallelism; see the module docstring."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """True when the loops must take the accelerate path (a launcher started this process)."""
        return self.accelerator is not None

    def shard(self, items: Sequence[T]) -> list[T] | Sequence[T]:
        return items

    def sum(self, *values: float) -> tuple:
        return values

    def gather(self, items: list[T]) -> list[T]:
        return items

    def barrier(self) -> None:
        pass

    @contextmanager
    def main_first(self) -> Iterator[None]:
        yield

    def place(self, model):
        return model

    def prepare(self, model, optimizer):
        return model, optimizer

    def unwrap(self, model):
        return model

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model):
        """Context in which ``backward`` accumulates gradients locally, without the all-reduce (gradient
        accumulation: the next synced ``backward`` reduces the sum)."""
        return contextlib.nullcontext()

    def clip_grad_norm_(self, model, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def close(self) -> None:
        pass


class Single(Dist):
    """A plain (unlaunched) process on one device: everything else is the identity; the recipes' original
    code runs. On the CPU (the default) placement is the identity too, so a CPU run is the code it always
    was; on a GPU the model and each batch are moved there."""

    def __init__(self, device: str | torch.device = "cpu", what: str = "train"):
        """``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (checked by :func:`resolve_device`)."""
        self.device = resolve_device(device, what=what)

    def place(self, model):
        return model.to(self.device)  # already there (the CPU case): the same object

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}  # tensors already there are not copied


_DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU")


class Accelerated(Dist):
    """One rank of a data-parallel job, over ``accelerate.Accelerator``."""

    def __init__(self, recipe: str):
        try:
            # lazy: accelerate is an optional dependency (the train extra), needed only under a launcher
            from accelerate import Accelerator
        except ImportError as e:  # pragma: no cover - accelerate is a dependency of the train extra
            raise DeliberateError(f"{recipe}: launched under a distributed launcher but accelerate is not "
                                  f"importable ({e}); pip install accelerate") from None
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        kind = self.accelerator.distributed_type.value if hasattr(self.accelerator.distributed_type, "value") \
            else str(self.accelerator.distributed_type)
        if kind not in _DATA_PARALLEL:
            raise DeliberateError(
                f"{recipe}: accelerate distributed_type {kind} is not supported by the tiny-model recipes, which are "
                f"data-parallel only (DDP: configs/accelerate/cpu_ddp_2.yaml, gpu_1.yaml, gpu_ddp_8.yaml, "
                f"multinode_2x8.yaml); FSDP / DeepSpeed configs are for sharded HF-scale models")
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device

    def shard(self, items: Sequence[T]) -> list[T]:
        lo, hi = shard_bounds(len(items), self.rank, self.world_size)
        return list(items[lo:hi])

    def sum(self, *values: float) -> tuple:
        if self.world_size == 1:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        t = self.accelerator.reduce(t, reduction="sum")
        return tuple(round(x) if isinstance(v, int) else x for v, x in zip(values, t.tolist()))

    def gather(self, items: list[T]) -> list[T]:
        if self.world_size == 1:
            return items
        from accelerate.utils import gather_object  # lazy: optional dependency, as in __init__

        return gather_object(list(items))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        with self.accelerator.main_process_first():
            yield

    def place(self, model):
        return model.to(self.device)

    def prepare(self, model, optimizer):
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def no_sync(self, model):
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, model, max_norm: float) -> None:
        self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def close(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def setup(recipe: str, device: str = "auto") -> Dist:
    """:class:`Accelerated` under ``accelerate launch`` / ``torchrun`` (the launcher's config places the
    ranks, so an explicit ``device`` is refused there), else :class:`Single` on ``device`` (``auto``: the GPU
    when CUDA is available, else the CPU; see :func:`deliberate.models.engine.device.resolve_device`)."""
    if launched():
        if device not in (None, "auto"):
            raise DeliberateError(f"{recipe}: --device {device} is for plain runs; under accelerate launch the "
                                  f"accelerate config places each rank (e.g. configs/accelerate/gpu_1.yaml, or "
                                  f"accelerate launch --cpu)")
        return Accelerated(recipe)
    return Single(device, what=recipe)

