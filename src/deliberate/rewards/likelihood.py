"""Likelihood PRM: a frozen LM's per-step log-probabilities, calibrated on Monte-Carlo step labels.

    deliberate train lprm --lm runs/verifier-backbone --labels runs/labels --out runs/lprm
    deliberate sweep ... --verifier lprm:runs/lprm

Each step of a solution gets three features from the language model ``--lm`` (a tiny checkpoint,
kept frozen): the summed log-probability of the step's characters, the smallest of those character
log-probabilities, and the running minimum of the step sums so far. Separators are not scored, so a
step prefix gets the same scores as the same steps inside a longer solution (what step-level search
needs). A logistic regression on the standardised features is fitted to the Monte-Carlo soft labels
(``deliberate label mc``): score = sigmoid(w . (f - mu) / sd + b), one probability per step prefix.

Why: a PRM fine-tuned from an LM with a 1-logit head at each step's end (``deliberate train prm
--init-from``) sees only the hidden state there, not how surprised the LM was by the step's digits;
the log-probs carry exactly that. On arith, with an LM stronger than the policy, this verifier picks
far better than majority vote where the head-on-hidden-state PRM from the same LM does not
(docs/RESULTS.md). ``OUT`` holds a copy of the LM (``OUT/lm``) and ``OUT/calibration.json``.

**Likelihood ORM** (``deliberate train lprm --target outcome``, verifier ``lorm:DIR``): the same
frozen LM and the same features, but the regression is fitted to each labelled solution's *outcome*
(final answer right or wrong) from the features at its last step only, as an ORM is trained on
outcome labels. At test time it scores every step prefix as if the solution ended there, like the
tiny ORM (``rewards/models.py``); select with aggregation ``last``. With the PRM and ORM sharing the
LM and the features, the two differ only in their supervision: the comparison "Let's Verify" makes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.types import Problem

FEATURES = ("step_logprob", "step_min_char_logprob", "running_min_step_logprob")
CALIBRATION = "calibration.json"
#: what the calibration is fitted to: every step's Monte-Carlo soft label (a PRM) or each solution's
#: outcome from its last step's features (an ORM)
TARGETS = ("step", "outcome")
#: the verifier spec prefix a calibration of each target loads under
KIND = {"step": "lprm", "outcome": "lorm"}


@torch.inference_mode()
def step_features(model, tokenizer, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64
                  ) -> tuple[list[list[list[float]]], int]:
    """For each (prompt, steps): one feature row (:data:`FEATURES`) per step, from one forward pass of
    prompt + steps joined by newlines (batched, right-padded); also the number of tokens run. Needs a
    character-level tokenizer (one token per character), as the tiny models have."""
    enc = []
    for prompt, steps in items:
        p = [tokenizer.bos_token_id] + tokenizer.encode(prompt)
        text = "\n".join(steps)
        c = tokenizer.encode(text)
        if len(c) != len(text):
            raise DeliberateError("lprm: the LM's tokenizer must map one character to one token (a tiny checkpoint)")
        enc.append((p, c, [len(s) for s in steps]))
    max_len = int(getattr(model.config, "max_position_embeddings", 512))
    out: list[list[list[float]]] = [[] for _ in items]
    n_tokens = 0
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]) + len(enc[i][1]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        seqs = [(enc[i][0] + enc[i][1])[-max_len:] for i in chunk]
        n_tokens += sum(len(q) for q in seqs)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        dev = next(model.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0].cpu()  # on the CPU: no copy
        for r, i in enumerate(chunk):
            p, c, lens = enc[i]
            cut = len(p) + len(c) - len(seqs[r])  # tokens dropped from the front to fit max_len
            start = len(p) - cut - 1  # position predicting the first completion token
            lp = tok_lp[r, max(0, start):start + len(c)].tolist()
            lp = [0.0] * (len(c) - len(lp)) + lp  # completion tokens cut off the front count as certain
            rows, pos, run_min = [], 0, 0.0
            for n in lens:
                seg = lp[pos:pos + n]  # the step's characters; the newline after it is not scored
                pos += n + 1
                run_min = min(run_min, sum(seg))
                rows.append([sum(seg), min(seg, default=0.0), run_min])
            out[i] = rows
    return out, n_tokens


def fit_calibration(features: Sequence[Sequence[float]], targets: Sequence[float]) -> dict[str, Any]:
    """Logistic regression of ``targets`` (soft labels in [0, 1]) on standardised ``features`` (L-BFGS)."""
    if len(features) != len(targets) or not len(targets):
        raise DeliberateError(f"lprm: need as many labels as feature rows, at least one (got {len(features)} "
                              f"rows, {len(targets)} labels)")
    x = torch.tensor(features, dtype=torch.float64)
    y = torch.tensor(targets, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y))
    return {"features": list(FEATURES), "mu": mu.tolist(), "sd": sd.tolist(), "w": w.detach().tolist(), "b": float(b.detach()),
            "train_bce": loss, "n_steps": len(targets)}


class LikelihoodPRM(Verifier):
    """Per-step P(correct so far) = calibrated logistic function of the frozen LM's step log-probs; with
    an outcome calibration (``lorm:``) each step's score is P(right answer) were the solution to end there."""

    def __init__(self, model, tokenizer, calibration: dict[str, Any], task=None, path: str | None = None,
                 batch_size: int = 64):
        super().__init__()
        self.model, self.tokenizer, self.task, self.path = model.eval(), tokenizer, task, path
        self.cal, self.batch_size = calibration, batch_size
        self.target = calibration.get("target", "step")
        self.kind = KIND[self.target]
        self.name = f"{self.kind}:{path}" if path else self.kind
        self._mu, self._sd = torch.tensor(calibration["mu"]), torch.tensor(calibration["sd"])
        self._w, self._b = torch.tensor(calibration["w"]), float(calibration["b"])

    def _scores(self, feats: Sequence[Sequence[float]]) -> list[float]:
        z = ((torch.tensor(feats, dtype=torch.float32) - self._mu) / self._sd) @ self._w + self._b
        return torch.sigmoid(z).tolist()

    # --- incremental scoring for search ------------------------------------------------------
    # A search scores a child = parent prefix + one new step. The features of every earlier step are the
    # parent's (remembered in `_memo`); the new step's are its characters' log-probs, which an Engine over
    # the LM computes from the parent's cached KV (`Engine.tail_logprobs`): only the new step's tokens run.
    # Cold candidates whose earlier steps are unknown, and sequences too long for the LM's context, take
    # the full batched forward (`step_features`). Both give the same scores up to float noise (tested).
    _MEMO_MAX = 500_000

    def _engine(self):
        if getattr(self, "_eng", None) is None:
            from deliberate.models.engine import Engine, is_llama_like

            self._eng = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size) \
                if is_llama_like(self.model) else False
            self._memo: dict[tuple[str, tuple[str, ...]], list[float]] = {}
            self._max_len = int(getattr(self.model.config, "max_position_embeddings", 512))
        return self._eng

    def _remember(self, prompt: str, steps: Sequence[str], feats: Sequence[Sequence[float]]) -> None:
        if len(self._memo) > self._MEMO_MAX:
            self._memo.clear()
        for k, f in enumerate(feats):
            self._memo[(prompt, tuple(steps[:k + 1]))] = list(f)

    @torch.inference_mode()
    def score_batch(self, items):
        out: list[list[float]] = [[] for _ in items]
        eng = self._engine()
        inc, full = [], []
        for i, (p, steps) in enumerate(items):
            steps = list(steps)
            if not steps:
                continue
            prompt = problem_prompt(self.task, p)
            fits = bool(eng) and 1 + len(prompt) + len("\n".join(steps)) < self._max_len  # not truncated
            known = [self._memo.get((prompt, tuple(steps[:k + 1]))) for k in range(len(steps))] if eng else []
            if eng and all(f is not None for f in known):
                out[i] = self._scores(known)
            elif fits and all(f is not None for f in known[:-1]) and steps[-1]:
                inc.append((i, prompt, steps, known[:-1]))
            else:
                full.append((i, prompt, steps, fits))
        if inc:
            before = eng.stats.prefill_tokens
            lps = eng.tail_logprobs([prompt + "\n".join(steps) for _, prompt, steps, _ in inc],
                                    [len(steps[-1]) for _, _, steps, _ in inc])
            self.stats.calls += 1
            self.stats.sequences += len(inc)
            self.stats.tokens += eng.stats.prefill_tokens - before
            for (i, prompt, steps, known), lp in zip(inc, lps):
                seg = lp.tolist()
                run_min = min(0.0, *(f[0] for f in known), sum(seg))
                feats = [*known, [sum(seg), min(seg), run_min]]
                self._remember(prompt, steps, feats)
                out[i] = self._scores(feats)
        if full:
            feats, n_tokens = step_features(self.model, self.tokenizer, [(p, s) for _, p, s, _ in full],
                                            self.batch_size)
            for (i, prompt, steps, fits), f in zip(full, feats):
                out[i] = self._scores(f)
                if fits:
                    self._remember(prompt, steps, f)
            self.stats.tokens += n_tokens
            self.stats.sequences += len(full)
            self.stats.calls += -(-len(full) // self.batch_size)
        return out

    def describe(self):
        return {"name": self.name, "kind": self.kind, "path": self.path,
                "target": self.target,
                **{k: self.cal[k] for k in ("lm", "labels", "train_bce", "n_steps", "n_solutions") if k in self.cal}}


def load_lprm(directory: str | Path, task=None, batch_size: int = 64, device: str = "auto") -> LikelihoodPRM:
    """``device``: where the frozen LM runs (``auto``: a CUDA GPU when there is one, else the CPU), float32."""
    from deliberate.models.engine import resolve_device
    from deliberate.models.tiny import load_tiny

    d = Path(directory)
    f = d / CALIBRATION
    if not f.exists():
        raise DeliberateError(f"lprm: {str(f)!r} not found (make it with `deliberate train lprm`)")
    try:
        cal = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise DeliberateError(f"lprm: {f}: malformed JSON ({e})") from None
    dev = resolve_device(device, what="lprm")
    model, tok = load_tiny(d / "lm")
    return LikelihoodPRM(model.to(dev), tok, cal, task=task, path=str(directory), batch_size=batch_size)


def _load_checked(kind: str, arg, task, **options: Any) -> LikelihoodPRM:
    if not arg:
        flag = "" if kind == KIND["step"] else " --target outcome"
        raise DeliberateError(f"the {kind} verifier needs a directory: {kind}:DIR (from `deliberate train lprm{flag}`)")
    v = load_lprm(arg, task=task, **options)
    if v.kind != kind:
        raise DeliberateError(f"{kind}:{arg} holds a calibration fitted to {v.target} labels; load it as {v.kind}:{arg}")
    return v


@register_verifier("lprm", options=("batch_size", "device"))
def _lprm(arg, task=None, **kw: Any):
    return _load_checked("lprm", arg, task, **{k: v for k, v in kw.items() if k in ("batch_size", "device")})


@register_verifier("lorm", options=("batch_size", "device"))
def _lorm(arg, task=None, **kw: Any):
    return _load_checked("lorm", arg, task, **{k: v for k, v in kw.items() if k in ("batch_size", "device")})


def train_lprm(lm: str | Path, labels: str | Path, out: str | Path, task=None, progress: bool = True,
               target: str = "step") -> dict[str, Any]:
    """Fit the calibration of :class:`LikelihoodPRM` with the LM ``lm``, reading each labelled solution
    after ``task``'s prompt (as the verifier will): to every step's soft label (``target="step"``, a PRM)
    or to each solution's outcome from its last step (``target="outcome"``, an ORM). Writes ``OUT/lm``
    (a copy of the LM) and ``OUT/calibration.json`` (last, atomically)."""
    from tqdm.auto import tqdm

    from deliberate.models.tiny import load_tiny
    from deliberate.rewards.mc_labels import read_labels

    if target not in TARGETS:
        raise DeliberateError(f"lprm: target must be one of {', '.join(TARGETS)} (got {target!r})")
    rows = [r for r in read_labels(labels) if r["steps"]]
    if not rows:
        raise DeliberateError(f"lprm: {labels} holds no labelled solution with steps")
    model, tok = load_tiny(lm)
    model.eval()
    X: list[list[float]] = []
    Y: list[float] = []
    bar = tqdm(total=len(rows), desc="lprm features", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(rows), 256):
        chunk = rows[lo:lo + 256]
        prompts = [problem_prompt(task, Problem(id=str(r.get("problem_id", "")), question=r["question"],
                                                answer=str(r.get("gold")))) for r in chunk]
        feats, _ = step_features(model, tok, [(p, r["steps"]) for p, r in zip(prompts, chunk)])
        for r, f in zip(chunk, feats):
            if target == "step":
                X += f
                Y += [float(v) for v in r["soft"]]
            else:
                X.append(f[-1])
                Y.append(float(r["outcome"]))
        bar.update(len(chunk))
    bar.close()
    fit = fit_calibration(X, Y)
    if target == "outcome":  # one fitted row per solution, not per step
        del fit["n_steps"]
    cal = {**fit, "target": target, "n_solutions": len(rows), "lm": str(lm), "labels": str(labels),
           "task": getattr(task, "name", None)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "lm").exists():
        shutil.rmtree(out / "lm")
    shutil.copytree(lm, out / "lm", ignore=shutil.ignore_patterns("optimizer.pt", "rng.pt", "trainer_state.json"))
    write_json_atomic(out / CALIBRATION, cal)
    return cal
