"""Where a local torch model runs and how much of it fits: device and dtype resolution, and the row caps.

Separate from the sampling loop because the backends (``models/tiny.py``, ``models/hf.py``), the
learned verifiers and the trainers resolve devices and dtypes the same way without ever sampling.
``"auto"`` picks CUDA when it is there and bf16 on GPUs that compute in it natively; a device or
dtype this machine cannot honour is a :class:`~deliberate.errors.DeliberateError` naming the fix.
The engine runs where the model's parameters are; the default row cap per forward is device-aware
(:data:`DEFAULT_MAX_BATCH`), and on CUDA a chunk is further capped so its KV cache fits in
:data:`KV_MEMORY_FRACTION` of the free GPU memory (see ``Engine.rows_per_chunk``).
"""

from __future__ import annotations

import torch

from deliberate.errors import DeliberateError

#: default rows per forward when the caller gives no ``max_batch_size``, by device type. A GPU is
#: latency-bound for small models, so more rows per step is nearly free there; on CPU the cost grows
#: with the rows, and 64 keeps the per-step latency (and the search's rounds) short.
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 256, "mps": 64}
#: on CUDA a chunk's KV cache (all rows x (longest prompt + max_tokens) positions) may use at most this
#: fraction of the GPU memory free when the chunk starts; chunks are split further when it would not
KV_MEMORY_FRACTION = 0.5
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | int | torch.device | None = "auto", *, what: str = "engine") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` when CUDA is available, else ``cpu``; ``"cpu"``, ``"cuda"``,
    ``"cuda:1"`` (or just ``1``) and ``"mps"`` are checked against what this machine has."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool):
        raise DeliberateError(f"{what}: bad device {device!r} (use auto, cpu, cuda or cuda:N)")
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeliberateError(f"{what}: bad device {device!r} ({e}; use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeliberateError(f"{what}: device {str(device)!r} requested but CUDA is not available ({why}); "
                                  "use device=cpu or device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeliberateError(f"{what}: device {str(device)!r} requested but only "
                                  f"{torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeliberateError(f"{what}: device {str(device)!r} requested but MPS is not available")
    elif dev.type != "cpu":
        raise DeliberateError(f"{what}: device must be auto, cpu, cuda or cuda:N (got {str(device)!r})")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str = "cpu", *,
                  what: str = "engine") -> torch.dtype:
    """``"auto"``/``None`` -> bfloat16 on a CUDA GPU that computes in it natively (compute capability 8.0+,
    i.e. Ampere and newer), else float32; or one of ``float32``, ``bfloat16``, ``float16`` (``fp32``,
    ``bf16``, ``fp16``)."""
    dev = torch.device(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise DeliberateError(f"{what}: dtype must be float32, bfloat16 or float16 (got {dtype})")
        return dtype
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        if dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0):
            return torch.bfloat16
        return torch.float32
    key = dtype.strip().lower() if isinstance(dtype, str) else None
    if key not in DTYPE_NAMES:
        raise DeliberateError(f"{what}: dtype must be auto, float32, bfloat16 or float16 (got {dtype!r})")
    return DTYPE_NAMES[key]


def default_max_batch_size(device: torch.device | str, defaults: dict[str, int] | None = None) -> int:
    """The row cap per forward for ``device`` when the caller sets none (see :data:`DEFAULT_MAX_BATCH`)."""
    table = DEFAULT_MAX_BATCH if defaults is None else {**DEFAULT_MAX_BATCH, **defaults}
    return table.get(torch.device(device).type, table["cpu"])


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` name the same device (``cuda`` and ``cuda:N`` agree when N is current)."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    cur = torch.cuda.current_device()
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters of ``model``; size-dependent choices (fusing small models' weights) and run logs use it."""
    return sum(p.numel() for p in model.parameters())
