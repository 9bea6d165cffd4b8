"""Batched, KV-cached sampling engine for local torch causal LMs.

Why our own loop instead of ``transformers.generate``: search and verification need things
``generate`` does not give cheaply — batch-invariant seeding (sample ``j`` of prompt ``p`` is the same
whatever else is in the batch, see :mod:`deliberate.models.sampling`), one shared prefill for the ``n``
samples of a prompt, per-token log-probs, stop strings, exact token accounting, and dropping finished
rows from the batch. For Llama-architecture models (the tiny model, SmolLM2, Llama/Qwen-style
checkpoints) attention runs over a preallocated static cache with our own RoPE + SDPA; any other
transformers causal LM falls back to its own forward with a ``DynamicCache``.

Automatic prefix caching (Llama path only): after each batch the KV of every row's processed tokens
(prompt + generated tokens that were fed back) is kept in a byte-bounded LRU :class:`PrefixCache`
keyed by token ids. A later prompt that shares a prefix with a cached row — step-level search
re-submits ``prompt + partial_solution`` every round, each one extending a row of the previous round —
copies that KV into its batch slots and prefills only the remaining tokens. Outputs are the same as
without the cache up to float noise (see ``tests/test_prefix_cache.py``).

Devices (see :func:`resolve_device`, :func:`resolve_dtype`): the engine runs where the model's
parameters are (CPU, or CUDA in any dtype; a bf16 model gets a bf16 KV cache). Logits leave the model
as float32 and sampling runs in float64 whatever the model dtype. Each sequence's uniforms come from
its own seeded CPU ``torch.Generator`` and are moved to the device once per batch, so the random
stream is the same on every device; samples agree across devices (and, on CUDA, across batch sizes)
up to float noise in the logits -- exactly on CPU. On CUDA the decode loop synchronises with the host
once per step, to read the sampled tokens (stop checks and EOS need them), and otherwise only when
rows leave the batch; prefill runs SDPA (no materialised score matrix) and the batch is not split into
row groups (kernel launches, not FLOPs, are what a small model pays for on a GPU). The default row cap
per forward is device-aware (:data:`DEFAULT_MAX_BATCH`), and on CUDA a chunk is further capped so its
KV cache fits in :data:`KV_MEMORY_FRACTION` of the free GPU memory.

Measured against ``transformers.generate``: ``python benchmarks/engine_vs_generate.py`` (CPU) and
``python benchmarks/gpu_engine.py`` (CUDA, bf16, a ~135M-parameter Llama); prefix caching in a
simulated beam search: ``python benchmarks/prefix_cache.py``.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F

from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.types import Completion


class TokenizerLike(Protocol):
    """What the engine needs from a tokenizer (the tiny char tokenizer and an HF adapter both fit)."""

    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class EngineStats:
    """Work actually done: prompt tokens computed in prefill, prompt tokens whose KV came from the
    prefix cache instead (not computed), decode steps x rows, forward calls."""

    prefill_tokens: int = 0
    cached_tokens: int = 0
    decode_tokens: int = 0
    forward_calls: int = 0

    def reset(self) -> None:
        self.prefill_tokens = self.cached_tokens = self.decode_tokens = self.forward_calls = 0


# --------------------------------------------------------------------------------------------
# Devices and dtypes
# --------------------------------------------------------------------------------------------

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


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    cur = torch.cuda.current_device()
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


# --------------------------------------------------------------------------------------------
# Prefix cache: KV of already-processed token sequences, reused by later prompts that share a prefix.
# --------------------------------------------------------------------------------------------

_BLOCK = 16  # prefix lookups are indexed every _BLOCK tokens, then extended token by token


def _chain_hashes(tokens: Sequence[int]) -> list[int]:
    """``h[i]`` identifies ``tokens[:i + 1]``; each is one step from the previous, so all are O(n)."""
    out, h = [], 0
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


@dataclass(eq=False)
class _CacheEntry:
    tokens: tuple[int, ...]
    k: torch.Tensor  # [n_layers, n_kv, len, head_dim]
    v: torch.Tensor
    nbytes: int
    blocks: list[int]  # chained hash at each full _BLOCK boundary
    end: int  # chained hash of the whole token sequence


class PrefixCache:
    """Byte-bounded LRU of per-sequence KV, looked up by longest common token prefix.

    Why longest *common* prefix rather than "an entry that is a prefix of the prompt": causal
    attention makes the KV of a sequence's first ``m`` tokens depend on those tokens only, so any
    entry sharing ``m`` leading tokens with a prompt serves those ``m`` — sibling partial solutions of
    one question share the question's KV even though neither is a prefix of the other. An entry that
    is a strict prefix of a newer one is therefore dominated and dropped on insert; a new sequence
    already covered by an entry is not stored again. Lookups walk an index of chained hashes taken
    every ``_BLOCK`` tokens (so shared prefixes shorter than ``_BLOCK`` are not reused, and sequences
    shorter than that are never stored) and then compare token by token. Entries that share a
    prefix each hold their own copy of its KV (no block sharing as in vLLM): simple, at some memory
    cost, and ``bytes`` never exceeds ``max_bytes``.
    """

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise DeliberateError(f"prefix_cache_bytes must be an integer >= 0 (got {max_bytes!r})")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, _CacheEntry] = OrderedDict()  # LRU order, oldest first
        self._by_block: dict[int, set[int]] = {}
        self._by_end: dict[int, set[int]] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._by_block.clear()
        self._by_end.clear()
        self.bytes = 0

    def lookup(self, tokens: Sequence[int], hashes: list[int] | None = None) -> tuple[_CacheEntry | None, int]:
        """The entry sharing the longest leading run with ``tokens`` and that run's length (marks it used)."""
        eid, m = self._longest(tokens, _chain_hashes(tokens) if hashes is None else hashes)
        if eid is None:
            return None, 0
        self._entries.move_to_end(eid)
        return self._entries[eid], m

    def insert(self, tokens: Sequence[int], nbytes: int,
               extract: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Store the KV of ``tokens`` (``extract()`` clones it out of the batch only when it is kept).

        Returns whether a new entry was stored. Evicts least-recently-used entries to stay in budget.
        """
        n = len(tokens)
        if n < _BLOCK or nbytes > self.max_bytes:
            return False
        tokens = tuple(tokens)
        hs = _chain_hashes(tokens)
        eid, m = self._longest(tokens, hs)
        if eid is not None and m == n:  # already covered by an equal or longer entry
            self._entries.move_to_end(eid)
            return False
        for i in range(_BLOCK - 1, n):  # drop stored strict prefixes of this sequence: it serves them all
            for old in list(self._by_end.get(hs[i], ())):
                if self._entries[old].tokens == tokens[:i + 1]:
                    self._remove(old)
        while self.bytes + nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        k, v = extract()
        if k.shape[2] != n or v.shape[2] != n:
            raise DeliberateError(f"prefix cache: KV for {k.shape[2]} positions stored under {n} tokens")
        eid = self._next_id
        self._next_id += 1
        e = _CacheEntry(tokens, k, v, nbytes, [hs[j * _BLOCK - 1] for j in range(1, n // _BLOCK + 1)], hs[-1])
        self._entries[eid] = e
        for h in e.blocks:
            self._by_block.setdefault(h, set()).add(eid)
        self._by_end.setdefault(e.end, set()).add(eid)
        self.bytes += nbytes
        return True

    def _longest(self, tokens: Sequence[int], hs: list[int]) -> tuple[int | None, int]:
        n = len(tokens)
        depth = 0  # deepest block boundary some entry shares (sharing block j implies sharing j - 1)
        while (depth + 1) * _BLOCK <= n and hs[(depth + 1) * _BLOCK - 1] in self._by_block:
            depth += 1
        if depth == 0:
            return None, 0
        base = depth * _BLOCK
        best, best_m = None, 0
        for eid in self._by_block[hs[base - 1]]:
            et = self._entries[eid].tokens
            m, lim = base, min(n, len(et))
            while m < lim and et[m] == tokens[m]:
                m += 1
            if m > best_m:
                best, best_m = eid, m
        # the hash index only proposes; the tokens decide (guards against hash collisions)
        if best is None or self._entries[best].tokens[:best_m] != tuple(tokens[:best_m]):
            return None, 0
        return best, best_m

    def _remove(self, eid: int) -> None:
        e = self._entries.pop(eid)
        self.bytes -= e.nbytes
        for h in e.blocks:
            ids = self._by_block[h]
            ids.discard(eid)
            if not ids:
                del self._by_block[h]
        ids = self._by_end[e.end]
        ids.discard(eid)
        if not ids:
            del self._by_end[e.end]


# --------------------------------------------------------------------------------------------
# Runners: prefill a left-padded batch, then decode one token per row per step.
# --------------------------------------------------------------------------------------------


def _is_llama_like(model: torch.nn.Module) -> bool:
    """Models whose layers look exactly like HF Llama (q/k/v/o proj, RMSNorms, gated MLP, RoPE)."""
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return False
    if getattr(cfg, "model_type", None) not in ("llama", "mistral", "qwen2"):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama":
        return False
    layer = inner.layers[0]
    att = layer.self_attn
    return all(hasattr(att, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(layer, "mlp")


class _LlamaRunner:
    """Static-cache decoding over a Llama-style HF model's own weights and submodules."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        cfg = model.config
        self.inner = model.model
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # the output head: lm_head for causal LMs, `score` for token-classification reward models
        head = getattr(model, "lm_head", None)
        self.head = head if head is not None else model.score
        rot = self.inner.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self.fused = _fused_weights(model)
        # device-aware kernels: on CUDA one row group (fewer launches) and SDPA in prefill (no
        # [rows, heads, L, P] score matrix); on CPU four row groups and explicit matmuls (faster there)
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.row_groups = 1 if on_cuda else 4
        self.sdpa = on_cuda

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V that one position occupies across all layers (prefix-cache accounting)."""
        return 2 * self.n_layers * self.n_kv * self.head_dim * next(self.model.parameters()).element_size()

    def start(self, ids: torch.Tensor, pad: torch.Tensor, total_len: int,
              reuse: Sequence[tuple[torch.Tensor, torch.Tensor, int] | None] | None = None,
              all_logits: bool = False) -> torch.Tensor:
        """Prefill ``ids`` [B, P] (left-padded by ``pad`` [B]); returns last-position logits [B, V], or with
        ``all_logits`` the logits of every computed position, packed row by row in slot order [N, V].

        ``reuse[b] = (K, V, m)`` gives row ``b``'s first ``m`` real tokens' KV (``[n_layers, n_kv, >=m,
        head_dim]``, from the prefix cache): those slots are copied, not computed, and only the rest
        of the row runs through the model. ``m`` must leave at least the row's last token to compute.
        """
        B, P = ids.shape
        dev = ids.device
        dtype = next(self.model.parameters()).dtype
        self.T = total_len
        # uninitialised: every slot is written (zeros for padding, cached KV, prefill or decode)
        # before any query attends to it
        # K is stored transposed ([.., head_dim, T]): a decode query times K is then a plain GEMV over
        # contiguous rows, ~2x faster on CPU than against K^T of a [.., T, head_dim] cache
        self.k = torch.empty(self.n_layers, B, self.n_kv, self.head_dim, total_len, dtype=dtype, device=dev)
        self.v = torch.empty(self.n_layers, B, self.n_kv, total_len, self.head_dim, dtype=dtype, device=dev)
        self.pad = pad.clone()
        pads = pad.tolist()
        self.pads = list(pads)  # host copy of `pad`: row grouping never reads the device
        self.len = P
        self.shared = None  # set by share(): prompt KV held once per prompt, see there
        t = torch.arange(total_len, device=dev, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(dev))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.rope_scale).to(dtype)
        self.sin = (emb.sin() * self.rope_scale).to(dtype)
        first = list(pads)  # first slot of each row that is computed
        for b in range(B):
            if pads[b]:
                # padding keys get zero weight, but 0 * garbage could be NaN: make them finite
                self.k[:, b, :, :, :pads[b]] = 0
                self.v[:, b, :, :pads[b]] = 0
            r = reuse[b] if reuse is not None else None
            if r is not None and r[2] > 0:
                K, V, m = r
                if m >= P - pads[b] or K.shape[2] < m:
                    raise DeliberateError(f"prefix reuse of {m} tokens does not leave a token to compute "
                                          f"in a row of {P - pads[b]}")
                self.k[:, b, :, :, pads[b]:pads[b] + m] = K[:, :, :m].transpose(-1, -2)
                self.v[:, b, :, pads[b]:pads[b] + m] = V[:, :, :m]
                first[b] += m
        q0 = min(first)  # queries run over slots [q0, P): everything before is padding or cached
        qslots = torch.arange(q0, P, device=dev)
        kslots = torch.arange(P, device=dev)
        pos = (qslots[None, :] - self.pad[:, None]).clamp(min=0)  # [B, Lq]
        compute = qslots[None, :] >= torch.tensor(first, device=dev)[:, None]  # [B, Lq] tokens to run
        valid = kslots[None, :] >= self.pad[:, None]  # key is a real token (cached or computed)
        causal = qslots[:, None] >= kslots[None, :]  # [Lq, P]
        mask = causal[None, None] & valid[:, None, None, :]  # [B, 1, Lq, P]
        # padded query rows see nothing valid; let them attend to themselves to avoid NaNs
        mask = mask | (qslots[:, None] == kslots[None, :])[None, None]
        return self._prefill(ids[:, q0:], pos, q0, mask, compute, all_logits)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row [B]; returns next-token logits [B, V]."""
        s = self.len
        dev = tokens.device
        pos = (s - self.pad)[:, None]
        if self.shared is not None:
            return self._decode_shared(tokens, pos, s)
        slots = torch.arange(s + 1, device=dev)
        mask = (slots[None, :] >= self.pad[:, None])[:, None, None, :]  # [B,1,1,s+1]
        return self._decode(tokens[:, None], pos, s, mask)

    def select(self, rows: torch.Tensor, host: Sequence[int] | None = None) -> None:
        """Keep only ``rows`` of the batch (drop finished sequences / expand shared prefills).

        ``host``: the same indices as a list, when the caller has them (saves a device read)."""
        host = rows.tolist() if host is None else list(host)
        if self.shared is not None:
            sh = self.shared
            sh.regroup(sh.group.index_select(0, rows), [sh.group_host[r] for r in host])
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        self.pad = self.pad.index_select(0, rows)
        self.pads = [self.pads[r] for r in host]

    def share(self, rows: torch.Tensor, host: Sequence[int] | None = None) -> None:
        """Expand the prefilled batch to ``rows`` (prefill row of each new row, non-decreasing) *without*
        copying the prompts' KV: each prompt's KV stays stored once, and decode attention runs the
        queries of all samples of a prompt against it as one matrix product (one read of the prompt's
        KV per step instead of one per sample: the cascade / Hydragen split). The tokens generated
        from here on go to a per-row cache, and softmax runs over the concatenated scores, so the
        result is the same attention as over one contiguous cache."""
        P = self.len
        host = rows.tolist() if host is None else list(host)
        self.shared = _SharedPrompts(self.k[..., :P], self.v[:, :, :, :P], self.pad, self.pads, rows, host)
        self.pad = self.pad.index_select(0, rows)
        self.pads = [self.pads[r] for r in host]
        B, S = rows.numel(), self.T - P
        self.k = self.k.new_empty(self.n_layers, B, self.n_kv, self.head_dim, S)
        self.v = self.v.new_empty(self.n_layers, B, self.n_kv, S, self.head_dim)

    def row_kv(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of batch row ``b``'s K and V for every real position so far: [n_layers, n_kv, len, head_dim]."""
        lo = self.pads[b]
        sh = self.shared
        if sh is None:
            return (self.k[:, b, :, :, lo:self.len].transpose(-1, -2).contiguous(),
                    self.v[:, b, :, lo:self.len].clone())
        g, P = sh.group_host[b], sh.P
        m = self.len - P
        k = torch.cat([sh.k[:, g, :, :, lo:], self.k[:, b, :, :, :m]], dim=-1)
        v = torch.cat([sh.v[:, g, :, lo:], self.v[:, b, :, :m]], dim=-2)
        return k.transpose(-1, -2).contiguous(), v

    def _prefill(self, ids: torch.Tensor, pos: torch.Tensor, start: int, mask: torch.Tensor,
                 keep: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Run the ``keep`` tokens of ``ids`` [B, L] (slots ``start..start+L``) and write their KV.

        The per-token work (norms, projections, MLP) runs on those tokens only, packed; attention
        runs as masked matmuls of the padded [B, L] query layout against all cache slots before
        ``start + L`` — including KV copied in from the prefix cache, which is never recomputed.
        """
        B, L = ids.shape
        end = start + L
        flat = keep.reshape(-1).nonzero().squeeze(-1)
        rows = flat // L
        slots = flat % L + start
        x = self.inner.embed_tokens(ids.reshape(-1).index_select(0, flat))  # [N, d]
        cos = self.cos[pos].reshape(B * L, -1).index_select(0, flat)[:, None]  # [N,1,hd]
        sin = self.sin[pos].reshape(B * L, -1).index_select(0, flat)[:, None]
        bias = None if self.sdpa else \
            torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        # per group of rows: (first row, end row, first query column, first key slot)
        n_rows = keep.sum(dim=1).tolist()
        pads = self.pads
        size = -(-B // (1 if B < 16 else self.row_groups))
        groups = [(b0, min(B, b0 + size), L - max(n_rows[b0:b0 + size]), min(pads[b0:b0 + size]))
                  for b0 in range(0, B, size)]
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._qkv(i, layer, layer.input_layernorm(x), cos, sin)
            qp = q.new_zeros(B * L, self.n_heads, self.head_dim).index_copy_(0, flat, q)
            qp = qp.view(B, L, self.n_heads, self.head_dim).transpose(1, 2) * self.head_dim ** -0.5
            # write only the computed tokens' KV: the other slots hold padding zeros or cached KV
            self.k[i].permute(0, 3, 1, 2)[rows, slots] = k
            self.v[i].transpose(1, 2)[rows, slots] = v
            K, V = self.k[i, :, :, :, :end], self.v[i, :, :, :end]
            if self.n_kv != self.n_heads:
                K, V = (t.repeat_interleave(self.n_heads // self.n_kv, dim=1) for t in (K, V))
            # explicit masked attention, by groups of rows: rows come longest prompt first, so a group
            # skips the query and key slots that are padding (or cached, for queries) in all its rows
            o = qp.new_zeros(qp.shape)
            for b0, b1, qlo, klo in groups:
                if self.sdpa:  # fused kernel: the same masked softmax, never materialising the scores
                    o[b0:b1, :, qlo:] = F.scaled_dot_product_attention(
                        qp[b0:b1, :, qlo:], K[b0:b1, ..., klo:].transpose(-1, -2).contiguous(),
                        V[b0:b1, :, klo:], attn_mask=mask[b0:b1, :, qlo:, klo:], scale=1.0)
                    continue
                w = torch.softmax((qp[b0:b1, :, qlo:] @ K[b0:b1, ..., klo:]).add_(bias[b0:b1, :, qlo:, klo:]), dim=-1)
                o[b0:b1, :, qlo:] = w @ V[b0:b1, :, klo:]
            o = o.transpose(1, 2).reshape(B * L, self.n_heads * self.head_dim).index_select(0, flat)
            x = x + layer.self_attn.o_proj(o)
            x = x + self._mlp(i, layer, layer.post_attention_layernorm(x))
        self.len = end
        if all_logits:
            return self.head(self.inner.norm(x)).float()
        last = keep.sum(dim=1).cumsum(0) - 1  # each row's last real token (the last slot) in the packing
        x = self.inner.norm(x.index_select(0, last))
        return self.head(x).float()

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        B = ids.shape[0]
        end = start + 1
        x = self.inner.embed_tokens(ids[:, 0])  # [B, d]
        cos = self.cos[pos[:, 0]][:, None]  # [B,1,hd]
        sin = self.sin[pos[:, 0]][:, None]
        # additive mask, built once per step rather than per layer
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        groups = self._groups(B)
        g = self.n_heads // self.n_kv
        scale = self.head_dim ** -0.5
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._qkv(i, layer, layer.input_layernorm(x), cos, sin)
            self.k[i, :, :, :, start] = k
            self.v[i, :, :, start] = v
            qg = q.reshape(B, self.n_kv, g, self.head_dim) * scale  # heads sharing a kv head
            outs = []
            # plain matmuls are ~2x faster than SDPA's masked CPU kernel for one query; rows are sorted
            # longest prompt first, so each group of rows can skip the slots that are padding for all of it
            for b0, b1, lo in groups:
                K, V = self.k[i, b0:b1, :, :, lo:end], self.v[i, b0:b1, :, lo:end]
                w = torch.softmax((qg[b0:b1] @ K).add_(bias[b0:b1, ..., lo:end]), dim=-1)
                outs.append(w @ V)
            o = (outs[0] if len(outs) == 1 else torch.cat(outs)).reshape(B, self.n_heads * self.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = x + self._mlp(i, layer, layer.post_attention_layernorm(x))
        self.len = end
        x = self.inner.norm(x)
        return self.head(x).float()

    def _decode_shared(self, tokens: torch.Tensor, pos: torch.Tensor, start: int) -> torch.Tensor:
        """One decode step with the prompt KV held once per prompt (see ``share``)."""
        sh = self.shared
        B = tokens.shape[0]
        m = start - sh.P  # generated tokens already in the per-row cache; this step's goes to slot m
        x = self.inner.embed_tokens(tokens)  # [B, d]
        cos = self.cos[pos[:, 0]][:, None]
        sin = self.sin[pos[:, 0]][:, None]
        g = self.n_heads // self.n_kv
        scale = self.head_dim ** -0.5
        lo = sh.lo
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._qkv(i, layer, layer.input_layernorm(x), cos, sin)
            self.k[i, :, :, :, m] = k
            self.v[i, :, :, m] = v
            qg = q.reshape(B, self.n_kv, g, self.head_dim) * scale
            # prompt part: per prompt, [kv, samples*g, hd] @ [kv, hd, P] -- one GEMM per prompt and head
            sp = sh.from_rows(qg) @ sh.k[i, :, :, :, lo:]
            sp = sh.to_rows(sp.add_(sh.bias))  # [B, kv, g, P - lo]
            ss = qg @ self.k[i, :, :, :, :m + 1]  # generated part, per row
            w = torch.softmax(torch.cat([sp, ss], dim=-1), dim=-1)
            Pl = sp.shape[-1]
            o = sh.to_rows(sh.from_rows(w[..., :Pl]) @ sh.v[i, :, :, lo:])
            o = o.add_(w[..., Pl:] @ self.v[i, :, :, :m + 1]).reshape(B, self.n_heads * self.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = x + self._mlp(i, layer, layer.post_attention_layernorm(x))
        self.len = start + 1
        return self.head(self.inner.norm(x)).float()

    def _qkv(self, i: int, layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [N, heads, hd], k and v [N, kv_heads, hd] of ``h`` [N, d], with RoPE (``cos``/``sin`` [N, 1, hd])."""
        N = h.shape[0]
        if self.fused is None:
            att = layer.self_attn
            q = att.q_proj(h).view(N, self.n_heads, self.head_dim)
            k = att.k_proj(h).view(N, self.n_kv, self.head_dim)
            v = att.v_proj(h).view(N, self.n_kv, self.head_dim)
            return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v
        # one projection for q, k and v, and RoPE applied to q and k together
        fw = self.fused[i]
        qkv = F.linear(h, fw.wqkv, fw.bqkv).view(N, self.n_heads + 2 * self.n_kv, self.head_dim)
        nqk = self.n_heads + self.n_kv
        qk = qkv[:, :nqk]
        qk = qk * cos + _rotate_half(qk) * sin
        return qk[:, :self.n_heads], qk[:, self.n_heads:], qkv[:, nqk:]

    def _mlp(self, i: int, layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.fused is None:
            return layer.mlp(h)
        fw = self.fused[i]
        gu = F.linear(h, fw.wgu, fw.bgu)
        return layer.mlp.down_proj(layer.mlp.act_fn(gu[:, :fw.inter]) * gu[:, fw.inter:])

    def _groups(self, B: int) -> list[tuple[int, int, int]]:
        """Split the batch into contiguous row groups with their first non-padding slot.

        Only when rows are sorted by padding (the engine sorts them longest prompt first) does a group
        skip anything; otherwise every group starts at its smallest padding, which is still exact.
        """
        n = 1 if B < 16 else self.row_groups
        size = -(-B // n)
        pads = self.pads
        return [(b0, min(B, b0 + size), min(pads[b0:b0 + size])) for b0 in range(0, B, size)]


class _SharedPrompts:
    """Prompt KV stored once per prompt, and the maps between the decode batch's rows (grouped by
    prompt, groups in prompt order) and a [prompts, kv, max_samples * g, .] layout for batched GEMMs."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor, pads: Sequence[int],
                 group: torch.Tensor, group_host: Sequence[int]):
        self.k, self.v = k, v  # [L, G, kv, hd, P], [L, G, kv, P, hd]
        self.G, self.P = k.shape[1], k.shape[-1]
        self.lo = min(pads)  # slots before this are padding in every prompt
        slots = torch.arange(self.lo, self.P, device=k.device)
        bias = torch.zeros(self.G, 1, 1, self.P - self.lo, dtype=k.dtype, device=k.device)
        self.bias = bias.masked_fill_((slots[None, :] < pad[:, None])[:, None, None, :], float("-inf"))
        self.regroup(group, group_host)

    def regroup(self, group: torch.Tensor, group_host: Sequence[int]) -> None:
        """``group`` [B]: each row's prompt; ``group_host``: the same on the host (the layout is
        computed there, so regrouping reads nothing back from the device)."""
        g = list(group_host)
        if any(a > b for a, b in itertools.pairwise(g)):
            raise DeliberateError("rows sharing a prompt must stay grouped, in prompt order")
        counts = [0] * self.G
        for x in g:
            counts[x] += 1
        self.n = max(1, max(counts, default=0))
        first, acc = [], 0
        for c in counts:  # first row of each group
            first.append(acc)
            acc += c
        self.group, self.group_host = group, g
        # row -> flat index in the [G * n] layout
        self.pos = torch.tensor([x * self.n + r - first[x] for r, x in enumerate(g)], dtype=torch.long,
                                device=group.device)
        self.dense = len(g) == self.G * self.n  # every prompt has n rows: no scatter needed

    def from_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[B, kv, g, X] -> [G, kv, n * g, X] (rows a prompt lacks are zeros)."""
        _, kv, g, X = t.shape
        if not self.dense:
            t = t.new_zeros(self.G * self.n, kv, g, X).index_copy_(0, self.pos, t)
        return t.view(self.G, self.n, kv, g, X).transpose(1, 2).reshape(self.G, kv, self.n * g, X)

    def to_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of ``from_rows``: [G, kv, n * g, X] -> [B, kv, g, X]."""
        G, kv, ng, X = t.shape
        t = t.view(G, kv, self.n, ng // self.n, X).transpose(1, 2).reshape(G * self.n, kv, ng // self.n, X)
        return t if self.dense else t.index_select(0, self.pos)


@dataclass
class _FusedLayer:
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wgu: torch.Tensor
    bgu: torch.Tensor | None
    inter: int


# fused projection weights per model, rebuilt when any source weight changes (in-place optimizer steps
# bump a tensor's version counter)
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# fusing saves per-op overhead, which only matters for small models; above this it would just add
# a second copy of the attention and MLP weights
FUSE_MAX_PARAMS = 20_000_000


def _fused_weights(model: torch.nn.Module) -> list[_FusedLayer] | None:
    """Concatenated q|k|v and gate|up weights for each layer, or None where they do not apply."""
    if count_parameters(model) > FUSE_MAX_PARAMS:
        return None
    layers = model.model.layers
    srcs = []
    for layer in layers:
        att, mlp = layer.self_attn, layer.mlp
        if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return None
        mods = (att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj)
        if not all(isinstance(m, torch.nn.Linear) for m in mods):
            return None
        srcs.append(mods)
    key = tuple((p.data_ptr(), p._version) for mods in srcs for m in mods for p in m.parameters())
    hit = _FUSED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]

    def cat_bias(mods):
        if all(m.bias is None for m in mods):
            return None
        return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])

    with torch.no_grad():
        fused = [_FusedLayer(torch.cat([m.weight for m in mods[:3]]), cat_bias(mods[:3]),
                             torch.cat([m.weight for m in mods[3:]]), cat_bias(mods[3:]), mods[3].out_features)
                 for mods in srcs]
    _FUSED[model] = (key, fused)
    return fused


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class _HFRunner:
    """Fallback for any transformers causal LM: its own forward with a DynamicCache."""

    def __init__(self, model: torch.nn.Module):
        import inspect

        self.model = model
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.x renamed past_key_values -> cache
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def start(self, ids: torch.Tensor, pad: torch.Tensor, total_len: int) -> torch.Tensor:
        from transformers import DynamicCache

        P = ids.shape[1]
        slots = torch.arange(P, device=ids.device)
        self.attn = (slots[None, :] >= pad[:, None]).long()
        self.pad = pad.clone()
        self.len = P
        self.cache = DynamicCache()
        pos = (slots[None, :] - pad[:, None]).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=self.attn, position_ids=pos,
                         use_cache=True, **{self.cache_kw: self.cache})
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        self.attn = torch.cat([self.attn, self.attn.new_ones(B, 1)], dim=1)
        pos = (self.len - self.pad)[:, None]
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=pos,
                         use_cache=True, **{self.cache_kw: self.cache})
        self.len += 1
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor, host: Sequence[int] | None = None) -> None:
        self.attn = self.attn.index_select(0, rows)
        self.pad = self.pad.index_select(0, rows)
        for layer in self.cache.layers:  # transformers >= 4.56 cache layout
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    prompt_idx: int
    sample_idx: int
    prompt_len: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish: str | None = None


class Engine:
    """Generate continuations for prompts with a local causal LM (see module docstring).

    ``Engine(model, tokenizer).generate(prompts, SamplingParams(n=8, temperature=0.8, seed=1))``

    ``prefix_cache_bytes`` bounds the automatic prefix cache (Llama-style models only; 0 disables it).
    The cache is dropped whenever the model's parameters change (in-place updates included), so an
    engine kept across training steps never serves stale KV.

    ``device``: where to run; ``None`` (default) is wherever the model's parameters are. The engine
    never moves the model: a ``device`` that differs from the model's is an error (the backends move
    and cast the model, see :func:`resolve_device`). ``max_batch_size``: rows per forward; ``None``
    takes :data:`DEFAULT_MAX_BATCH` for the device (64 on CPU, 256 on CUDA), and on CUDA chunks are
    capped further so their KV cache fits the free GPU memory (:data:`KV_MEMORY_FRACTION`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: TokenizerLike, *,
                 device: str | torch.device | None = None, max_batch_size: int | None = None,
                 eos_token_ids: Sequence[int] | None = None, prefix_cache_bytes: int = 256 * 2**20):
        self.model = model.eval()
        self.tokenizer = tokenizer
        first = next(model.parameters(), None)
        where = first.device if first is not None else torch.device("cpu")
        if device is None:
            self.device = where
        else:
            self.device = resolve_device(device)
            if not _same_device(self.device, where):
                raise DeliberateError(f"engine: the model is on {where} but device={str(device)!r}; "
                                      f"move the model first (model.to({str(device)!r}))")
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(self.device)
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise DeliberateError(f"engine: max_batch_size must be an integer >= 1 (got {max_batch_size!r})")
        self.max_batch_size = max_batch_size
        eos = set(eos_token_ids or ())
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(int(tokenizer.eos_token_id))
        eos |= set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.eos = eos
        self.runner_cls = _LlamaRunner if _is_llama_like(model) else _HFRunner
        self.stats = EngineStats()
        self.max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        cache = PrefixCache(prefix_cache_bytes)  # validates the budget for every model type
        # the generic fallback runs the model's own forward and cannot take KV from outside
        use = prefix_cache_bytes > 0 and self.runner_cls is _LlamaRunner
        self.prefix_cache: PrefixCache | None = cache if use else None
        self._weights_key: tuple | None = None

    def clear_prefix_cache(self) -> None:
        """Forget all cached prefix KV (e.g. to free memory between unrelated workloads)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _check_weights(self) -> None:
        """Drop the prefix cache if any parameter or buffer was replaced or modified in place."""
        key = []
        for t in (*self.model.parameters(), *self.model.buffers()):
            try:
                ver = t._version
            except RuntimeError:  # inference tensors keep no version counter (they cannot change in place)
                ver = -1
            key.append((t.data_ptr(), ver, t.dtype, t.device))
        key_t = tuple(key)
        if key_t != self._weights_key:
            self.clear_prefix_cache()
            self._weights_key = key_t

    def rows_per_chunk(self, total_len: int) -> int:
        """Rows per forward for sequences of up to ``total_len`` positions: ``max_batch_size``, and on
        CUDA (Llama path) no more than fit their KV cache in :data:`KV_MEMORY_FRACTION` of the free
        GPU memory (memory the caching allocator holds but does not use counts as free)."""
        cap = self.max_batch_size
        if self.device.type != "cuda" or self.runner_cls is not _LlamaRunner:
            return cap
        cfg = self.model.config
        n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_row = 2 * cfg.num_hidden_layers * n_kv * head_dim * next(self.model.parameters()).element_size()
        per_row *= max(1, total_len)
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return max(1, min(cap, int(KV_MEMORY_FRACTION * free) // per_row))

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer.encode(prompt))
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return ([bos] if bos is not None else []) + ids

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        encoded = [self.encode_prompt(p) for p in prompts]
        if self.prefix_cache is not None:
            self._check_weights()
        n = 1 if params.greedy else params.n
        work = [(i, j) for i in range(len(prompts)) for j in range(n)]
        results: dict[tuple[int, int], Completion] = {}
        longest = max((len(e) for e in encoded), default=0)
        size = self.rows_per_chunk(longest + params.max_tokens)
        # chunks of at most `size` rows; rows of one prompt share a single prefill
        for c in range(0, len(work), size):
            chunk = work[c:c + size]
            for row in self._run_chunk(chunk, prompts, encoded, params):
                results[(row.prompt_idx, row.sample_idx)] = Completion(
                    text=row.text, prompt_tokens=row.prompt_len, completion_tokens=len(row.ids),
                    finish_reason=row.finish or "length",
                    logprobs=tuple(row.logprobs) if params.logprobs else None,
                )
        out = []
        for i in range(len(prompts)):
            got = [results[(i, j)] for j in range(n)]
            out.append(got if n == params.n else got * params.n)  # greedy: n identical copies
        return out

    @torch.inference_mode()
    def last_logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Head output at the last position of each prompt, ``[len(prompts), V]`` (float32), using and
        filling the prefix cache: scoring a partial solution that extends an already-scored one runs
        only its new tokens. This is how a reward model (``LlamaForTokenClassification``) scores the
        newest step of each search node incrementally."""
        out = self._cached_prefill([self.encode_prompt(p) for p in prompts], None)
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    @torch.inference_mode()
    def tail_logprobs(self, prompts: Sequence[str], tails: Sequence[int]) -> list[torch.Tensor]:
        """Log-probability of each of the last ``tails[i]`` tokens of ``prompts[i]`` given everything before
        it (a float32 CPU tensor of ``tails[i]`` values per prompt), using and filling the prefix cache like
        :meth:`last_logits`: a text extending an already-run one runs only its new tokens. This is how a
        likelihood verifier (``rewards/likelihood.py``) scores the newest step of each search node."""
        encoded = [self.encode_prompt(p) for p in prompts]
        if len(tails) != len(encoded):
            raise DeliberateError(f"tail_logprobs: {len(encoded)} prompts but {len(tails)} tail lengths")
        for e, n in zip(encoded, tails):
            if not 1 <= n < len(e):
                raise DeliberateError(f"tail_logprobs: a tail of {n} tokens needs 1 <= tail < the sequence's "
                                      f"{len(e)} tokens (the first token has no prediction)")
        return self._cached_prefill(encoded, list(tails))

    def _cached_prefill(self, encoded: list[list[int]], tails: list[int] | None) -> list[torch.Tensor]:
        """One prefill per chunk of rows, reusing and filling the prefix cache. ``tails is None``: each
        chunk's last-position logits [rows, V]; else one tensor per row, the log-probs of its last
        ``tails[i]`` tokens (the cached prefix is cut so that every position predicting them is computed)."""
        if self.runner_cls is not _LlamaRunner:
            raise DeliberateError("last_logits / tail_logprobs need a Llama-style model")
        if self.prefix_cache is not None:
            self._check_weights()
        out: list[torch.Tensor] = []
        dev = self.device
        size = self.rows_per_chunk(max((len(e) for e in encoded), default=0))
        for c in range(0, len(encoded), size):
            chunk = encoded[c:c + size]
            keep_last = [1] * len(chunk) if tails is None else [n + 1 for n in tails[c:c + size]]
            P = max(len(e) for e in chunk)
            if self.max_positions and P > self.max_positions:
                raise DeliberateError(f"sequence of {P} tokens does not fit the model's context of "
                                      f"{self.max_positions} positions")
            ids = torch.zeros(len(chunk), P, dtype=torch.long)
            pad = torch.zeros(len(chunk), dtype=torch.long)
            for k, e in enumerate(chunk):
                ids[k, P - len(e):] = torch.tensor(e, dtype=torch.long)
                pad[k] = P - len(e)
            runner = _LlamaRunner(self.model)
            cache = self.prefix_cache
            reuse = None
            if cache is not None:
                reuse = []
                for k, e in enumerate(chunk):
                    entry, m = cache.lookup(e)
                    m = min(m, len(e) - keep_last[k])  # the positions whose logits are asked must run
                    reuse.append((entry.k, entry.v, m) if entry is not None and m > 0 else None)
            ms = [0 if r is None else r[2] for r in reuse or [None] * len(chunk)]  # cached tokens per row
            reused = sum(ms)
            logits = runner.start(ids.to(dev), pad.to(dev), P, reuse=reuse, all_logits=tails is not None)
            del reuse
            self.stats.prefill_tokens += sum(len(e) for e in chunk) - reused
            self.stats.cached_tokens += reused
            self.stats.forward_calls += 1
            if cache is not None:
                per_tok = runner.kv_bytes_per_token
                for b, e in enumerate(chunk):
                    cache.insert(e, per_tok * len(e), partial(runner.row_kv, b))
            if tails is None:
                out.append(logits)
                continue
            rows = torch.split(logits, [len(e) - m for e, m in zip(chunk, ms)])  # computed positions per row
            for e, n, lg in zip(chunk, tails[c:c + size], rows):
                # the n tail tokens are predicted by the logits at the n positions before each of them
                target = torch.tensor(e[len(e) - n:], dtype=torch.long, device=lg.device)
                lp = lg[-(n + 1):-1].log_softmax(-1).gather(-1, target[:, None])[:, 0]
                out.append(lp.cpu())
        return out

    def _run_chunk(self, chunk, prompts, encoded, params: SamplingParams) -> list[_Row]:
        dev = self.device
        # unique prompts, longest first: the order decode keeps its rows in (see `active` below), so
        # with one sample per prompt no reordering copy of the KV cache is needed after prefill
        uniq = sorted({i for i, _ in chunk}, key=lambda i: (-len(encoded[i]), i))
        where = {p: k for k, p in enumerate(uniq)}
        P = max(len(encoded[i]) for i in uniq)
        max_new = params.max_tokens
        if self.max_positions:
            if P >= self.max_positions:
                raise DeliberateError(f"prompt of {P} tokens does not fit the model's context of "
                                      f"{self.max_positions} positions")
            max_new = min(max_new, self.max_positions - P)
        ids = torch.zeros(len(uniq), P, dtype=torch.long)
        pad = torch.zeros(len(uniq), dtype=torch.long)
        for k, i in enumerate(uniq):
            e = encoded[i]
            ids[k, P - len(e):] = torch.tensor(e, dtype=torch.long)
            pad[k] = P - len(e)
        runner = self.runner_cls(self.model)
        cache = self.prefix_cache
        if cache is None:
            logits = runner.start(ids.to(dev), pad.to(dev), P + max_new)
            reused = 0
        else:
            # reuse the longest cached prefix of each prompt, leaving its last token to compute (the
            # sampler needs that position's logits)
            reuse: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
            for i in uniq:
                entry, m = cache.lookup(encoded[i])
                m = min(m, len(encoded[i]) - 1)
                reuse.append((entry.k, entry.v, m) if entry is not None and m > 0 else None)
            logits = runner.start(ids.to(dev), pad.to(dev), P + max_new, reuse=reuse)
            reused = sum(r[2] for r in reuse if r is not None)
            del reuse  # the batch holds copies; do not pin entries the cache may evict
        self.stats.prefill_tokens += int(sum(len(encoded[i]) for i in uniq)) - reused
        self.stats.cached_tokens += reused
        self.stats.forward_calls += 1
        rows = [_Row(i, j, len(encoded[i])) for i, j in chunk]
        # the runner's batch holds rows longest prompt first (stable), so decode attention can skip
        # padding group by group; `active` maps batch position -> index into rows
        active = sorted(range(len(rows)), key=lambda r: -rows[r].prompt_len)
        order = [where[rows[r].prompt_idx] for r in active]
        if order != list(range(len(uniq))):
            expand = torch.tensor(order, dtype=torch.long, device=dev)
            if hasattr(runner, "share") and len(order) > len(uniq):
                runner.share(expand, order)  # several samples per prompt: keep each prompt's KV once
            else:
                runner.select(expand, order)
            logits = logits.index_select(0, expand)
        # per-row random streams: batch-invariant by construction, drawn on the CPU (the same stream on
        # every device) and moved to the device once per batch
        if params.greedy:
            U = None
        else:
            U = torch.empty(len(rows), max_new, dtype=torch.float64)
            for b, r in enumerate(active):
                row = rows[r]
                g = torch.Generator().manual_seed(sequence_seed(params.seed, prompts[row.prompt_idx], row.sample_idx))
                U[b] = torch.rand(max_new, generator=g, dtype=torch.float64)
            U = U.to(dev)
        max_stop = max((len(s) for s in params.stop), default=0)
        for t in range(max_new):
            u = None if U is None else U[:, t]
            toks, lps = _sample(logits, params, u)
            # the one device -> host read per step: tokens (exact in float64) and log-probs in one copy
            both = torch.stack((toks.to(torch.float64), lps.to(torch.float64))).tolist()
            toks_l, lps_l = [int(x) for x in both[0]], both[1]
            keep = []
            for b, r in enumerate(active):
                row = rows[r]
                tok = toks_l[b]
                row.ids.append(tok)
                row.logprobs.append(lps_l[b])
                if tok in self.eos:
                    row.finish = "stop"
                    continue
                if params.stop:
                    prev = len(row.text)
                    row.text = self.tokenizer.decode(row.ids)
                    cut = _find_stop(row.text, params.stop, max(0, prev - max_stop))
                    if cut is not None:
                        row.text, row.finish = row.text[:cut], "stop"
                        continue
                if len(row.ids) >= max_new:
                    row.finish = "length"
                    continue
                keep.append(b)
            if cache is not None and len(keep) < len(active):
                # rows leaving the batch: keep the KV of everything they fed (not the token just sampled)
                kept = set(keep)
                per_tok = runner.kv_bytes_per_token
                for b, r in enumerate(active):
                    if b not in kept:
                        row = rows[r]
                        fed = encoded[row.prompt_idx] + row.ids[:-1]
                        cache.insert(fed, per_tok * len(fed), partial(runner.row_kv, b))
            if len(keep) == 0:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                runner.select(sel, keep)
                toks = toks.index_select(0, sel)
                if U is not None:
                    U = U.index_select(0, sel)
                active = [active[b] for b in keep]
            logits = runner.step(toks)
            self.stats.decode_tokens += len(active)
            self.stats.forward_calls += 1
        for row in rows:
            if not params.stop or row.finish != "stop" or (row.ids and row.ids[-1] in self.eos):
                ids = row.ids[:-1] if row.ids and row.ids[-1] in self.eos else row.ids
                row.text = self.tokenizer.decode(ids)
        return rows


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    best = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row: argmax when greedy, else inverse-CDF with the row's uniform ``u``.

    Returns (token ids, raw log-prob of each chosen token under the model at temperature 1).
    """
    logp = torch.log_softmax(logits, dim=-1)
    if u is None:
        tok = logits.argmax(dim=-1)
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1, dtype=torch.float64)
        if params.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            cum = sp.cumsum(dim=-1)
            sp = torch.where(cum - sp < params.top_p, sp, torch.zeros_like(sp))
            cdf = sp.cumsum(dim=-1)
            k = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp(max=sp.shape[-1] - 1)
            tok = si.gather(-1, k).squeeze(-1)
        else:
            cdf = probs.cumsum(dim=-1)
            k = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp(max=probs.shape[-1] - 1)
            tok = k.squeeze(-1)
            # never pick a zero-probability token through a rounding edge (off the CPU unconditionally:
            # `bad.any()` would be a device sync every step)
            bad = probs.gather(-1, tok[:, None]).squeeze(-1) <= 0
            if tok.device.type != "cpu" or bad.any():
                tok = torch.where(bad, probs.argmax(dim=-1), tok)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DEFAULT_MAX_BATCH", "KV_MEMORY_FRACTION", "Engine", "EngineStats", "PrefixCache", "TokenizerLike",
           "count_parameters", "default_max_batch_size", "resolve_device", "resolve_dtype"]
