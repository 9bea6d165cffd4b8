"""Math-Shepherd-style step-tag PRMs: a causal LM that predicts "+" or "-" after a step tag.

``math-shepherd:PATH`` (e.g. ``peiyi9979/math-shepherd-mistral-7b-prm``). The model card's scoring
rule: the candidate is written as ::

    {question} {step 1} ки\\n{step 2} ки\\n ... {step n} ки

tokenized as the card does (``tokenizer.encode``, special tokens included), and the score of step
``i`` is ``softmax(logits[t_i, ["+", "-"]])[0]`` where ``t_i`` is the position of the ``i``-th step tag
``ки``: the model's probability that the tag would be followed by "+" rather than "-". The candidate
ids are the card's ``tokenizer.encode("+ -")`` without special tokens (two tokens); the tag id is the
last token of ``tokenizer.encode("ки")``. The question is the problem's own text, no task prompt.
One forward pass scores every step; only the two candidate rows of the LM head are computed.

Options: ``step_tag`` (``ки``), ``good_token`` (``+``), ``bad_token`` (``-``), and the loading options
of ``checkpoint.py`` (``batch_size``, ``device``, ``dtype``, ``revision``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deliberate.errors import DeliberateError
from deliberate.rewards.base import register_verifier
from deliberate.rewards.checkpoint import CHECKPOINT_OPTIONS, StepCheckpointVerifier, factory, token_pair_probability
from deliberate.types import Problem


class MathShepherdPRM(StepCheckpointVerifier):
    """Step-tag PRM: P("+" | text up to the step's tag) read at each tag."""

    kind = "math-shepherd"

    def __init__(self, path, task=None, step_tag: str = "ки", good_token: str = "+", bad_token: str = "-", **kw):
        for name, v in (("step_tag", step_tag), ("good_token", good_token), ("bad_token", bad_token)):
            if not isinstance(v, str) or not v.strip():
                raise DeliberateError(f"{self.kind}: {name} must be a non-empty string")
        self.step_tag = step_tag
        super().__init__(path, task=task, **kw)
        pair = self.tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
        if len(pair) != 2:
            raise DeliberateError(f"{self.kind}: the tokenizer of {self.source} writes {good_token!r} {bad_token!r} "
                                  f"as {len(pair)} tokens, not two")
        self.good, self.bad = int(pair[0]), int(pair[1])
        self.tag_id = int(self.tokenizer.encode(step_tag, add_special_tokens=False)[-1])

    def load_model(self):
        return self.from_pretrained("AutoModelForCausalLM")

    def text(self, problem: Problem, steps: Sequence[str]) -> str:
        tag = f" {self.step_tag}"
        return f"{problem.question} " + f"{tag}\n".join(steps) + tag

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        ids = list(self.tokenizer.encode(self.text(problem, steps)))
        return ids, self.tag_positions(ids, self.tag_id, len(steps), repr(self.step_tag))

    def read(self, states: torch.Tensor) -> torch.Tensor:
        return token_pair_probability(states, self.model.get_output_embeddings(), self.good, self.bad)

    def describe(self):
        return {**super().describe(), "step_tag": self.step_tag, "tokens": [self.good, self.bad]}


register_verifier("math-shepherd", options=("step_tag", "good_token", "bad_token", *CHECKPOINT_OPTIONS)
                  )(factory(MathShepherdPRM))
