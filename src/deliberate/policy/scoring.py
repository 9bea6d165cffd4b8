"""Log-probabilities of completions under a causal LM, given token ids: one computation for every policy.

:func:`token_logprobs` is the per-token gather of log-softmax (at a sampling temperature) that the
policy-gradient loss uses; :func:`pair_example` turns a rendered prompt and a completion into the ids
the sampler saw (BOS where the tokenizer has one, prompt and completion encoded apart, as the engine
does); :func:`summed_logprobs` sums a batch of examples' completion tokens with no gradient in eval
mode. :meth:`Policy.logprobs` on the tiny and HF policies and :meth:`PolicyGradient.logprobs` are these
three calls, so "the log-probability of a completion" means the same thing everywhere in ``policy/``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deliberate.errors import DeliberateError
from deliberate.policy.supervised import IGNORE, Example, collate

#: sequences per forward in :func:`summed_logprobs` (bounds its activation memory)
SCORE_BATCH = 64


def token_logprobs(model, batch: dict[str, torch.Tensor],
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each sequence's completion tokens [B, L-1] and their mask, under the policy
    that sampled them: logits divided by the sampling ``temperature`` (as TRL's GRPOTrainer does), so the
    ratio and the KL refer to the distribution the completions came from."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    target = batch["labels"][:, 1:]
    mask = target != IGNORE
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    return lp * mask, mask


def pair_example(tokenizer, prompt: str, completion: str, *, eos: bool = False) -> Example:
    """The ids of ``prompt`` (already rendered: the chat template applied where the policy uses one)
    followed by ``completion``, with the BOS the engine prepends (``tokenizer.bos_token_id``, None for
    none) and EOS when ``eos``. Prompt and completion are encoded apart, as the engine fed and sampled them."""
    bos = tokenizer.bos_token_id
    p = ([bos] if bos is not None else []) + list(tokenizer.encode(prompt))
    c = list(tokenizer.encode(completion)) + ([tokenizer.eos_token_id] if eos else [])
    return Example(tuple(p + c), len(p))


def summed_logprobs(model, examples: Sequence[Example], pad_id: int, *,
                    batch_size: int = SCORE_BATCH) -> list[float]:
    """The summed log-probability (temperature 1) of each example's tokens after its prompt, in batches
    of ``batch_size`` on the model's device, with no gradient and the model in eval mode (dropout off;
    its train/eval mode is restored afterwards). An example with no completion token scores 0."""
    if not examples:
        return []
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(len(e.ids) for e in examples)
    if limit is not None and longest > limit:
        raise DeliberateError(f"logprobs: a prompt + completion of {longest} tokens is longer than the model's "
                              f"{limit} positions")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            for lo in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in collate(examples[lo:lo + batch_size], pad_id).items()}
                lp, _ = token_logprobs(model, batch)
                out += [float(x) for x in lp.sum(dim=1).cpu()]
    finally:
        model.train(was_training)
    return out
