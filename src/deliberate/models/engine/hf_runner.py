"""The fallback model runner for any transformers causal LM that is not Llama-shaped.

It runs the model's own ``forward`` with a ``DynamicCache``, so it works for any architecture
transformers supports, at the cost of what :class:`~deliberate.models.engine.llama_runner.LlamaRunner`
adds: no prefix cache (the model's forward cannot take KV from outside), no shared prompt KV.
Separate from the Llama runner because it shares none of its code, only the interface the engine
calls (``start`` / ``step`` / ``select``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch


class HFRunner:
    """Fallback for any transformers causal LM: its own forward with a DynamicCache."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.x renamed past_key_values -> cache
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def start(self, ids: torch.Tensor, pad: torch.Tensor, total_len: int) -> torch.Tensor:
        # lazy (transformers): importing it costs seconds, and most importers of the engine package
        # (device resolution, the Llama path) never reach this fallback
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
