"""The Llama-architecture model runner: prefill and decode over a preallocated static KV cache.

For models whose layers look exactly like HF Llama (the tiny model, SmolLM2, Llama/Qwen/Mistral-style
checkpoints, see :func:`is_llama_like`) the engine does not call the model's ``forward``: it runs the
model's own weights and submodules with its own RoPE and attention over a static cache. That is what
makes prefix reuse (KV copied in from :mod:`~deliberate.models.engine.prefix_cache`), dropping finished
rows, one shared copy of a prompt's KV for its ``n`` samples (:class:`SharedPrompts`) and fused
q|k|v and gate|up projections for small models possible.

Separate from the sampling loop because it is the model-forward specifics: the engine only calls
``start`` / ``step`` / ``select`` / ``share`` / ``row_kv``, which :class:`~deliberate.models.engine.hf_runner.HFRunner`
also offers (all but ``share`` and ``row_kv``) for any other causal LM. Device-aware kernels: on CUDA
prefill runs SDPA (no materialised score matrix) and the batch is not split into row groups (kernel
launches, not FLOPs, are what a small model pays for on a GPU); on CPU, explicit matmuls in four groups.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deliberate.errors import DeliberateError
from deliberate.models.engine.device import count_parameters


def is_llama_like(model: torch.nn.Module) -> bool:
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


class LlamaRunner:
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
        self.shared = SharedPrompts(self.k[..., :P], self.v[:, :, :, :P], self.pad, self.pads, rows, host)
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


class SharedPrompts:
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
    """One layer's q|k|v and gate|up projections concatenated, and the MLP's inner width."""

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
