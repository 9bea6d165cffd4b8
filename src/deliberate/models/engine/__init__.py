"""The sampling engine for local torch causal LMs, one idea per module.

- ``engine.py``: :class:`Engine`, the batched sampling loop (seeding, chunking, stop strings, log-probs,
  token accounting) and :class:`EngineStats`;
- ``prefix_cache.py``: :class:`PrefixCache`, the byte-bounded LRU of KV reused across prompts that
  share a prefix;
- ``llama_runner.py``: :class:`LlamaRunner`, the static-cache forward for Llama-shaped models;
- ``hf_runner.py``: :class:`HFRunner`, the fallback through any transformers model's own forward;
- ``device.py``: device / dtype resolution and the default row caps, shared with the backends and
  trainers.

Callers import from here (``from deliberate.models.engine import Engine, resolve_device``).
"""

from deliberate.models.engine.device import (
    DEFAULT_MAX_BATCH,
    DTYPE_NAMES,
    KV_MEMORY_FRACTION,
    count_parameters,
    default_max_batch_size,
    resolve_device,
    resolve_dtype,
    same_device,
)
from deliberate.models.engine.engine import Engine, EngineStats, TokenizerLike
from deliberate.models.engine.hf_runner import HFRunner
from deliberate.models.engine.llama_runner import FUSE_MAX_PARAMS, LlamaRunner, SharedPrompts, is_llama_like
from deliberate.models.engine.prefix_cache import CacheEntry, PrefixCache

__all__ = ["DEFAULT_MAX_BATCH", "DTYPE_NAMES", "FUSE_MAX_PARAMS", "KV_MEMORY_FRACTION", "CacheEntry", "Engine",
           "EngineStats", "HFRunner", "LlamaRunner", "PrefixCache", "SharedPrompts", "TokenizerLike",
           "count_parameters", "default_max_batch_size", "is_llama_like", "resolve_device", "resolve_dtype",
           "same_device"]
