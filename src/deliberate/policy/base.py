"""The ``Policy``: what a training recipe needs of a model, and nothing more.

A recipe (ReST-EM, STaR, ...) samples from a checkpoint, turns what it sampled into supervised
examples, and fine-tunes a checkpoint on them. ``Policy`` names exactly those operations so that one
recipe runs on the tiny model (:mod:`deliberate.policy.tiny`, our deterministic CPU loops) and on
any Hugging Face causal LM (:mod:`deliberate.policy.hf`, TRL's trainers); :func:`load_policy` in
:mod:`deliberate.policy.load` picks one from a ``--model`` value.

Layer: above ``models/`` and ``tasks/``, below ``train/``; nothing here imports a recipe, a verifier
or a search strategy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams
from deliberate.policy.lora import LoraFields
from deliberate.policy.preference import PreferenceResult, PreferenceSettings
from deliberate.types import Completion

if TYPE_CHECKING:  # annotations only: the trainer module imports torch
    from deliberate.policy.gradient import PolicyGradient, PolicyGradientSettings


@dataclass(frozen=True)
class FinetuneSettings(LoraFields):
    """One supervised fine-tune. The defaults suit the tiny model (~1M parameters, lr 1e-3); a
    pretrained HF model wants a far smaller step: lr 1e-5 to 3e-5, batch_size 8, warmup 0,
    weight_decay 0 (the README's real-model ReST-EM and STaR commands). ``lora_r`` > 0 trains LoRA adapters
    instead of every weight (HF policies only; :mod:`deliberate.policy.lora`), merged into the checkpoint
    written; LoRA usually wants a larger lr than a full fine-tune (~1e-4 to 2e-4)."""

    WHAT = "finetune"

    steps: int | None = None  # None -> epochs over the data
    epochs: float = 2.0
    max_steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tokens: int | None = None  # train on this many tokens instead (equal-token comparisons); overrides steps
    bf16: bool = False  # bfloat16 autocast (float32 weights): faster matmuls (BENCHMARKS), other float rounding

    def n_steps(self, n_examples: int, mean_len: float | None = None) -> int:
        """Optimizer steps: ``steps``; else for a ``tokens`` budget (given the examples' mean length in
        tokens) the steps that cover it; else ``epochs`` over the data, at most ``max_steps``."""
        if self.tokens is not None:
            if mean_len is None:
                raise DeliberateError("a tokens budget needs the examples' mean length")
            return max(1, math.ceil(self.tokens / (self.batch_size * mean_len)))
        if self.steps is not None:
            return self.steps
        return max(1, min(self.max_steps, round(self.epochs * n_examples / self.batch_size)))


@dataclass(frozen=True)
class FinetuneResult:
    """A finished fine-tune: the checkpoint written, the tokens run through the model, optimizer steps."""

    model_dir: Path
    tokens_trained: int
    steps: int


class Policy(ABC):
    """A checkpoint a recipe samples from and fine-tunes.

    * :meth:`sample` — ``params.n`` completions per prompt through the project's engine (the recipe's
      E-step); :meth:`backend` — a fresh :class:`Backend` on this checkpoint for evaluation and search
      (the caller closes it).
    * :meth:`training_prompt` — the exact text the sampler fed the model for a prompt (the chat
      template applied for chat models), so a fine-tune trains on what the model saw.
    * :meth:`finetune` — supervised fine-tuning of *this* checkpoint on (prompt, completion) pairs.
    * :meth:`preference_update` — DPO of *this* checkpoint on (prompt, chosen, rejected) triples.
    * :meth:`logprobs` — the summed log-probability of completions given their prompts.
    * :meth:`with_checkpoint` — the same kind of policy, with the same options, at another checkpoint
      (the model a fine-tune wrote).
    """

    #: ``True`` for a pretrained language model that reads a natural-language hint in its prompt;
    #: ``False`` for the tiny model, which only knows the formats it was trained on
    pretrained: bool = False
    #: ``True`` when prompts are rendered with the tokenizer's chat template (an HF policy loaded with chat on)
    chat: bool = False

    @property
    @abstractmethod
    def path(self) -> Path:
        """The checkpoint directory (or ``.gguf`` file) this policy was loaded from."""

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Parameters of the model (what compute accounting multiplies by)."""

    @abstractmethod
    def backend(self) -> Backend:
        """A new backend on this checkpoint, owned (and closed) by the caller."""

    @abstractmethod
    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, seeded per (seed, prompt, sample index)."""

    def training_prompt(self, prompt: str) -> str:
        """The text the model was given for ``prompt`` when :meth:`sample` ran it."""
        return prompt

    @abstractmethod
    def logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The summed log-probability of each ``(prompt, completion)`` pair's completion tokens given the
        prompt as this policy renders it (:meth:`training_prompt`: the chat template for chat models) and
        the BOS the sampler prepends; no EOS (the completion as text), temperature 1. Batched, without
        gradients, in eval mode, on the weights :meth:`sample` uses."""

    @abstractmethod
    def finetune(self, examples: Sequence[tuple[str, str]], out: str | Path, settings: FinetuneSettings, *,
                 seed: int = 0, progress: bool = True, desc: str = "finetune") -> FinetuneResult:
        """Fine-tune this checkpoint on ``(prompt, completion)`` pairs, the loss on the completion and
        EOS only (the prompt is used as given: pass :meth:`training_prompt` texts). The model is written
        atomically to ``out/model``; a finished fine-tune is returned at once, never redone."""

    @abstractmethod
    def with_checkpoint(self, path: str | Path) -> Policy:
        """A policy of the same kind and options on the checkpoint at ``path``."""

    def worker_spec(self) -> tuple[str, dict]:
        """``(backend name, options)`` a worker process builds to sample as :meth:`sample` does."""
        raise DeliberateError(f"{type(self).__name__} cannot sample in worker processes")

    def close(self) -> None:
        """Release the model and sampler (safe to call twice)."""

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def policy_gradient(self, settings: PolicyGradientSettings, *, ref: Policy | None = None,
                        dist=None) -> PolicyGradient:
        """A trainer for RL with verifiable rewards (:class:`~deliberate.policy.gradient.PolicyGradient`:
        sample, ``step`` on advantages, ``save_state`` / ``load_state``) on a copy of this checkpoint's
        weights, with ``ref`` (default: this checkpoint) as the frozen KL reference. ``dist``: the
        data-parallel context of :mod:`deliberate.policy.distributed` (default: one process on the CPU)."""
        raise DeliberateError(f"{type(self).__name__} cannot be trained by policy gradient")

    @abstractmethod
    def preference_update(self, pairs: Sequence[tuple[str, str, str]], out: str | Path, settings: PreferenceSettings,
                          *, ref: Policy | None = None, eval_pairs: Sequence[tuple[str, str, str]] = (),
                          seed: int = 0, progress: bool = True) -> PreferenceResult:
        """DPO of this checkpoint on ``(prompt, chosen, rejected)`` triples (prompts used as given: pass
        :meth:`training_prompt` texts) against the frozen ``ref`` (default: this checkpoint), which must be
        the same kind of policy with the same tokenizer; pair accuracy also on ``eval_pairs``. Written
        atomically to ``out/model`` (:mod:`deliberate.policy.preference`); a finished one is never redone."""
