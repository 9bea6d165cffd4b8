"""``HFPolicy``: any Hugging Face causal LM as a :class:`~deliberate.policy.base.Policy`.

Sampling goes through the ``hf`` backend (our batched, KV-cached engine: the same seeding contract
as the tiny model), with the tokenizer's chat template when ``chat`` is on. Fine-tuning is TRL's
``SFTTrainer`` on a prompt-completion dataset: the prompt is exactly the text the engine was given
(:meth:`HFPolicy.training_prompt`), the loss is on the completion only and TRL appends the EOS. It
runs on the device TRL/transformers pick (bf16 on a GPU that supports it) in this one process.
``lora_r`` > 0 in the settings trains LoRA adapters instead (TRL's ``peft_config``; peft is optional),
merged into the weights at the end, so every checkpoint written is a plain HF model
(:mod:`deliberate.policy.lora`). :meth:`HFPolicy.logprobs` scores completions on the sampler's model.

A raw ``.gguf`` file samples but cannot be fine-tuned (``smollm2`` is converted to a checkpoint
directory automatically, see :mod:`deliberate.models.smollm2`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from deliberate.atomic import write_json_atomic
from deliberate.errors import DeliberateError
from deliberate.models.hf import ChatText, HFBackend, HFTokenizer, generation_eos
from deliberate.models.sampling import SamplingParams
from deliberate.policy.base import FinetuneResult, FinetuneSettings, Policy
from deliberate.policy.gradient import PolicyGradient, PolicyGradientSettings
from deliberate.policy.lora import lora_config, merged, parameter_counts
from deliberate.policy.preference import (PreferenceResult, PreferenceSettings, hf_preference_update,
                                         save_pretrained_atomic)
from deliberate.policy.scoring import pair_example, summed_logprobs
from deliberate.types import Completion

log = logging.getLogger(__name__)


class HFPolicy(Policy):
    """A transformers checkpoint directory or ``.gguf`` file (``path``, already resolved: see
    :func:`deliberate.policy.load.load_policy`). ``chat``: prompts are rendered as one user message
    with the chat template; ``options``: further :class:`HFBackend` options (``device``, ``dtype``,
    ``max_batch_size``)."""

    pretrained = True

    def __init__(self, path: str | Path, *, chat: bool = False, device: str = "auto", **options):
        self._path = Path(path)
        self.chat = bool(chat)
        self.device = device
        self.options = dict(options)
        self._backend: HFBackend | None = None

    @property
    def path(self) -> Path:
        return self._path

    def _sampler(self) -> HFBackend:
        if self._backend is None:
            self._backend = self.backend()
        return self._backend

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self._sampler().model.parameters())

    def backend(self) -> HFBackend:
        return HFBackend(path=self.path, chat=self.chat, device=self.device, **self.options)

    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self._sampler().generate(prompts, params)

    def training_prompt(self, prompt: str) -> str:
        # the sampler's render: the same chat layout (system prompt included) that sampling used
        if not self.chat or isinstance(prompt, ChatText):
            return prompt
        return self._sampler().render(prompt)

    def logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scored on the sampler's model and tokenizer (its dtype and device), the prompt rendered by
        :meth:`training_prompt`, with the BOS the engine prepends (none with ``chat``)."""
        backend = self._sampler()
        codec, hf = backend.tokenizer, backend.hf_tokenizer
        pad = hf.pad_token_id if hf.pad_token_id is not None else codec.eos_token_id
        return summed_logprobs(backend.model, [pair_example(codec, self.training_prompt(p), c) for p, c in pairs], pad)

    def worker_spec(self) -> tuple[str, dict]:
        return "hf", {"path": str(self.path), "chat": self.chat, "device": self.device, **self.options}

    def with_checkpoint(self, path: str | Path) -> HFPolicy:
        return HFPolicy(path, chat=self.chat, device=self.device, **self.options)

    def finetune(self, examples: Sequence[tuple[str, str]], out: str | Path, settings: FinetuneSettings, *,
                 seed: int = 0, progress: bool = True, desc: str = "finetune") -> FinetuneResult:
        """TRL ``SFTTrainer`` from this checkpoint: ``settings.n_steps`` optimizer steps (epochs over the
        data, at most ``max_steps``; or ``steps``/``tokens``) of batch ``batch_size`` at ``lr`` with
        ``warmup`` linear warmup steps and cosine decay, ``weight_decay``, gradient clipping at
        ``grad_clip``; bf16 when asked or on a GPU that supports it. ``out/model`` (weights and tokenizer)
        and ``out/m_step.json`` are written atomically; when both exist the call returns at once.

        ``settings.lora_r`` > 0: TRL trains LoRA adapters (rank ``lora_r``, ``lora_alpha``, ``lora_dropout``
        on ``lora_targets``) and they are merged into the weights before saving, so ``out/model`` is a plain
        HF checkpoint like a full fine-tune's; ``m_step.json`` records the trainable and total parameter
        counts under ``lora``."""
        out = Path(out)
        final, meta = out / "model", out / "m_step.json"
        if final.exists() and meta.exists():
            m = json.loads(meta.read_text())
            return FinetuneResult(final, int(m["tokens_trained"]), int(m["steps"]))
        if self.path.suffix.lower() == ".gguf":
            raise DeliberateError(f"{desc}: a raw .gguf file cannot be fine-tuned; convert it to a checkpoint "
                                  "directory first (smollm2 is converted automatically)")
        if not examples:
            raise DeliberateError(f"{desc}: no training examples (no verified samples to learn from)")
        try:
            # lazy: TRL and datasets: optional dependencies, needed only to fine-tune an HF model
            from datasets import Dataset
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from trl import SFTConfig, SFTTrainer
        except ImportError as e:
            raise DeliberateError(f"fine-tuning an HF model needs TRL: pip install trl ({e})") from e

        peft_config = lora_config(settings)
        tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(self.path), local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in examples])
        lengths = [len(tok.encode(p + c, add_special_tokens=False)) + 1 for p, c in examples]
        steps = settings.n_steps(len(examples), sum(lengths) / len(lengths))
        work = out / "trl"
        gpu = torch.cuda.is_available()
        args = SFTConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=settings.batch_size,
                         learning_rate=settings.lr, lr_scheduler_type="cosine", warmup_steps=settings.warmup,
                         weight_decay=settings.weight_decay, max_grad_norm=settings.grad_clip,
                         logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                         max_length=1024, completion_only_loss=True, disable_tqdm=not progress,
                         dataloader_num_workers=0, bf16=settings.bf16 or (gpu and torch.cuda.is_bf16_supported()),
                         use_cpu=not gpu)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config)
        lora = {"lora": {"r": settings.lora_r, **parameter_counts(trainer.model)}} if peft_config is not None else {}
        if lora:
            log.info("%s with LoRA r=%d: %d of %d parameters trainable", desc, settings.lora_r,
                     lora["lora"]["trainable_params"], lora["lora"]["params"])
        result = trainer.train()
        # tokens run through the model (prompt + completion): the dataset's, scaled by the passes over it
        per_pass = sum(len(x) for x in trainer.train_dataset["input_ids"])
        trained = round(per_pass * result.global_step * settings.batch_size / len(examples))
        save_pretrained_atomic(merged(trainer.model), tok, final)
        write_json_atomic(meta, {"tokens_trained": trained, "examples": len(examples),
                                 "train_loss": result.training_loss, "steps": result.global_step, "seed": seed,
                                 **lora})
        shutil.rmtree(work, ignore_errors=True)
        return FinetuneResult(final, trained, result.global_step)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def preference_update(self, pairs: Sequence[tuple[str, str, str]], out: str | Path, settings: PreferenceSettings,
                          *, ref: Policy | None = None, eval_pairs: Sequence[tuple[str, str, str]] = (),
                          seed: int = 0, progress: bool = True) -> PreferenceResult:
        """TRL ``DPOTrainer`` (see :func:`~deliberate.policy.preference.hf_preference_update`)."""
        if ref is not None and not isinstance(ref, HFPolicy):
            raise DeliberateError(f"an HF policy's DPO reference must be an HF checkpoint (got {ref.path})")
        return hf_preference_update(self.path, ref.path if ref is not None else None, pairs, Path(out), settings,
                                    eval_pairs=eval_pairs, seed=seed, progress=progress)

    def policy_gradient(self, settings: PolicyGradientSettings, *, ref: Policy | None = None,
                        dist=None) -> PolicyGradient:
        """The model and its reference in float32 with dropout off (as TRL's GRPOTrainer does), token ids from
        the HF tokenizer (the engine's: BOS only where the tokenizer adds one, none with ``chat``, whose
        prompts go through the chat template as :meth:`training_prompt` renders them); samples through the
        ``hf`` backend's engine on the weights being trained."""
        model, tok = load_trainable(self.path)
        reference, _ = load_trainable((ref or self).path)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if self.chat and not getattr(tok, "chat_template", None):
            raise DeliberateError(f"{self.path}: chat is on but the tokenizer has no chat template (use --no-chat)")
        codec = HFTokenizer(tok, chat=self.chat, extra_eos=generation_eos(model))
        pad = tok.pad_token_id if tok.pad_token_id is not None else codec.eos_token_id

        def rendered(prompt: str) -> str:  # HFBackend.chat_prompt's text, without loading a second model
            if not self.chat or isinstance(prompt, ChatText):
                return prompt
            return ChatText(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True))

        def sampler(weights) -> HFPolicy:
            policy = HFPolicy(self.path, chat=self.chat, device=self.device, **self.options)
            policy._backend = HFBackend(model=weights, tokenizer=tok, chat=self.chat, dtype="float32",
                                        device=str(next(weights.parameters()).device),
                                        max_batch_size=self.options.get("max_batch_size"))
            return policy

        return PolicyGradient(model, reference, settings, tokenizer=codec, pad_id=pad, dist=dist,
                              save_tokenizer=tok.save_pretrained, sampler=sampler, training_prompt=rendered)


def load_trainable(path: Path):
    """(float32 model, HF tokenizer) of the checkpoint directory or ``.gguf`` file at ``path``, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only HF training needs it here

    if path.suffix.lower() == ".gguf":
        from deliberate.models.smollm2 import load_gguf  # converts the GGUF weights (needs gguf)

        model, tok = load_gguf(path)
        return model.float(), tok
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise DeliberateError(f"could not load checkpoint {path}: {e}") from e
    return model, tok
