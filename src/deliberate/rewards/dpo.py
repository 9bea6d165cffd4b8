"""DPO verifier (V-STaR, Hosseini et al., 2024): the implied reward of a policy trained with DPO.

A verifier trained by ``deliberate train vstar`` is an LM ``pi`` fine-tuned with DPO on (correct,
incorrect) solution pairs against a frozen reference ``pi_ref`` (its starting point, saved beside it).
A solution's reward is ``beta * sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]``; summed up to
the end of step ``j`` it scores that step prefix (the "implicit PRM" reading of a DPO model). Scores are
squashed with a sigmoid into [0, 1], which keeps their order, so ``best_of_n`` picks the solution DPO
prefers and ``weighted`` voting gets positive weights.

    deliberate sweep ... --verifier dpo:runs/vstar/verifier --strategies majority,best_of_n --budgets 16,64
    deliberate train vstar --model smollm2 --prompt-style instruct --out runs/vstar-smollm2 \
        --lr 1e-5 --batch-size 8 --warmup 0 --dpo-lr 5e-6 --dpo-warmup 0
    deliberate sweep ... --verifier dpo:runs/vstar-smollm2/verifier --verifier-arg prompt_style=instruct

The directory (``OUT/verifier`` of a V-STaR run) holds ``dpo.json`` (``beta``), ``model`` and ``ref``: tiny
checkpoints, or HF checkpoint directories when the run trained an HF model (TRL's DPOTrainer). Both run
in float32. An HF verifier reads the problem as the run's policy was given it: the task's prompt in
``prompt_style`` (``plain`` unless ``dpo.json`` or the option says otherwise), through the chat template
when ``chat`` is on (default: what ``dpo.json`` records, else whether the tokenizer has a template, as
``train vstar`` decides), with a BOS only where the tokenizer adds one; each step is encoded with its
newline, as the DPO completions were written (their EOS is not scored).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import resolve_device
from deliberate.models.hf import HFTokenizer, load_hf
from deliberate.models.tiny import load_tiny
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.rewards.models import encode_steps, pad_right
from deliberate.types import Problem

OPTIONS = ("batch_size", "device", "chat", "prompt_style")


def token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: [B, L-1] (zero where ``mask`` is 0)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp * mask[:, 1:]


def step_logratios(model, ref, seqs: Sequence[tuple[list[int], int, list[int]]], pad_id: int,
                   batch_size: int = 128) -> list[list[float]]:
    """For each (ids, n_prompt, step ends): cumulative ``log pi - log pi_ref`` of the completion up to each end."""
    out: list[list[float]] = [[] for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        ids, mask = pad_right([seqs[i][0] for i in chunk], pad_id, next(model.parameters()).device)
        diff = (token_logprobs(model, ids, mask) - token_logprobs(ref, ids, mask)).cpu()  # on the CPU: no copy
        for row, i in enumerate(chunk):
            _, n_prompt, ends = seqs[i]
            d = diff[row].clone()
            d[: max(0, n_prompt - 1)] = 0  # prompt tokens are not part of the solution
            cum = d.cumsum(0)
            out[i] = [float(cum[e - 1]) for e in ends]
    return out


class DPOVerifier(Verifier):
    name = "dpo"

    def __init__(self, path: str | Path, task=None, batch_size: int = 128, device: str = "auto",
                 chat: bool | None = None, prompt_style: str | None = None):
        """``device``: where the policy and its reference run (``auto``: a CUDA GPU when there is one), float32.
        ``chat`` / ``prompt_style``: how an HF verifier reads the problem (see the module docstring)."""
        super().__init__()
        dev = resolve_device(device, what="dpo verifier")
        path = Path(path)
        meta_path = path / "dpo.json"
        if not meta_path.exists():
            raise DeliberateError(f"{path} is not a DPO verifier (no dpo.json; train one with `deliberate train vstar`)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.hf = not (path / "model" / "char_tokenizer.json").is_file()
        self.template = None
        if self.hf:
            for d in ("model", "ref"):
                if not (path / d / "config.json").is_file():
                    raise DeliberateError(f"dpo: {path / d} is neither a tiny nor an HF checkpoint (no config.json)")
            self.model, hf_tok = load_hf(path / "model", dtype=torch.float32, device=str(dev))
            self.ref, _ = load_hf(path / "ref", dtype=torch.float32, device=str(dev))
            chat = self.meta.get("chat") if chat is None else chat
            if chat is None:
                chat = bool(getattr(hf_tok, "chat_template", None))
            if chat and not getattr(hf_tok, "chat_template", None):
                raise DeliberateError(f"dpo: chat is on but the tokenizer of {path / 'model'} has no chat template")
            self.template = hf_tok if chat else None
            self.tokenizer = HFTokenizer(hf_tok, chat=bool(chat))
            pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else self.tokenizer.eos_token_id
            self.pad_id = int(pad or 0)
        else:
            if chat:
                raise DeliberateError(f"dpo: {path} is a tiny verifier: it has no chat template (drop chat)")
            self.model, self.tokenizer = load_tiny(path / "model")
            self.ref, _ = load_tiny(path / "ref")
            self.model, self.ref = self.model.to(dev).eval(), self.ref.to(dev).eval()
            self.pad_id = self.tokenizer.pad_token_id
        self.chat = self.template is not None
        self.prompt_style = prompt_style or self.meta.get("prompt_style", "plain")
        self.beta = float(self.meta["beta"])
        self.task, self.batch_size, self.path = task, batch_size, str(path)
        self.max_len = int(self.model.config.max_position_embeddings)
        self.name = f"dpo:{path}"

    def _prompt(self, problem: Problem) -> str:
        text = problem_prompt(self.task, problem, self.prompt_style)
        if self.template is None:
            return text
        return self.template.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)

    @torch.inference_mode()
    def score_batch(self, items: Sequence[tuple[Problem, Sequence[str]]]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in items]
        seqs, where = [], []
        tok = self.tokenizer
        bos = tok.bos_token_id
        for i, (p, steps) in enumerate(items):
            if not len(steps):
                continue
            prompt = self._prompt(p)
            ids, ends = encode_steps(tok, prompt, list(steps), "\n", bos)
            n_prompt = (0 if bos is None else 1) + len(tok.encode(prompt))
            if len(ids) > self.max_len:  # keep what fits; steps past the context score as the last that fits
                ids = ids[: self.max_len]
                ends = [min(e, self.max_len - 1) for e in ends]
            seqs.append((ids, n_prompt, ends))
            where.append(i)
        if seqs:
            ratios = step_logratios(self.model, self.ref, seqs, self.pad_id, self.batch_size)
            self.stats.calls += 1
            self.stats.sequences += len(seqs)
            self.stats.tokens += 2 * sum(len(s[0]) for s in seqs)
            for i, r in zip(where, ratios):
                out[i] = [float(torch.sigmoid(torch.tensor(self.beta * x))) for x in r]
        return out

    def describe(self) -> dict[str, Any]:
        extra = {"chat": self.chat, "prompt_style": self.prompt_style} if self.hf else {}
        return {"name": self.name, "kind": "dpo", "path": self.path, "beta": self.beta, **extra,
                **{k: self.meta[k] for k in ("task", "task_options", "pairs") if k in self.meta}}


@register_verifier("dpo", options=OPTIONS)
def _dpo(arg, task=None, **kw):
    if not arg:
        raise DeliberateError("the dpo verifier needs a directory from `deliberate train vstar`: dpo:DIR")
    return DPOVerifier(arg, task=task, **{k: v for k, v in kw.items() if k in OPTIONS})
