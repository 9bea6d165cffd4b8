"""Quiet-STaR's inference side: the thinking head and think-then-predict decoding.

A model trained by ``deliberate train quiet-star`` (:mod:`deliberate.train.quiet_star`) is an ordinary
causal LM plus a small :class:`ThinkingHead` saved next to its weights (``thinking_head.pt``): learned
start- and end-of-thought embeddings (fed as input embeddings, so neither tokenizer nor vocabulary
changes: the char tokenizer and any HF tokenizer work alike) and the mixing head that interpolates the
next-token logits with and without a thought.

:class:`ThinkingDecoder` decodes with it: before each visible token it feeds the start embedding,
samples ``thought_len`` thought tokens, feeds the end embedding, mixes the post-thought logits with the
plain ones and picks the visible token from the mix; the thought's KV is then dropped, so the visible
text never contains thoughts. The backends build one when asked (``--backend-arg think=N``, N tokens
per thought, ``think=true`` for the length the model was trained with)::

    deliberate eval --task arith --model runs/qstar/thought/model --backend-arg think=true

Every thought costs ``thought_len + 2`` forward positions per visible token (start, thought, end); a
completion's ``completion_tokens`` counts them, so eval's generated-token compute includes thinking.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deliberate.errors import DeliberateError
from deliberate.models.engine import EngineStats
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.types import Completion

HEAD_FILE = "thinking_head.pt"
META_FILE = "thinking.json"
#: the mixing weight starts at sigmoid(-3) ~ 0.05: training starts from (almost) the plain LM's predictions
MIX_INIT_BIAS = -3.0
INIT_KINDS = ("dash", "mean")


class ThinkingHead(nn.Module):
    """Start/end-of-thought embeddings and the mixing head ``w = sigmoid(MLP([h_plain; h_thought]))``;
    mixed logits ``= w * thought_logits + (1 - w) * plain_logits`` (the paper's interpolation)."""

    def __init__(self, hidden: int, init: torch.Tensor | None = None, mixer_hidden: int | None = None):
        super().__init__()
        init = torch.zeros(hidden) if init is None else init.detach().float().reshape(hidden)
        self.start = nn.Parameter(init.clone())
        self.end = nn.Parameter(init.clone())
        m = mixer_hidden or hidden
        self.mixer = nn.Sequential(nn.Linear(2 * hidden, m), nn.ReLU(), nn.Linear(m, 1))
        nn.init.zeros_(self.mixer[2].weight)
        nn.init.constant_(self.mixer[2].bias, MIX_INIT_BIAS)
        self.hidden, self.mixer_hidden = hidden, m

    def weight(self, h_plain: torch.Tensor, h_thought: torch.Tensor) -> torch.Tensor:
        """The mixing weight of the thought, shape ``h_plain.shape[:-1] + (1,)``."""
        x = torch.cat([h_plain, h_thought], dim=-1).to(self.mixer[0].weight.dtype)
        return torch.sigmoid(self.mixer(x))

    def mix(self, plain_logits: torch.Tensor, thought_logits: torch.Tensor, h_plain: torch.Tensor,
            h_thought: torch.Tensor) -> torch.Tensor:
        w = self.weight(h_plain, h_thought).to(plain_logits.dtype)
        return w * thought_logits + (1 - w) * plain_logits


def input_embeddings(model) -> nn.Module:
    return model.get_input_embeddings()


def decoder_parts(model) -> tuple[nn.Module, nn.Module]:
    """(the transformer body returning ``last_hidden_state``, the LM head) of an HF causal LM."""
    body, head = model.get_decoder(), model.get_output_embeddings()
    if body is None or head is None:
        raise DeliberateError(f"{type(model).__name__}: no decoder body / output embeddings to think with")
    return body, head


def init_embedding(model, encode, kind: str) -> torch.Tensor:
    """The start/end-of-thought initialisation: ``dash`` = the mean input embedding of the tokens of
    ``"---"`` (the paper's choice), ``mean`` = the mean of all input embeddings."""
    table = input_embeddings(model).weight.detach().float()
    if kind == "mean":
        return table.mean(0)
    if kind == "dash":
        ids = [i for i in encode("---") if 0 <= i < table.shape[0]]
        if not ids:
            raise DeliberateError("thought init 'dash': the tokenizer has no token for '-' (use 'mean')")
        return table[ids].mean(0)
    raise DeliberateError(f"thought init must be one of {', '.join(INIT_KINDS)} (got {kind!r})")


def save_head(head: ThinkingHead, directory: str | Path, meta: dict[str, Any]) -> None:
    """Write the head (``thinking_head.pt``) and its shape and training settings (``thinking.json``)."""
    directory = Path(directory)
    torch.save(head.state_dict(), directory / HEAD_FILE)
    info = {"hidden": head.hidden, "mixer_hidden": head.mixer_hidden, **meta}
    (directory / META_FILE).write_text(json.dumps(info, indent=1))


def load_head(directory: str | Path) -> tuple[ThinkingHead, dict[str, Any]]:
    directory = Path(directory)
    if not (directory / HEAD_FILE).is_file() or not (directory / META_FILE).is_file():
        raise DeliberateError(f"{directory} has no thinking head ({HEAD_FILE}): think=... needs a model trained by "
                              "`deliberate train quiet-star`")
    meta = json.loads((directory / META_FILE).read_text())
    head = ThinkingHead(int(meta["hidden"]), mixer_hidden=int(meta["mixer_hidden"]))
    head.load_state_dict(torch.load(directory / HEAD_FILE, weights_only=True))
    return head.eval(), meta


def thought_length(think: int | bool, meta: dict[str, Any]) -> int:
    """``think=true`` -> the trained thought length; ``think=N`` -> N (>= 1)."""
    n = int(meta.get("thought_len", 0)) if think is True else think
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DeliberateError(f"think must be true or an integer >= 1 (got {think!r})")
    return n


def thinking_decoder(path, model, tokenizer, think: int | bool, think_temperature: float, max_batch_size: int,
                     eos_token_ids: Sequence[int] | None = None) -> ThinkingDecoder:
    """The decoder a backend swaps in for its engine under ``--backend-arg think=...``: the head is read
    from the checkpoint directory ``path``."""
    if path is None or not Path(path).is_dir():
        raise DeliberateError(f"think=...: needs a checkpoint directory holding {HEAD_FILE} (got {path!r})")
    head, meta = load_head(path)
    return ThinkingDecoder(model, tokenizer, head, thought_length(think, meta), think_temperature=think_temperature,
                           max_batch_size=max_batch_size, eos_token_ids=eos_token_ids)


class ThinkingDecoder:
    """Think-then-predict decoding with the engine's ``generate(prompts, params)`` contract (stop strings,
    EOS, ``n`` samples seeded per (seed, prompt, index), log-probs of the visible tokens under the mixed
    distribution). Thoughts are sampled at ``think_temperature`` from their own seeded stream. Rows of a
    chunk decode in lockstep on a ``DynamicCache`` (left-padded); ``top_p`` < 1 is refused."""

    def __init__(self, model, tokenizer, head: ThinkingHead, thought_len: int, *, think_temperature: float = 1.0,
                 max_batch_size: int = 64, eos_token_ids: Sequence[int] | None = None):
        if think_temperature < 0:
            raise DeliberateError(f"think_temperature must be >= 0 (got {think_temperature})")
        self.model, self.tokenizer, self.thought_len = model, tokenizer, thought_len
        p = next(model.parameters())
        self.head = head.to(device=p.device, dtype=p.dtype).eval()
        self.device, self.think_temperature, self.max_batch_size = p.device, think_temperature, max_batch_size
        eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.eos = {int(e) for e in eos if e is not None}
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.stats = EngineStats()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if params.top_p < 1:
            raise DeliberateError("think-then-predict decoding samples from the full mixed distribution (top_p 1)")
        rows = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        out: list[list[Completion]] = [[] for _ in prompts]
        for k in range(0, len(rows), self.max_batch_size):
            chunk = rows[k:k + self.max_batch_size]
            for (i, _), c in zip(chunk, self.decode_chunk([(prompts[i], j) for i, j in chunk], params)):
                out[i].append(c)
        return out

    @torch.no_grad()
    def decode_chunk(self, rows: Sequence[tuple[str, int]], params: SamplingParams) -> list[Completion]:
        tok, dev = self.tokenizer, self.device
        embed = input_embeddings(self.model)
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        enc = [bos + tok.encode(p) for p, _ in rows]
        B, L = len(rows), max(len(e) for e in enc)
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        for b, e in enumerate(enc):  # left padding: every row's next position is the last column
            ids[b, L - len(e):] = torch.tensor(e)
            mask[b, L - len(e):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0).to(dev)
        gens = [(torch.Generator().manual_seed(sequence_seed(params.seed, p, j)),
                 torch.Generator().manual_seed(sequence_seed(params.seed + 1, p, j))) for p, j in rows]
        rows_kv = CachedRows(self.model, mask.to(dev), self.stats)
        h, logits = rows_kv.feed(embed(ids.to(dev)), pos)
        self.stats.prefill_tokens += int(mask.sum())
        nxt = pos[:, -1]
        texts, gen_ids = [""] * B, [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        finish: list[str | None] = [None] * B
        for _ in range(params.max_tokens):
            h_thought, l_thought = self.think(rows_kv, nxt, [g[1] for g in gens])
            mixed = torch.log_softmax(self.head.mix(logits, l_thought, h, h_thought).float(), -1)
            chosen = pick(mixed, params.temperature, [g[0] for g in gens])
            for b in range(B):
                if finish[b] is not None:
                    continue
                t = int(chosen[b])
                gen_ids[b].append(t)
                lps[b].append(float(mixed[b, t]))
                if t in self.eos:
                    finish[b] = "stop"
                    texts[b] = tok.decode(gen_ids[b][:-1])
                    continue
                texts[b] = tok.decode(gen_ids[b])
                cut = min((i for i in (texts[b].find(s) for s in params.stop) if i >= 0), default=None)
                if cut is not None:
                    texts[b], finish[b] = texts[b][:cut], "stop"
                elif len(gen_ids[b]) >= params.max_tokens:
                    finish[b] = "length"
            if all(f is not None for f in finish):
                break
            nxt = nxt + 1
            h, logits = rows_kv.feed(embed(chosen.to(dev)[:, None]), nxt[:, None])
            self.stats.decode_tokens += B
        per_token = self.thought_len + 2
        return [Completion(texts[b], len(enc[b]), len(gen_ids[b]) * (1 + per_token), finish[b] or "length",
                           tuple(lps[b])) for b in range(B)]

    def think(self, rows_kv: CachedRows, last: torch.Tensor, gens: Sequence[torch.Generator]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed start, ``thought_len`` sampled tokens and end after every row's prefix (positions after
        ``last``); return the end position's hidden state and logits, and drop the thought from the cache."""
        length = rows_kv.length()
        B, hidden = last.shape[0], self.head.hidden
        embed = input_embeddings(self.model)
        x = self.head.start.expand(B, 1, hidden)
        for j in range(self.thought_len):
            _, lg = rows_kv.feed(x, (last + 1 + j)[:, None])
            t = pick(torch.log_softmax(lg, -1), self.think_temperature, gens)
            x = embed(t.to(self.device)[:, None])
        rows_kv.feed(x, (last + 1 + self.thought_len)[:, None])  # the last thought token
        h, lg = rows_kv.feed(self.head.end.expand(B, 1, hidden), (last + 2 + self.thought_len)[:, None])
        self.stats.decode_tokens += B * (self.thought_len + 2)
        rows_kv.crop(length)
        return h, lg


class CachedRows:
    """A batch of left-padded rows on a ``DynamicCache``: feed embeddings, read the last position's hidden
    state and logits, crop back (to drop a thought)."""

    def __init__(self, model, mask: torch.Tensor, stats: EngineStats):
        from transformers import DynamicCache  # lazy: transformers (seconds to import), only decoding needs it

        self.body, self.lm_head = decoder_parts(model)
        self.cache, self.mask, self.stats = DynamicCache(), mask, stats

    def length(self) -> int:
        return self.cache.get_seq_length()

    def feed(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.length():
            self.mask = torch.cat([self.mask, self.mask.new_ones(x.shape[0], x.shape[1])], 1)
        h = self.body(inputs_embeds=x, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                      use_cache=True).last_hidden_state[:, -1]
        self.stats.forward_calls += 1
        return h, self.lm_head(h).float()

    def crop(self, length: int) -> None:
        if self.length() > length:
            self.cache.crop(length - self.length())  # this transformers crops by a negative count
        self.mask = self.mask[:, :length]


def pick(logprobs: torch.Tensor, temperature: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Argmax at temperature 0, else one draw per row from ``softmax(logprobs / temperature)`` with that
    row's generator (inverse CDF on a CPU uniform: the same draw on every device)."""
    if temperature == 0:
        return logprobs.argmax(-1).cpu()
    probs = torch.softmax(logprobs.double() / temperature, -1).cpu()
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(max=probs.shape[1] - 1)
