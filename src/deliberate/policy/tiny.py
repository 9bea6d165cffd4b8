"""``TinyPolicy``: the built-in tiny model as a :class:`~deliberate.policy.base.Policy`.

Sampling and fine-tuning are our own deterministic loops, so a recipe on the tiny model gives the
same samples and the same numbers on every run (and, up to float rounding, on every device):

* :meth:`TinyPolicy.sample` runs the engine on the float32 model with the prefix cache off and 256
  rows per forward, the settings every recipe has sampled with;
* :meth:`TinyPolicy.finetune` is next-token cross-entropy on the completion (+EOS), AdamW, linear
  warmup + cosine schedule, batches a pure function of (seed, step) — so an interrupted fine-tune
  redone from its start gives the same model;
* :meth:`TinyPolicy.logprobs` scores completions on the model :meth:`sample` uses.

Our loops train every weight: LoRA (``lora_r`` > 0) is refused with one error.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from deliberate.atomic import recover_dir, replace_dir, write_json_atomic
from deliberate.errors import DeliberateError
from deliberate.models.base import Backend
from deliberate.models.engine import Engine, count_parameters, resolve_device
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyBackend, load_tiny, save_tiny
from deliberate.policy.base import FinetuneResult, FinetuneSettings, Policy
from deliberate.policy.gradient import PolicyGradient, PolicyGradientSettings
from deliberate.policy.preference import PreferenceResult, PreferenceSettings, tiny_preference_update
from deliberate.policy.scoring import pair_example, summed_logprobs
from deliberate.policy.supervised import adamw, batch_indices, collate, lr_at, make_example, supervised_step
from deliberate.types import Completion


def is_tiny_checkpoint(path: str | Path) -> bool:
    return Path(path, "char_tokenizer.json").is_file()


def save_model(model, tokenizer: CharTokenizer, directory: str | Path) -> Path:
    """Save a tiny model atomically: a kill never leaves a half-written ``directory``."""
    directory = Path(directory)
    recover_dir(directory, "char_tokenizer.json")  # leftovers of a kill during an earlier save
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_tiny(model, tokenizer, tmp)
    replace_dir(tmp, directory)
    return directory


def refuse_lora(settings: FinetuneSettings | PreferenceSettings, desc: str) -> None:
    """One clear error for LoRA settings on the tiny model, whose loops always train every weight."""
    if settings.lora_r:
        raise DeliberateError(f"{desc}: the tiny model trains every weight (no LoRA); drop --lora-r / --dpo-lora-r "
                              f"(got lora_r={settings.lora_r}) or use an HF model")


def load_sampler(path: str | Path, device: str = "auto", *, what: str = "sampling"):
    """The tiny checkpoint at ``path`` in eval mode on ``device`` (``auto``: the GPU when CUDA is
    available, else the CPU), for a recipe's rollouts: the engine samples wherever the model is, with
    the same seeded random stream on every device, so only float rounding can change a sample."""
    model, tok = load_tiny(path)
    return model.to(resolve_device(device, what=what)).eval(), tok


class TinyPolicy(Policy):
    """A tiny checkpoint directory (``path``), or a model held in memory (``model`` + ``tokenizer``, e.g.
    GRPO's policy between steps: it samples, but has no checkpoint to fine-tune or hand to workers).
    ``device``: where it samples and trains (``auto``: the GPU when CUDA is available)."""

    pretrained = False

    def __init__(self, path: str | Path | None = None, *, device: str = "auto", model=None,
                 tokenizer: CharTokenizer | None = None):
        if path is None and model is None:
            raise DeliberateError("TinyPolicy needs a checkpoint path or model=")
        if model is not None and tokenizer is None:
            raise DeliberateError("TinyPolicy(model=...) also needs tokenizer=")
        self._path = Path(path) if path is not None else None
        self.device = device
        self._model, self._tok = model, tokenizer
        self._engine: Engine | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            raise DeliberateError("this tiny policy lives in memory only (no checkpoint path)")
        return self._path

    def _loaded(self):
        if self._model is None:
            self._model, self._tok = load_sampler(self.path, self.device, what=f"tiny policy {self.path}")
        return self._model, self._tok

    @property
    def n_params(self) -> int:
        return count_parameters(self._loaded()[0])

    def backend(self) -> Backend:
        return TinyBackend(self.path, device=self.device)

    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        model, tok = self._loaded()
        if self._engine is None:
            # no prefix cache: a cached prefix is prefilled in other float order, and the recipes'
            # recorded samples were drawn without one
            self._engine = Engine(model.eval(), tok, max_batch_size=256, prefix_cache_bytes=0)
        else:
            model.eval()  # an in-memory model may have been put back in train mode since
        return self._engine.generate(list(prompts), params)

    def logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        model, tok = self._loaded()
        return summed_logprobs(model, [pair_example(tok, p, c) for p, c in pairs], tok.pad_token_id)

    def worker_spec(self) -> tuple[str, dict]:
        # float32 as in this process (TinyBackend's auto dtype is bf16 on a GPU)
        return "tiny", {"path": str(self.path), "device": self.device, "dtype": "float32"}

    def with_checkpoint(self, path: str | Path) -> TinyPolicy:
        return TinyPolicy(path, device=self.device)

    def finetune(self, examples: Sequence[tuple[str, str]], out: str | Path, settings: FinetuneSettings, *,
                 seed: int = 0, progress: bool = True, desc: str = "finetune") -> FinetuneResult:
        """The loss is next-token cross-entropy on the completion (+EOS) only. ``OUT/model`` and
        ``OUT/finetune.json`` are written atomically at the end; when both exist the call returns at once.
        On a GPU the weights stay float32 and the batches and their order are the same, so only float
        rounding differs from a CPU run."""
        out = Path(out)
        final, meta = out / "model", out / "finetune.json"
        if meta.exists() and final.exists():
            m = json.loads(meta.read_text())
            return FinetuneResult(final, int(m["tokens_trained"]), int(m.get("steps", 0)))
        refuse_lora(settings, desc)
        if not examples:
            raise DeliberateError(f"{desc}: no training examples (no verified samples to learn from)")
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model, tok = load_tiny(self.path)
        dev = resolve_device(self.device, what=desc)
        model.to(dev).train()
        max_len = model.config.max_position_embeddings
        exs = [e for e in (make_example(tok, p, c, max_len) for p, c in examples) if e is not None]
        if not exs:
            raise DeliberateError(f"{desc}: no example fits the model's {max_len} positions")
        steps = settings.n_steps(len(exs), sum(len(e.ids) for e in exs) / len(exs))
        opt = adamw(model, settings.lr, settings.weight_decay)
        trained = done = 0
        bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
        # a tokens budget runs until it is reached: `steps` (from the mean length) only sets the schedule
        while (trained < settings.tokens) if settings.tokens is not None else (done < steps):
            batch = collate([exs[i] for i in batch_indices(len(exs), settings.batch_size, seed, done)],
                            tok.pad_token_id)
            batch = {k: v.to(dev) for k, v in batch.items()}
            lr = lr_at(min(done, steps - 1), steps, settings.lr, settings.warmup)
            supervised_step(model, opt, batch, lr, settings.grad_clip, bf16=settings.bf16)
            trained += int(batch["attention_mask"].sum())
            done += 1
            bar.update(1)
        bar.close()
        model.eval()
        save_model(model, tok, final)
        write_json_atomic(meta, {"tokens_trained": trained, "steps": done, "examples": len(exs), "seed": seed,
                                 "device": str(dev), "bf16": settings.bf16})
        return FinetuneResult(final, trained, done)

    def close(self) -> None:
        if self._path is not None:  # an in-memory model belongs to its caller
            self._model = self._tok = None
        self._engine = None

    def policy_gradient(self, settings: PolicyGradientSettings, *, ref: Policy | None = None,
                        dist=None) -> PolicyGradient:
        """The tiny model and its reference loaded from their checkpoints (float32); samples through
        in-memory tiny policies (:meth:`sample`'s engine settings)."""
        model, tok = load_tiny(self.path)
        reference, _ = load_tiny((ref or self).path)
        return PolicyGradient(model, reference, settings, tokenizer=tok, pad_id=tok.pad_token_id,
                              save_tokenizer=tok.save, dist=dist,
                              sampler=lambda m: TinyPolicy(model=m, tokenizer=tok, device=self.device))

    def preference_update(self, pairs: Sequence[tuple[str, str, str]], out: str | Path, settings: PreferenceSettings,
                          *, ref: Policy | None = None, eval_pairs: Sequence[tuple[str, str, str]] = (),
                          seed: int = 0, progress: bool = True) -> PreferenceResult:
        if ref is not None and not isinstance(ref, TinyPolicy):
            raise DeliberateError(f"a tiny policy's DPO reference must be a tiny checkpoint (got {ref.path})")
        refuse_lora(settings, "preference update")
        return tiny_preference_update(self.path, (ref or self).path, pairs, Path(out), settings, save_model,
                                      eval_pairs=eval_pairs, seed=seed, device=self.device, progress=progress)
