"""Which weights a run was made with: a fingerprint stored in a run's config and checked on resume.

A resume (``eval``, ``sweep``, ``label mc``, a recipe's ``--init``) that finds other weights behind the
same ``--model`` path would mix two models' samples in one run; :func:`model_fingerprint` of the backend
(or :func:`weights_fingerprint` of a checkpoint path) is stored when the run starts, and
:func:`check_fingerprint` refuses a resume whose weights differ, in one line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError

#: where a run's config / meta keeps :func:`model_fingerprint`
FINGERPRINT_KEY = "model_fingerprint"
#: Weight files totalling less than this are hashed in full: exact, and quick (~40 ms for 64 MiB).
#: Larger checkpoints (GBs; reading them on every resume would take minutes) contribute per file
#: its size, its mtime_ns, and its first and last SAMPLE_BYTES. Why the mtime: a fine-tune that
#: leaves both ends alone (frozen embeddings and head) still rewrites the file. Its cost: a copy of a
#: large checkpoint that does not keep mtimes (``cp`` without ``-p``) reads as changed weights.
FULL_HASH_BELOW = 64 * 2**20
SAMPLE_BYTES = 2**20
#: what counts as weights in a checkpoint directory (config, tokenizer and training state do not)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".npz")
NOT_WEIGHTS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "rng.pt", "training_args.bin")


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: ``path`` itself if it is a file, else the directory's
    top-level files with a weight suffix (every top-level file when none has one)."""
    if path.is_file():
        return [path]
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    weights = [f for f in files if f.suffix.lower() in WEIGHT_SUFFIXES and f.name not in NOT_WEIGHTS]
    return weights or files


def weights_fingerprint(path: str | os.PathLike) -> str | None:
    """``sha256:HEX`` of the weights at ``path`` (a checkpoint directory or a weights file), None when
    nothing is there. The same weights give the same fingerprint wherever they are (names are taken
    relative to the checkpoint); see :data:`FULL_HASH_BELOW` for what a large checkpoint's is made of."""
    p = Path(path).expanduser()
    if not p.exists():
        return None
    stats = [(f, f.stat()) for f in weight_files(p)]
    full = sum(st.st_size for _, st in stats) < FULL_HASH_BELOW
    h = hashlib.sha256(b"full\0" if full else b"sampled\0")
    for f, st in stats:
        h.update(f"{f.name}\0{st.st_size}\0".encode("utf-8", "surrogateescape"))
        with open(f, "rb") as fh:
            if full:
                for chunk in iter(lambda: fh.read(SAMPLE_BYTES), b""):
                    h.update(chunk)
                continue
            h.update(f"{st.st_mtime_ns}\0".encode())
            h.update(fh.read(SAMPLE_BYTES))
            if st.st_size > SAMPLE_BYTES:
                fh.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
                h.update(fh.read(SAMPLE_BYTES))
    return "sha256:" + h.hexdigest()


def tensors_fingerprint(model: Any) -> str:
    """``sha256:HEX`` of an in-memory torch model's state dict as held (names, dtypes, shapes, values;
    past :data:`FULL_HASH_BELOW` bytes in all, the first and last :data:`SAMPLE_BYTES` of each tensor).
    The dtype counts: the same weights cast to bfloat16 give other samples, so another fingerprint."""
    import torch  # only here: the model passed in is a torch module, so torch is already loaded

    tensors = [(k, v.detach()) for k, v in model.state_dict().items()]
    full = sum(t.numel() * t.element_size() for _, t in tensors) < FULL_HASH_BELOW
    h = hashlib.sha256(b"tensors-full\0" if full else b"tensors-sampled\0")
    for name, t in tensors:
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.reshape(-1)
        k = max(1, SAMPLE_BYTES // max(1, t.element_size()))
        parts = [flat] if full or flat.numel() <= 2 * k else [flat[:k], flat[-k:]]
        for part in parts:
            h.update(part.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def model_fingerprint(source: Any) -> str | None:
    """What stands for the weights of ``source`` (a backend, or an executor of :mod:`deliberate.executor`):

    - a backend with a checkpoint on disk (``.path``: tiny, hf): :func:`weights_fingerprint` of it;
    - one built around an in-memory model (``.model``, no checkpoint on disk, e.g. the hf ``smollm2``
      alias or a tiny model passed in): :func:`tensors_fingerprint`;
    - a remote OpenAI-compatible server (``.base_url``): ``served:<model id>``, the served model id,
      since its weights are out of reach (a server that swaps weights under one id goes unnoticed);
    - a Ray executor: the fingerprint of ``--model`` as this process sees it (a path only the workers
      have, or an alias, gives None);
    - anything else (a test's fake): None, and resumes are checked on the model name alone."""
    worker = getattr(source, "worker", None)
    if worker is not None:  # LocalExecutor: its backend is right here
        return model_fingerprint(worker.backend)
    spec = getattr(source, "spec", None)
    if spec is not None and hasattr(spec, "backend_kwargs"):  # RayExecutor: the workers build the backend
        if spec.backend == "openai":
            return f"served:{source.model_name()}"
        path = spec.backend_kwargs.get("path")
        return weights_fingerprint(path) if path else None
    if hasattr(source, "base_url"):
        return f"served:{source.model_name}"
    path = getattr(source, "path", None)
    if path is not None:
        fp = weights_fingerprint(path)
        if fp is not None:
            return fp
    model = getattr(source, "model", None)
    if hasattr(model, "state_dict"):
        return tensors_fingerprint(model)
    return None


def check_fingerprint(old: Mapping[str, Any], now: str | None, out: str | os.PathLike, model: str | None) -> None:
    """Refuse, in one line, to resume the run in ``out`` (whose config / meta is ``old``) when the
    weights changed since it started. A run written before fingerprints existed, or a model with
    none (:func:`model_fingerprint` is None), is resumed on its config alone."""
    was = old.get(FINGERPRINT_KEY)
    if was is None or now is None or was == now:
        return
    raise DeliberateError(f"{out} holds a run of {model or 'the model'} made with other weights (fingerprint "
                          f"{str(was)[:19]} on disk vs {now[:19]} now: the model changed under the same name); "
                          "use a new --out directory rather than mixing runs")
