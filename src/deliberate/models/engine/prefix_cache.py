"""The prefix cache: KV of already-processed token sequences, reused by later prompts sharing a prefix.

After each batch the engine keeps the KV of every row's processed tokens (prompt + generated tokens
that were fed back) in a byte-bounded LRU :class:`PrefixCache` keyed by token ids. A later prompt that
shares a prefix with a cached row -- step-level search re-submits ``prompt + partial_solution`` every
round, each one extending a row of the previous round -- copies that KV into its batch slots and
prefills only the remaining tokens. Outputs are the same as without the cache up to float noise (see
``tests/test_prefix_cache.py``).

Separate from the engine because it is pure bookkeeping over token ids and opaque KV tensors: it
knows nothing of models, runners or sampling, and is tested on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deliberate.errors import DeliberateError

_BLOCK = 16  # prefix lookups are indexed every _BLOCK tokens, then extended token by token


def _chain_hashes(tokens: Sequence[int]) -> list[int]:
    """``h[i]`` identifies ``tokens[:i + 1]``; each is one step from the previous, so all are O(n)."""
    out, h = [], 0
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


@dataclass(eq=False)
class CacheEntry:
    """One stored sequence: its tokens, its KV, and its keys in the lookup index."""

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
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # LRU order, oldest first
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

    def lookup(self, tokens: Sequence[int], hashes: list[int] | None = None) -> tuple[CacheEntry | None, int]:
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
        e = CacheEntry(tokens, k, v, nbytes, [hs[j * _BLOCK - 1] for j in range(1, n // _BLOCK + 1)], hs[-1])
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
