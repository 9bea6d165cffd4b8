"""Quiet-STaR's training side: thoughts at many positions of a sequence in one pass, and their rewards.

For a batch of sequences ``x`` (right-padded), ``P`` positions ``t`` per row and ``K`` thoughts per
position (``Q = P * K`` streams), the model reads one long sequence: ``x`` followed by blocks, each
holding one token of every stream::

    x_0 .. x_T-1 | <start> x Q | thought_1 x Q | ... | thought_n x Q | <end> x Q | x_t+1 x Q | ... | x_t+h-1 x Q

A stream's entry in block ``j`` sits at position ``t + 1 + j`` and attends to ``x_0 .. x_t`` and to its
own entries of blocks ``0 .. j`` only (:func:`thought_mask`: a causal mask over the text, a diagonal
per pair of blocks: the paper's trick), so every thought is exactly what running ``x_0..x_t <start>
thought <end> x_t+1 ..`` alone would give, and all ``Q`` thoughts cost one forward. Thoughts are
sampled block by block on a KV cache (:func:`sample_thoughts`), then one forward with gradients scores
everything (:func:`thought_forward`). The end token and the teacher-forced true tokens after it give
the post-thought predictions of ``x_t+1 .. x_t+h`` (``h``: the non-myopic horizon), which the
:class:`~deliberate.models.thinking.ThinkingHead` mixes with the plain predictions at ``t .. t+h-1``.

:func:`thought_rewards`: a thought's reward is the gain in log-likelihood of the ``h`` true tokens
(mixed prediction minus plain prediction, teacher-forced), its baseline the mean reward of the ``K``
thoughts at the same position; :func:`quiet_star_loss` adds REINFORCE on the thought tokens to the
language-modelling losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deliberate.errors import DeliberateError
from deliberate.models.engine import resolve_device
from deliberate.models.hf import HFTokenizer, load_hf, resolve_path
from deliberate.models.thinking import ThinkingHead, decoder_parts, input_embeddings
from deliberate.models.tiny import load_tiny, save_tiny
from deliberate.policy.tiny import is_tiny_checkpoint


@dataclass(frozen=True)
class ThoughtSettings:
    """Shape of the thoughts: ``thought_len`` sampled tokens after each of ``n_positions`` positions per
    sequence (0: every position), ``n_thoughts`` per position (the baseline is their mean, so >= 2 to
    learn), scored on the next ``horizon`` true tokens; sampled at ``temperature``."""

    thought_len: int = 4
    n_thoughts: int = 2
    n_positions: int = 16
    horizon: int = 4
    temperature: float = 1.0

    def __post_init__(self) -> None:
        bad = [f"{k} must be an integer >= {lo} (got {getattr(self, k)!r})"
               for k, lo in (("thought_len", 1), ("n_thoughts", 1), ("n_positions", 0), ("horizon", 1))
               if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int) or getattr(self, k) < lo]
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            bad.append(f"temperature must be > 0 (got {self.temperature!r})")
        if bad:
            raise DeliberateError("thoughts: " + "; ".join(bad))

    @property
    def n_blocks(self) -> int:
        """start + thought + end + the ``horizon - 1`` teacher-forced tokens after end."""
        return self.thought_len + self.horizon + 1


def pick_positions(lengths: torch.Tensor, n_positions: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions (B, P), valid (B, P))``: ``P`` distinct positions ``t`` per row with a next token
    (``t <= length - 2``), drawn uniformly (all of them, in order, when ``n_positions`` is 0 or covers the
    row); a row with fewer repeats its last one, marked not valid."""
    rows = []
    for n in lengths.tolist():
        avail = max(0, n - 1)
        if n_positions and avail > n_positions:
            rows.append(torch.randperm(avail, generator=generator)[:n_positions].sort().values.tolist())
        else:
            rows.append(list(range(avail)))
    P = max(1, max(len(r) for r in rows))
    pos = torch.zeros(len(rows), P, dtype=torch.long)
    valid = torch.zeros(len(rows), P, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            pos[b, :len(r)] = torch.tensor(r)
            pos[b, len(r):] = r[-1]
            valid[b, :len(r)] = True
    return pos, valid


def thought_mask(lengths: torch.Tensor, T: int, stream_pos: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The boolean attention mask ``(B, 1, T + n_blocks*Q, same)`` (True = may attend) of the layout above:
    text causal over its real tokens; a stream's entry in block ``j`` sees the text up to its position
    and its own entries of blocks ``<= j``."""
    B, Q = stream_pos.shape
    ar = torch.arange(T)
    text = (ar[None, :] <= ar[:, None])[None] & (ar[None, None, :] < lengths[:, None, None])  # (B, T, T)
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    text = text | (torch.eye(T, dtype=torch.bool)[None] & pad[:, :, None])  # a pad row sees itself: no empty row
    sees_text = (ar[None, None, :] <= stream_pos[:, :, None]).repeat(1, n_blocks, 1)  # (B, NB*Q, T)
    blocks = torch.kron(torch.tril(torch.ones(n_blocks, n_blocks, dtype=torch.long)),
                        torch.eye(Q, dtype=torch.long)).bool()  # (NB*Q, NB*Q): same stream, earlier block
    top = torch.cat([text, torch.zeros(B, T, n_blocks * Q, dtype=torch.bool)], 2)
    bottom = torch.cat([sees_text, blocks[None].expand(B, -1, -1)], 2)
    return torch.cat([top, bottom], 1)[:, None]


@dataclass
class Streams:
    """The streams of a batch: each one's position ``t`` and whether it is real; ``K`` per position."""

    pos: torch.Tensor  # (B, Q)
    valid: torch.Tensor  # (B, Q)
    n_thoughts: int

    @classmethod
    def at(cls, positions: torch.Tensor, valid: torch.Tensor, n_thoughts: int) -> Streams:
        return cls(positions.repeat_interleave(n_thoughts, 1), valid.repeat_interleave(n_thoughts, 1), n_thoughts)


def layout(model, head: ThinkingHead, ids: torch.Tensor, lengths: torch.Tensor, streams: Streams,
           thoughts: torch.Tensor, settings: ThoughtSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input embeddings, position ids, 4D mask) of text + every block, for ``thoughts`` (B, Q, n)."""
    B, T = ids.shape
    embed = input_embeddings(model)
    Q, n, dev = streams.pos.shape[1], settings.thought_len, ids.device
    after = (streams.pos[:, :, None] + torch.arange(1, settings.horizon, device=dev)).clamp(max=T - 1)
    forced = torch.gather(ids, 1, after.reshape(B, -1)).reshape(B, Q, -1)  # x_t+1 .. x_t+h-1
    start, end = head.start.to(embed.weight.dtype), head.end.to(embed.weight.dtype)
    parts = [embed(ids), start.expand(B, Q, -1), embed(thoughts.transpose(1, 2).reshape(B, n * Q)),
             end.expand(B, Q, -1), embed(forced.transpose(1, 2).reshape(B, -1))]
    x = torch.cat(parts, 1)
    block_pos = streams.pos[:, None, :] + 1 + torch.arange(settings.n_blocks, device=dev)[None, :, None]
    positions = torch.cat([torch.arange(T, device=dev).expand(B, T), block_pos.reshape(B, -1)], 1)
    mask = thought_mask(lengths.cpu(), T, streams.pos.cpu(), settings.n_blocks).to(dev)
    return x, positions, mask


@torch.no_grad()
def sample_thoughts(model, head: ThinkingHead, ids: torch.Tensor, lengths: torch.Tensor, streams: Streams,
                    settings: ThoughtSettings, generator: torch.Generator | None, temperature: float | None = None
                    ) -> torch.Tensor:
    """(B, Q, thought_len) thought tokens, sampled block by block on a KV cache with the layout's mask
    (``temperature`` 0: greedy; default: the settings'); ``generator`` seeds the draws (CPU)."""
    from transformers import DynamicCache  # lazy: transformers (seconds to import), only the model needs it

    temperature = settings.temperature if temperature is None else temperature
    B, T = ids.shape
    Q, n = streams.pos.shape[1], settings.thought_len
    dummy = torch.zeros(B, Q, n, dtype=torch.long, device=ids.device)
    x, positions, mask = layout(model, head, ids, lengths, streams, dummy, settings)
    body, lm_head = decoder_parts(model)
    embed = input_embeddings(model)
    cache = DynamicCache()
    body(inputs_embeds=x[:, :T], position_ids=positions[:, :T], attention_mask=mask[:, :, :T, :T],
         cache=cache, use_cache=True)
    out = torch.zeros(B, Q, n, dtype=torch.long)
    block = x[:, T:T + Q]
    for j in range(n):
        lo, hi = T + j * Q, T + (j + 1) * Q
        h = body(inputs_embeds=block, position_ids=positions[:, lo:hi], attention_mask=mask[:, :, lo:hi, :hi],
                 cache=cache, use_cache=True).last_hidden_state
        logits = lm_head(h).float().cpu()
        if temperature == 0:
            tok = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.double() / temperature, -1).reshape(B * Q, -1)
            tok = torch.multinomial(probs, 1, generator=generator).reshape(B, Q)
        out[:, :, j] = tok
        block = embed(tok.to(ids.device))
    return out.to(ids.device)


@dataclass
class ThoughtPass:
    """What one forward over text + blocks gives, per stream ``(B, Q, ...)`` unless said:

    ``thought_logp`` (B, Q): summed log-probability of the sampled thought tokens (at the sampling
    temperature, with gradient); ``mixed_lp`` / ``plain_lp`` (B, Q, h): log-probability of the true
    tokens ``x_t+1 .. x_t+h`` under the mixed and the plain prediction; ``target_valid`` (B, Q, h);
    ``weight`` (B, Q, h): the mixing weight; ``text_logits`` (B, T, V): the plain logits of the text."""

    thought_logp: torch.Tensor
    mixed_lp: torch.Tensor
    plain_lp: torch.Tensor
    target_valid: torch.Tensor
    weight: torch.Tensor
    text_logits: torch.Tensor


def thought_forward(model, head: ThinkingHead, ids: torch.Tensor, lengths: torch.Tensor, streams: Streams,
                    thoughts: torch.Tensor, settings: ThoughtSettings) -> ThoughtPass:
    """One forward over the text and every stream's thought, end token and teacher-forced tokens."""
    B, T = ids.shape
    Q, n, h = streams.pos.shape[1], settings.thought_len, settings.horizon
    x, positions, mask = layout(model, head, ids, lengths, streams, thoughts, settings)
    body, lm_head = decoder_parts(model)
    hid = body(inputs_embeds=x, position_ids=positions, attention_mask=mask).last_hidden_state
    text_h, blocks_h = hid[:, :T], hid[:, T:].reshape(B, settings.n_blocks, Q, -1)
    text_logits = lm_head(text_h).float()
    # thought token j+1 is predicted by block j (start for the first)
    think_lp = torch.log_softmax(lm_head(blocks_h[:, :n]).float() / settings.temperature, -1)
    thought_logp = think_lp.gather(-1, thoughts.transpose(1, 2)[..., None]).squeeze(-1).sum(1)  # (B, Q)
    # x_t+1+i: post-thought from block n+1+i (end, then forced), plain from text position t+i
    offs = torch.arange(h, device=ids.device)
    tgt_pos = streams.pos[:, :, None] + 1 + offs  # (B, Q, h)
    target_valid = (tgt_pos < lengths[:, None, None].to(ids.device)) & streams.valid[:, :, None]
    tgt = torch.gather(ids, 1, tgt_pos.clamp(max=T - 1).reshape(B, -1)).reshape(B, Q, h)
    src = (streams.pos[:, :, None] + offs).clamp(max=T - 1).reshape(B, -1)
    plain_h = torch.gather(text_h, 1, src[..., None].expand(-1, -1, text_h.shape[-1])).reshape(B, Q, h, -1)
    plain_logits = torch.gather(text_logits, 1, src[..., None].expand(-1, -1, text_logits.shape[-1]))
    plain_logits = plain_logits.reshape(B, Q, h, -1)
    post_h = blocks_h[:, n + 1:].transpose(1, 2)  # (B, Q, h, d)
    post_logits = lm_head(post_h).float()
    w = head.weight(plain_h, post_h).float()
    mixed = w * post_logits + (1 - w) * plain_logits
    mixed_lp = torch.log_softmax(mixed, -1).gather(-1, tgt[..., None]).squeeze(-1)
    plain_lp = torch.log_softmax(plain_logits, -1).gather(-1, tgt[..., None]).squeeze(-1)
    return ThoughtPass(thought_logp, mixed_lp, plain_lp, target_valid, w.squeeze(-1), text_logits)


def thought_rewards(mixed_lp: torch.Tensor, plain_lp: torch.Tensor, target_valid: torch.Tensor, n_thoughts: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(reward, baseline, advantage)``, each (B, Q): reward = sum over the horizon's real tokens of
    (mixed - plain) log-likelihood; baseline = the mean reward of the ``n_thoughts`` consecutive streams
    at the same position; advantage = reward - baseline. No gradient.

    >>> r, b, a = thought_rewards(torch.tensor([[[-1.0], [-3.0]]]), torch.tensor([[[-2.0], [-2.0]]]),
    ...                           torch.ones(1, 2, 1, dtype=torch.bool), 2)
    >>> r.tolist(), b.tolist(), a.tolist()
    ([[1.0, -1.0]], [[0.0, 0.0]], [[1.0, -1.0]])
    """
    B, Q, _ = mixed_lp.shape
    reward = ((mixed_lp - plain_lp) * target_valid).sum(-1).detach()
    baseline = reward.reshape(B, Q // n_thoughts, n_thoughts).mean(-1).repeat_interleave(n_thoughts, 1)
    return reward, baseline, reward - baseline


def plain_nll(text_logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy over the real tokens, their count)."""
    T = ids.shape[1]
    keep = (torch.arange(1, T, device=ids.device)[None] < lengths[:, None].to(ids.device))
    ce = F.cross_entropy(text_logits[:, :-1].reshape(-1, text_logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none").reshape(ids.shape[0], T - 1)
    n = int(keep.sum())
    return (ce * keep).sum() / max(1, n), n


def quiet_star_loss(p: ThoughtPass, ids: torch.Tensor, lengths: torch.Tensor, n_thoughts: int,
                    reinforce_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """plain LM loss on every token + LM loss of the mixed prediction on the horizon's true tokens +
    ``reinforce_weight`` x REINFORCE (``-advantage * log p(thought)``, mean over real streams)."""
    lm, _ = plain_nll(p.text_logits, ids, lengths)
    nv = p.target_valid.sum().clamp(min=1)
    mixed_nll = -(p.mixed_lp * p.target_valid).sum() / nv
    reward, _, adv = thought_rewards(p.mixed_lp, p.plain_lp, p.target_valid, n_thoughts)
    real = p.target_valid[:, :, 0]
    policy = -(adv * p.thought_logp * real).sum() / real.sum().clamp(min=1)
    loss = lm + mixed_nll + reinforce_weight * policy
    lm, mixed_nll, policy = lm.detach(), mixed_nll.detach(), policy.detach()
    stats = {"loss": float(loss.detach()), "lm": float(lm), "mixed_nll": float(mixed_nll), "policy": float(policy),
             "reward": float((reward * real).sum() / real.sum().clamp(min=1)),
             "mix_weight": float((p.weight.detach() * p.target_valid).sum() / nv)}
    return loss, stats


@dataclass
class LM:
    """A causal LM and its tokenizer as training sees them (``encode`` without specials, ``bos_token_id``
    possibly None, ``eos_token_id``), and how to write it as a checkpoint the backends load."""

    model: Any
    tokenizer: Any
    kind: str  # tiny | hf
    hf_tokenizer: Any = None

    def save(self, directory: Path) -> None:
        if self.kind == "tiny":
            save_tiny(self.model, self.tokenizer, directory)
        else:
            self.model.save_pretrained(directory)
            self.hf_tokenizer.save_pretrained(directory)

    def encode_text(self, text: str, max_len: int) -> list[int]:
        tok = self.tokenizer
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(text) + [tok.eos_token_id]
        return ids[:max_len]


def load_lm(path: str | Path, device: str) -> LM:
    dev = resolve_device(device, what="quiet-star")
    if is_tiny_checkpoint(Path(path)):
        model, tok = load_tiny(path)
        return LM(model.to(dev), tok, "tiny")
    where, _ = resolve_path(path)
    model, hf_tok = load_hf(where, dtype=torch.float32, device=str(dev))
    if where.suffix.lower() == ".gguf":
        raise DeliberateError(f"quiet-star: {where} is a raw .gguf; give a checkpoint directory or smollm2")
    return LM(model, HFTokenizer(hf_tok), "hf", hf_tok)
