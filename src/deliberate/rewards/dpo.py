"""DPO verifier (V-STaR, Hosseini et al., 2024): the implied reward of a policy trained with DPO.

A verifier trained by ``deliberate train vstar`` is a tiny LM ``pi`` fine-tuned with DPO on
(correct, incorrect) solution pairs against a frozen reference ``pi_ref`` (its starting point, saved
beside it). A solution's reward is ``beta * sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]``;
summed up to the end of step ``j`` it scores that step prefix (the "implicit PRM" reading of a
DPO model). Scores are squashed with a sigmoid into [0, 1], which keeps their order, so
``best_of_n`` picks the solution DPO prefers and ``weighted`` voting gets positive weights.

    deliberate sweep ... --verifier dpo:runs/vstar/verifier --strategies majority,best_of_n --budgets 16,64
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.rewards.models import encode_steps, pad_right
from deliberate.types import Problem


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

    def __init__(self, path: str | Path, task=None, batch_size: int = 128, device: str = "auto"):
        """``device``: where the policy and its reference run (``auto``: a CUDA GPU when there is one), float32."""
        super().__init__()
        from deliberate.models.engine import resolve_device
        from deliberate.models.tiny import load_tiny

        dev = resolve_device(device, what="dpo verifier")

        path = Path(path)
        meta_path = path / "dpo.json"
        if not meta_path.exists():
            raise DeliberateError(f"{path} is not a DPO verifier (no dpo.json; train one with `deliberate train vstar`)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.model, self.tokenizer = load_tiny(path / "model")
        self.ref, _ = load_tiny(path / "ref")
        self.model, self.ref = self.model.to(dev).eval(), self.ref.to(dev).eval()
        self.beta = float(self.meta["beta"])
        self.task, self.batch_size, self.path = task, batch_size, str(path)
        self.max_len = int(self.model.config.max_position_embeddings)
        self.name = f"dpo:{path}"

    def _prompt(self, problem: Problem) -> str:
        return problem_prompt(self.task, problem)

    @torch.inference_mode()
    def score_batch(self, items: Sequence[tuple[Problem, Sequence[str]]]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in items]
        seqs, where = [], []
        tok = self.tokenizer
        for i, (p, steps) in enumerate(items):
            if not len(steps):
                continue
            prompt = self._prompt(p)
            ids, ends = encode_steps(tok, prompt, list(steps), "\n", tok.bos_token_id)
            n_prompt = 1 + len(tok.encode(prompt))
            if len(ids) > self.max_len:  # keep what fits; steps past the context score as the last that fits
                ids = ids[: self.max_len]
                ends = [min(e, self.max_len - 1) for e in ends]
            seqs.append((ids, n_prompt, ends))
            where.append(i)
        if seqs:
            ratios = step_logratios(self.model, self.ref, seqs, tok.pad_token_id, self.batch_size)
            self.stats.calls += 1
            self.stats.sequences += len(seqs)
            self.stats.tokens += 2 * sum(len(s[0]) for s in seqs)
            for i, r in zip(where, ratios):
                out[i] = [float(torch.sigmoid(torch.tensor(self.beta * x))) for x in r]
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "dpo", "path": self.path, "beta": self.beta,
                **{k: self.meta[k] for k in ("task", "task_options", "pairs") if k in self.meta}}


@register_verifier("dpo", options=("batch_size", "device"))
def _dpo(arg, task=None, **kw):
    if not arg:
        raise DeliberateError("the dpo verifier needs a directory from `deliberate train vstar`: dpo:DIR")
    return DPOVerifier(arg, task=task, **{k: v for k, v in kw.items() if k in ("batch_size", "device")})
