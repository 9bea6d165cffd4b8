"""Preference updates (DPO, Rafailov et al., 2023) of a :class:`~deliberate.policy.base.Policy` on
(prompt, chosen, rejected) triples: what :meth:`Policy.preference_update` runs.

The loss is ``-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))``,
with ``log pi(y)`` the summed log-probability of the completion's tokens given the prompt and ``ref``
a frozen reference (by default the checkpoint being trained). After training, the *pair accuracy* —
how often the implied reward ``beta * (log pi - log ref)`` ranks the chosen completion above the
rejected one — is measured on the first :data:`ACCURACY_PAIRS` training pairs and on held-out pairs.

* :func:`tiny_preference_update` — our deterministic loop for the tiny model: AdamW (betas 0.9/0.99,
  no weight decay), linear warmup + cosine schedule, batches a pure function of (seed, step), the
  reference's log-probs computed once per distinct completion; the completion carries no EOS.
* :func:`hf_preference_update` — TRL's ``DPOTrainer`` for any Hugging Face causal LM (TRL appends the
  EOS to each completion); the same schedule, clipping and optimizer settings; optionally LoRA
  adapters (``lora_r`` > 0), merged into the checkpoint written.

Both write ``OUT/model`` and ``OUT/preference.json`` atomically and return at once when both exist.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deliberate.atomic import recover_dir, replace_dir, write_json_atomic
from deliberate.errors import DeliberateError
from deliberate.models.engine import resolve_device
from deliberate.models.tiny import CharTokenizer, load_tiny
from deliberate.policy.lora import LoraFields, lora_config, merged, parameter_counts
from deliberate.policy.supervised import Example, batch_indices, collate, lr_at

log = logging.getLogger(__name__)

#: training pairs the reported train pair accuracy is measured on (the first ones): a bound on its cost
ACCURACY_PAIRS = 2000

Pair = tuple[str, str, str]  # (prompt, chosen completion, rejected completion)


@dataclass(frozen=True)
class PreferenceSettings(LoraFields):
    """One DPO run. The defaults suit the tiny model; a pretrained HF model wants lr ~1e-6 to 5e-6 (LoRA:
    ~5e-5 to 1e-4). ``lora_r`` > 0 trains LoRA adapters, merged into the checkpoint written (HF policies
    only; :mod:`deliberate.policy.lora`)."""

    WHAT = "preference update"

    beta: float = 0.1
    lr: float = 2e-4
    epochs: float = 2.0
    max_steps: int = 600
    batch_size: int = 32  # pairs per step
    warmup: int = 20

    def n_steps(self, n_pairs: int) -> int:
        """Optimizer steps: ``epochs`` over the pairs, at least 1, at most ``max_steps``."""
        return max(1, min(self.max_steps, round(self.epochs * n_pairs / self.batch_size)))


@dataclass(frozen=True)
class PreferenceResult:
    """A finished preference update: the checkpoint written, tokens run through the trained model,
    optimizer steps, pair accuracy on the first training pairs and on the held-out pairs (None
    without any), and the device it trained on."""

    model_dir: Path
    tokens_trained: int
    steps: int
    train_accuracy: float | None
    eval_accuracy: float | None
    device: str


def finished(out: Path) -> PreferenceResult | None:
    """The result of the preference update already written to ``out``, if any."""
    meta = out / "preference.json"
    if not (meta.exists() and (out / "model").exists()):
        return None
    m = json.loads(meta.read_text())
    return PreferenceResult(out / "model", int(m["tokens_trained"]), int(m["steps"]), m["train_accuracy"],
                            m["eval_accuracy"], m["device"])


def write_result(out: Path, r: PreferenceResult, **extra) -> PreferenceResult:
    write_json_atomic(out / "preference.json", {"tokens_trained": r.tokens_trained, "steps": r.steps,
                                                "train_accuracy": r.train_accuracy,
                                                "eval_accuracy": r.eval_accuracy, "device": r.device, **extra})
    return r


def check_reference(path: Path, ref_path: Path, what: str = "preference update") -> None:
    """Refuse a reference that is not the same kind of checkpoint as ``path`` (tiny or HF) or whose
    tokenizer differs: the implied reward compares their log-probs token by token."""
    tiny = [Path(p, "char_tokenizer.json").is_file() for p in (path, ref_path)]
    if tiny[0] != tiny[1]:
        raise DeliberateError(f"{what}: {path} and its reference {ref_path} are different kinds of "
                              "model (one is a tiny checkpoint)")
    if tiny[0]:
        same = CharTokenizer.load(ref_path).itos == CharTokenizer.load(path).itos
    else:
        from transformers import AutoTokenizer  # heavy; only HF policies need it

        same = AutoTokenizer.from_pretrained(str(path), local_files_only=True).get_vocab() == \
            AutoTokenizer.from_pretrained(str(ref_path), local_files_only=True).get_vocab()
    if not same:
        raise DeliberateError(f"{what}: {path} and its reference {ref_path} have different tokenizers")


# --- the tiny model ------------------------------------------------------------------------------

Encoded = tuple[list[int], int, int]  # (ids, first completion token, last completion token)


def encode_completion(tok: CharTokenizer, prompt: str, completion: str) -> Encoded:
    """BOS + prompt + completion (no EOS), with the positions of the completion's first and last token."""
    p = tok.encode(prompt)
    ids = [tok.bos_token_id] + p + tok.encode(completion)
    return ids, 1 + len(p), len(ids) - 1


def token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: [B, L-1] (zero where ``mask`` is 0)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp * mask[:, 1:]


def completion_logprobs(model, seqs: Sequence[Encoded], pad_id: int) -> torch.Tensor:
    """Summed log-probability of each encoded completion given its prompt, one forward over the batch."""
    batch = collate([Example(tuple(ids), 0) for ids, _, _ in seqs], pad_id)
    dev = next(model.parameters()).device
    lp = token_logprobs(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
    sel = torch.zeros_like(lp)
    for r, (_, start, end) in enumerate(seqs):
        sel[r, start - 1:end] = 1  # token t is predicted at position t-1
    return (lp * sel).sum(dim=1)


def reference_logprobs(ref, enc: dict, pad_id: int) -> dict:
    """The reference's log-prob of every encoded completion, computed once (batches of 256)."""
    keys = list(enc)
    out = {}
    with torch.no_grad():
        for lo in range(0, len(keys), 256):
            ks = keys[lo:lo + 256]
            out.update(zip(ks, completion_logprobs(ref, [enc[k] for k in ks], pad_id).tolist()))
    return out


def pair_accuracy(model, ref_lp: dict, enc: dict, pairs: Sequence[Pair], pad_id: int) -> float | None:
    """Share of ``pairs`` whose implied reward ``log model - log ref`` (``ref_lp``: the reference's
    log-prob per (prompt, completion)) ranks the chosen completion higher; None for no pairs."""
    if not pairs:
        return None
    right = 0
    with torch.no_grad():
        for lo in range(0, len(pairs), 128):
            ch = pairs[lo:lo + 128]
            keys = [(p, c) for p, c, _ in ch] + [(p, r) for p, _, r in ch]
            lp = completion_logprobs(model, [enc[k] for k in keys], pad_id)
            r = torch.tensor([ref_lp[k] for k in keys]).to(lp.device)
            m = len(ch)
            right += int((((lp[:m] - r[:m]) - (lp[m:] - r[m:])) > 0).sum())
    return right / len(pairs)


def tiny_preference_update(path: Path, ref_path: Path, pairs: Sequence[Pair], out: Path, settings: PreferenceSettings,
                           save: Callable[[Any, CharTokenizer, Path], Any], *, eval_pairs: Sequence[Pair] = (),
                           seed: int = 0, device: str = "auto", progress: bool = True) -> PreferenceResult:
    """DPO of the tiny checkpoint ``path`` against the one at ``ref_path`` on ``device``; ``save(model,
    tokenizer, directory)`` writes the trained model (atomically: the tiny policy's ``save_model``)."""
    done = finished(out)
    if done is not None:
        return done
    if not pairs:
        raise DeliberateError("preference update: no (chosen, rejected) pair to train on")
    check_reference(path, ref_path)
    dev = resolve_device(device, what="preference update")
    torch.manual_seed(seed)
    model, tok = load_tiny(path)
    ref, _ = load_tiny(ref_path)
    model, ref = model.to(dev), ref.to(dev)  # on the CPU: the same objects
    ref.eval().requires_grad_(False)
    enc: dict[tuple[str, str], Encoded] = {}
    for p, c, r in [*pairs, *eval_pairs]:
        for t in (c, r):
            if (p, t) not in enc:
                enc[(p, t)] = encode_completion(tok, p, t)
    ref_lp = reference_logprobs(ref, enc, tok.pad_token_id)
    s = settings
    steps = s.n_steps(len(pairs))
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    trained = 0
    bar = tqdm(range(steps), desc="DPO", disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        batch = [pairs[j] for j in batch_indices(len(pairs), s.batch_size, seed, step)]
        keys = [(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch]
        seqs = [enc[k] for k in keys]
        lp = completion_logprobs(model, seqs, tok.pad_token_id)
        r = torch.tensor([ref_lp[k] for k in keys]).to(dev)
        n = len(batch)
        margin = s.beta * ((lp[:n] - r[:n]) - (lp[n:] - r[n:]))
        loss = -F.logsigmoid(margin).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, s.lr, s.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        trained += sum(len(q[0]) for q in seqs)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(margin > 0).float().mean().item():.2f}")
    model.eval()
    result = PreferenceResult(out / "model", trained, steps,
                              pair_accuracy(model, ref_lp, enc, pairs[:ACCURACY_PAIRS], tok.pad_token_id),
                              pair_accuracy(model, ref_lp, enc, eval_pairs, tok.pad_token_id), str(dev))
    save(model, tok, out / "model")
    return write_result(out, result, pairs=len(pairs), eval_pairs=len(eval_pairs), seed=seed, ref=str(ref_path))


# --- any Hugging Face causal LM ------------------------------------------------------------------

def save_pretrained_atomic(model, tokenizer, final: Path) -> None:
    """``model`` and ``tokenizer`` written to ``final`` atomically (a kill leaves the old copy or the new)."""
    recover_dir(final, "config.json")
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, final)


def hf_preference_update(path: Path, ref_path: Path | None, pairs: Sequence[Pair], out: Path,
                         settings: PreferenceSettings, *, eval_pairs: Sequence[Pair] = (), seed: int = 0,
                         bf16: bool = False, progress: bool = True) -> PreferenceResult:
    """TRL ``DPOTrainer`` from the HF checkpoint ``path`` against ``ref_path`` (None: a frozen copy of
    ``path``); pair accuracies are TRL's ``rewards/accuracies`` on the first training pairs and on the
    held-out ones (its mean over evaluation batches of ``batch_size`` pairs: exact when they fill whole
    batches); bf16 when asked or on a GPU that supports it.

    With ``settings.lora_r`` > 0 TRL trains LoRA adapters (``peft_config``); against the start itself
    (``ref_path`` None or ``path``) the reference is TRL's: the same model with the adapters disabled, i.e.
    the start's weights, so the loss and accuracies mean what they mean without LoRA; another ``ref_path``
    is loaded and used as given. The adapters are merged before saving: ``OUT/model`` is a plain HF
    checkpoint, and ``preference.json`` records the trainable and total parameter counts under ``lora``."""
    done = finished(out)
    if done is not None:
        return done
    if not pairs:
        raise DeliberateError("preference update: no (chosen, rejected) pair to train on")
    for p in (path, ref_path):
        if p is not None and p.suffix.lower() == ".gguf":
            raise DeliberateError(f"preference update: a raw .gguf file ({p}) cannot be trained or referenced; "
                                  "convert it to a checkpoint directory first (smollm2 is converted automatically)")
    try:
        # lazy: TRL and datasets: optional dependencies, needed only to train an HF model
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        raise DeliberateError(f"DPO on an HF model needs TRL: pip install trl ({e})") from e

    if ref_path is not None:
        check_reference(path, ref_path)
    peft_config = lora_config(settings)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    # LoRA against the start itself: TRL scores the reference with the adapters disabled, which is exactly
    # the start's weights, so no second copy is loaded
    own_ref = peft_config is not None and (ref_path is None or Path(ref_path).resolve() == Path(path).resolve())
    ref = None if own_ref else AutoModelForCausalLM.from_pretrained(str(ref_path or path), local_files_only=True)

    def data(ps: Sequence[Pair]):
        return Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in ps])

    s = settings
    steps = s.n_steps(len(pairs))
    gpu = torch.cuda.is_available()
    work = out / "trl"
    args = DPOConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=s.batch_size,
                     per_device_eval_batch_size=s.batch_size, learning_rate=s.lr, lr_scheduler_type="cosine",
                     warmup_steps=s.warmup, weight_decay=0.0, adam_beta2=0.99, max_grad_norm=1.0, beta=s.beta,
                     logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed, max_length=1024,
                     disable_tqdm=not progress, dataloader_num_workers=0,
                     bf16=bf16 or (gpu and torch.cuda.is_bf16_supported()), use_cpu=not gpu)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data(pairs), processing_class=tok,
                         peft_config=peft_config)
    lora = {"lora": {"r": s.lora_r, **parameter_counts(trainer.model)}} if peft_config is not None else {}
    if lora:
        log.info("DPO with LoRA r=%d: %d of %d parameters trainable", s.lora_r, lora["lora"]["trainable_params"],
                 lora["lora"]["params"])
    trained = trainer.train()

    def accuracy(ps: Sequence[Pair]) -> float | None:
        if not ps:
            return None
        trainer.evaluate(data(ps))
        # TRL logs its metrics rather than returning them: the mean over evaluation batches
        return float(trainer.state.log_history[-1]["eval_rewards/accuracies"])

    train_acc, eval_acc = accuracy(pairs[:ACCURACY_PAIRS]), accuracy(eval_pairs)
    # tokens run through the trained model: prompt + chosen and prompt + rejected, scaled by the passes over the pairs
    d = trainer.train_dataset
    per_pass = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"]))
    tokens = round(per_pass * trained.global_step * s.batch_size / len(pairs))
    save_pretrained_atomic(merged(trainer.model), tok, out / "model")
    shutil.rmtree(work, ignore_errors=True)
    result = PreferenceResult(out / "model", tokens, trained.global_step, train_acc, eval_acc,
                              str(trainer.args.device))
    return write_result(out, result, pairs=len(pairs), eval_pairs=len(eval_pairs), seed=seed,
                        ref=str(ref_path or path), train_loss=trained.training_loss, **lora)
