"""Qwen2.5-Math-PRM-style PRMs: a Qwen2 backbone with a two-label reward head read at ``<extra_0>``.

``qwen-prm:PATH`` (e.g. ``Qwen/Qwen2.5-Math-PRM-7B``). The published checkpoint's head is custom code
(``Qwen2ForProcessRewardModel``, loaded there with ``trust_remote_code``). **No remote code runs
here**: the backbone loads with ``AutoModel`` (a plain ``Qwen2Model``, in the target dtype) and the
head is rebuilt from its weights, read by their published names from the checkpoint's safetensors::

    score.0.weight [hidden, hidden]   score.0.bias [hidden]      Linear
                                                                ReLU
    score.2.weight [2, hidden]        score.2.bias [2]          Linear

A checkpoint without those weights (a Qwen2 model saved without its head) is refused, naming them.

The model card's scoring rule: the candidate is the chat ::

    system: Please reason step by step, and put your final answer within \\boxed{}.
    user: {question}
    assistant: {step 1}<extra_0>{step 2}<extra_0> ... {step n}<extra_0>

rendered with the tokenizer's chat template (``add_generation_prompt=False``) and tokenized with
``tokenizer.encode``; the score of step ``i`` is ``softmax(head(h_i))[1]`` at the ``i``-th
``<extra_0>`` token. One forward pass scores every step.

Options: ``system_prompt`` (the card's, above), ``step_separator`` (``<extra_0>``), and the loading
options of ``checkpoint.py`` (``batch_size``, ``device``, ``dtype``, ``revision``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open

from deliberate.errors import DeliberateError
from deliberate.rewards.base import register_verifier
from deliberate.rewards.checkpoint import CHECKPOINT_OPTIONS, StepCheckpointVerifier, factory
from deliberate.types import Problem

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
#: the reward head's weights, by their names in the published checkpoint
HEAD_WEIGHTS = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"


class QwenPRM(StepCheckpointVerifier):
    """Qwen2.5-Math-PRM: P(correct) = softmax of the reward head at each step separator, label 1."""

    kind = "qwen-prm"

    def __init__(self, path, task=None, system_prompt: str = SYSTEM_PROMPT, step_separator: str = "<extra_0>",
                 **kw):
        if not isinstance(step_separator, str) or not step_separator:
            raise DeliberateError(f"{self.kind}: step_separator must be a non-empty string")
        self.system_prompt, self.step_separator = system_prompt, step_separator
        super().__init__(path, task=task, **kw)
        self.head = self.head.to(self.device)
        self.sep_id = int(self.tokenizer.encode(step_separator, add_special_tokens=False)[0])

    def checkpoint_file(self, name: str) -> Path | None:
        """A file of the checkpoint (from the HF cache for a hub id), or None when it has none."""
        if Path(self.source).is_dir():
            f = Path(self.source) / name
            return f if f.exists() else None
        try:
            return Path(hf_hub_download(self.source, name, revision=self.load_kw["revision"],
                                        local_files_only=self.load_kw["local_files_only"]))
        except EntryNotFoundError:  # includes "not in the local cache" when offline
            return None

    def head_weights(self) -> dict[str, torch.Tensor]:
        """The head's tensors, by published name, from whichever safetensors shard holds each."""
        index = self.checkpoint_file(SAFETENSORS_INDEX)
        if index is not None:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            shards = {n: weight_map[n] for n in HEAD_WEIGHTS if n in weight_map}
        else:
            single = self.checkpoint_file(SAFETENSORS)
            if single is None:
                raise DeliberateError(f"{self.kind}: {self.source} has no {SAFETENSORS} (the reward head is read "
                                      "from safetensors)")
            with safe_open(str(single), framework="pt") as f:
                shards = {n: SAFETENSORS for n in HEAD_WEIGHTS if n in f.keys()}
        missing = [n for n in HEAD_WEIGHTS if n not in shards]
        if missing:
            raise DeliberateError(f"{self.kind}: {self.source} has no weights for {', '.join(missing)}: its reward "
                                  "head would be initialised randomly and every score would be noise")
        out = {}
        for shard in sorted(set(shards.values())):
            f_path = self.checkpoint_file(shard)
            if f_path is None:
                raise DeliberateError(f"{self.kind}: {self.source} names the shard {shard} but does not have it")
            with safe_open(str(f_path), framework="pt") as f:
                out.update({n: f.get_tensor(n) for n, s in shards.items() if s == shard})
        return out

    def load_model(self):
        backbone = self.from_pretrained("AutoModel")
        h = int(backbone.config.hidden_size)
        weights = self.head_weights()
        want = {"score.0.weight": (h, h), "score.0.bias": (h,), "score.2.weight": (2, h), "score.2.bias": (2,)}
        bad = [f"{n} {tuple(weights[n].shape)} (expected {want[n]})" for n in HEAD_WEIGHTS
               if tuple(weights[n].shape) != want[n]]
        if bad:
            raise DeliberateError(f"{self.kind}: {self.source} has reward-head weights of the wrong shape: "
                                  f"{', '.join(bad)}")
        self.head = torch.nn.Sequential(torch.nn.Linear(h, h, dtype=self.dtype), torch.nn.ReLU(),
                                        torch.nn.Linear(h, 2, dtype=self.dtype)).eval()
        self.head.load_state_dict({n.removeprefix("score."): w.to(self.dtype) for n, w in weights.items()})
        return backbone

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        sep = self.step_separator
        chat = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": problem.question},
                {"role": "assistant", "content": sep.join(steps) + sep}]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
        ids = list(self.tokenizer.encode(text))
        return ids, self.tag_positions(ids, self.sep_id, len(steps), repr(sep))

    def read(self, states: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(states.to(self.dtype)).float(), dim=-1)[..., 1]

    def describe(self):
        return {**super().describe(), "step_separator": self.step_separator}


register_verifier("qwen-prm", options=("system_prompt", "step_separator", *CHECKPOINT_OPTIONS))(factory(QwenPRM))
