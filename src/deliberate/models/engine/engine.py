"""The batched, KV-cached sampling loop for local torch causal LMs: :class:`Engine`.

Why our own loop instead of ``transformers.generate``: search and verification need things
``generate`` does not give cheaply — batch-invariant seeding (sample ``j`` of prompt ``p`` is the same
whatever else is in the batch, see :mod:`deliberate.models.sampling`), one shared prefill for the ``n``
samples of a prompt, per-token log-probs, stop strings, exact token accounting, and dropping finished
rows from the batch. This module is that loop: chunking rows, seeding, sampling, stop checks and
token accounting. The model forward lives in a runner: for Llama-architecture models (the tiny
model, SmolLM2, Llama/Qwen-style checkpoints) :class:`~deliberate.models.engine.llama_runner.LlamaRunner`
runs attention over a preallocated static cache with our own RoPE + SDPA; any other transformers
causal LM falls back to :class:`~deliberate.models.engine.hf_runner.HFRunner`, its own forward with a
``DynamicCache``. On the Llama path the engine also reuses and fills the automatic prefix cache
(:mod:`~deliberate.models.engine.prefix_cache`).

Devices (see :mod:`~deliberate.models.engine.device`): the engine runs where the model's parameters
are (CPU, or CUDA in any dtype; a bf16 model gets a bf16 KV cache). Logits leave the model as float32
and sampling runs in float64 whatever the model dtype. Each sequence's uniforms come from its own
seeded CPU ``torch.Generator`` and are moved to the device once per batch, so the random stream is
the same on every device; samples agree across devices (and, on CUDA, across batch sizes) up to
float noise in the logits -- exactly on CPU. On CUDA the decode loop synchronises with the host once
per step, to read the sampled tokens (stop checks and EOS need them), and otherwise only when rows
leave the batch.

Measured against ``transformers.generate``: ``python benchmarks/engine_vs_generate.py`` (CPU) and
``python benchmarks/gpu_engine.py`` (CUDA, bf16, a ~135M-parameter Llama); prefix caching in a
simulated beam search: ``python benchmarks/prefix_cache.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine.device import KV_MEMORY_FRACTION, default_max_batch_size, resolve_device, same_device
from deliberate.models.engine.hf_runner import HFRunner
from deliberate.models.engine.llama_runner import LlamaRunner, is_llama_like
from deliberate.models.engine.prefix_cache import PrefixCache
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.progress import sample_done
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
            if not same_device(self.device, where):
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
        self.runner_cls = LlamaRunner if is_llama_like(model) else HFRunner
        self.stats = EngineStats()
        self.max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        cache = PrefixCache(prefix_cache_bytes)  # validates the budget for every model type
        # the generic fallback runs the model's own forward and cannot take KV from outside
        use = prefix_cache_bytes > 0 and self.runner_cls is LlamaRunner
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
        if self.device.type != "cuda" or self.runner_cls is not LlamaRunner:
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
        if self.runner_cls is not LlamaRunner:
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
            runner = LlamaRunner(self.model)
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
            sample_done((len(active) - len(keep)) * (params.n if params.greedy else 1))  # a bar listening
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
