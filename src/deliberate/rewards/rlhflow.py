"""RLHFlow-style chat PRMs: a chat LM that answers each step, given as a user turn, with "+" or "-".

``rlhflow-prm:PATH`` (e.g. ``RLHFlow/Llama3.1-8B-PRM-Deepseek-Data``, ``...-Mistral-Data``). The model
card's scoring rule: the candidate is a conversation, one exchange per step ::

    user: {question} {step 1}     assistant: +
    user: {step 2}                assistant: +
    ...

rendered with the model's own chat template; the score of step ``i`` is
``softmax(logits[p_i, ["+", "-"]])[0]`` where ``p_i`` is the position just before the ``i``-th
assistant "+", i.e. the model's probability that it would answer "+" to that step (the card reads the
same position as ``logits[:, -3]`` of the conversation cut after that step). The "+" / "-" ids are the
last token of ``tokenizer.encode("+")`` / ``encode("-")``. The whole conversation is tokenized once;
each "+" is found at the character where the conversation up to the ``i``-th user turn, rendered with
``add_generation_prompt=True``, ends (a template that does not render prefixes as prefixes is refused).
One forward pass scores every step; the tokenizer must be a fast one (character offsets).

Options: ``good_token`` (``+``), ``bad_token`` (``-``), and the loading options of ``checkpoint.py``
(``batch_size``, ``device``, ``dtype``, ``revision``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deliberate.errors import DeliberateError
from deliberate.rewards.base import register_verifier
from deliberate.rewards.checkpoint import CHECKPOINT_OPTIONS, StepCheckpointVerifier, factory, token_pair_probability
from deliberate.types import Problem


class RLHFlowPRM(StepCheckpointVerifier):
    """Chat PRM: P("+" as the assistant's reply to each step)."""

    kind = "rlhflow-prm"

    def __init__(self, path, task=None, good_token: str = "+", bad_token: str = "-", **kw):
        for name, v in (("good_token", good_token), ("bad_token", bad_token)):
            if not isinstance(v, str) or not v.strip():
                raise DeliberateError(f"{self.kind}: {name} must be a non-empty string")
        self.good_token = good_token
        super().__init__(path, task=task, **kw)
        if not self.tokenizer.chat_template:
            raise DeliberateError(f"{self.kind}: the tokenizer of {self.source} has no chat template")
        self.good = int(self.tokenizer.encode(good_token)[-1])
        self.bad = int(self.tokenizer.encode(bad_token)[-1])

    def load_model(self):
        return self.from_pretrained("AutoModelForCausalLM")

    def conversation(self, problem: Problem, steps: Sequence[str]) -> list[dict[str, str]]:
        chat = []
        for k, s in enumerate(steps):
            chat.append({"role": "user", "content": f"{problem.question} {s}" if k == 0 else s})
            chat.append({"role": "assistant", "content": self.good_token})
        return chat

    def render(self, chat: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        chat = self.conversation(problem, steps)
        text = self.render(chat, False)
        # the template writes its own BOS; character offsets locate each "+" (tokenizing a prefix alone can
        # merge its trailing whitespace differently from the whole text)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        token_at = {a: i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a}
        positions = []
        for k in range(len(steps)):
            head = self.render(chat[: 2 * k + 1], True)
            i = token_at.get(len(head))
            if not text.startswith(head) or i is None or ids[i] != self.good:
                raise DeliberateError(f"{self.kind}: the chat template of {self.source} does not render the "
                                      f"conversation up to step {k + 1} as a prefix followed by {self.good_token!r}")
            positions.append(i - 1)
        return ids, positions

    def read(self, states: torch.Tensor) -> torch.Tensor:
        return token_pair_probability(states, self.model.get_output_embeddings(), self.good, self.bad)

    def describe(self):
        return {**super().describe(), "tokens": [self.good, self.bad]}


register_verifier("rlhflow-prm", options=("good_token", "bad_token", *CHECKPOINT_OPTIONS))(factory(RLHFlowPRM))
