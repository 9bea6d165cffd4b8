"""Likelihood PRM: a frozen LM's per-step log-probabilities, calibrated on Monte-Carlo step labels.

    deliberate train lprm --model runs/verifier-backbone --labels runs/labels --out runs/lprm
    deliberate sweep ... --verifier lprm:runs/lprm
    deliberate train lprm --model smollm2 --labels runs/labels --out runs/lprm-smollm2   # any HF causal LM

Each step of a solution gets three features from the language model ``--model`` (alias ``--lm``; kept
frozen): the summed log-probability of the step's tokens, the smallest of those token log-probabilities,
and the running minimum of the step sums so far. The LM is a tiny checkpoint (one token per character),
an HF causal-LM directory, a ``.gguf`` file or ``smollm2`` (as ``--model`` everywhere, see
:func:`deliberate.models.hf.resolve_path`). The text is the prompt and the steps joined by newlines; each
newline-separated piece is tokenized on its own (:class:`StepCodec`), so every step's tokens are exactly
its own, separators are not scored, and a step prefix gets the same scores as the same steps inside a
longer solution (what step-level search needs). A logistic regression on the standardised features is
fitted to the Monte-Carlo soft labels (``deliberate label mc``): score = sigmoid(w . (f - mu) / sd + b),
one probability per step prefix.

Why: a PRM fine-tuned from an LM with a 1-logit head at each step's end (``deliberate train prm
--init-from``) sees only the hidden state there, not how surprised the LM was by the step's digits;
the log-probs carry exactly that. On arith, with an LM stronger than the policy, this verifier picks
far better than majority vote where the head-on-hidden-state PRM from the same LM does not
(docs/RESULTS.md). ``OUT/calibration.json`` holds the fit and names the LM: a tiny LM is copied to
``OUT/lm`` (the directory is self-contained); an HF LM is not copied (it may be gigabytes) but recorded
as ``lm_source`` (``smollm2`` or an absolute path), and ``lprm:OUT`` loads it from there. The tiny LM
computes training features on the CPU; an HF LM runs in float32 on ``device`` (a GPU when there is one).

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
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.fingerprint import weights_fingerprint
from deliberate.models.engine import Engine, is_llama_like, resolve_device
from deliberate.models.hf import HFTokenizer, load_hf, resolve_path
from deliberate.models.tiny import CharTokenizer, load_tiny
from deliberate.records import write_json_atomic
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.rewards.mc_labels import read_labels
from deliberate.types import Problem

FEATURES = ("step_logprob", "step_min_char_logprob", "running_min_step_logprob")
CALIBRATION = "calibration.json"
#: what the calibration is fitted to: every step's Monte-Carlo soft label (a PRM) or each solution's
#: outcome from its last step's features (an ORM)
TARGETS = ("step", "outcome")
#: the verifier spec prefix a calibration of each target loads under
KIND = {"step": "lprm", "outcome": "lorm"}
SEPARATOR = "\n"


class StepCodec:
    """A frozen LM's tokenizer as the likelihood features read text: every newline-separated piece encoded
    on its own and the newlines between them as their own tokens. A step's tokens are then exactly its
    own (no BPE merge across a separator), and the encoding of prompt + steps is the prompt's followed by
    the steps' whenever the prompt ends with a newline. For the tiny model's character tokenizer this is
    plain encoding. ``bos_token_id`` (``None``: no BOS) and ``pad_token_id`` are what the LM is run with;
    an :class:`~deliberate.models.engine.Engine` may take a codec as its tokenizer."""

    def __init__(self, tokenizer, bos_token_id: int | None, pad_token_id: int):
        self.tokenizer, self.bos_token_id, self.pad_token_id = tokenizer, bos_token_id, pad_token_id
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.char_level = isinstance(tokenizer, CharTokenizer)
        self.newline = list(tokenizer.encode(SEPARATOR))

    @classmethod
    def of(cls, tokenizer) -> StepCodec:
        """A codec for a tiny :class:`CharTokenizer` (or a codec, returned as it is)."""
        if isinstance(tokenizer, StepCodec):
            return tokenizer
        if not isinstance(tokenizer, CharTokenizer):  # an HF tokenizer would add special tokens to every piece
            raise DeliberateError(f"lprm: expected a tiny CharTokenizer or a StepCodec (got "
                                  f"{type(tokenizer).__name__}; wrap an HF tokenizer with StepCodec.of_hf)")
        return cls(tokenizer, tokenizer.bos_token_id, tokenizer.pad_token_id)

    @classmethod
    def of_hf(cls, hf_tokenizer) -> StepCodec:
        """A codec for a Hugging Face tokenizer: a BOS only where the tokenizer adds one itself (as the
        ``hf`` backend does for plain prompts), padding with its pad (else EOS) token."""
        codec = HFTokenizer(hf_tokenizer)
        pad = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else (codec.eos_token_id or 0)
        return cls(codec, codec.bos_token_id, int(pad))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        if self.char_level:  # one token per character: piecewise encoding is the plain one
            return list(self.tokenizer.encode(text))
        ids: list[int] = []
        for k, piece in enumerate(text.split(SEPARATOR)):
            if k:
                ids += self.newline
            if piece:
                ids += self.tokenizer.encode(piece)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def joins(self, prompt: str) -> bool:
        """Whether ``encode(prompt + text) == encode(prompt) + encode(text)`` for every ``text``."""
        return self.char_level or not prompt or prompt.endswith(SEPARATOR)


def is_tiny_lm(source: str | Path) -> bool:
    """Whether ``source`` is a tiny checkpoint directory (has ``char_tokenizer.json``)."""
    return (Path(str(source).strip()).expanduser() / "char_tokenizer.json").is_file()


#: frozen LMs already loaded in this process, by (weights fingerprint, device): a likelihood PRM and ORM on one
#: backbone (each directory holds its own copy of a tiny LM) share the model, and through it the step-feature
#: memo, so the ORM scores a pool the PRM has scored without running the LM again
_LOADED: dict[tuple[str, str], tuple[Any, StepCodec]] = {}


def load_lm(source: str | Path, device: str = "auto"):
    """(frozen model in eval mode, :class:`StepCodec`) of ``source`` on ``device`` (``auto``: a CUDA GPU when
    there is one, else the CPU): a tiny checkpoint directory, an HF causal-LM directory, a ``.gguf`` file or
    ``smollm2``; float32. The same weights on the same device load once per process (never modify the model)."""
    key = str(source).strip()
    dev = resolve_device(device, what="lprm")
    tiny = is_tiny_lm(key)
    path = Path(key).expanduser() if tiny else resolve_path(key)[0]
    ident = (weights_fingerprint(path) or str(path), str(dev))
    if ident not in _LOADED:
        if tiny:
            model, tok = load_tiny(path)
            _LOADED[ident] = (model.to(dev).eval(), StepCodec.of(tok))
        else:
            model, tok = load_hf(path, dtype=torch.float32, device=str(dev))
            _LOADED[ident] = (model.eval(), StepCodec.of_hf(tok))
    return _LOADED[ident]


def hf_source(source: str | Path) -> str:
    """How an HF LM is recorded in the calibration: a built-in name as it is, a path made absolute."""
    key = str(source).strip()
    p = Path(key).expanduser()
    return str(p.resolve()) if p.exists() else key


@torch.inference_mode()
def step_features(model, tokenizer, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64
                  ) -> tuple[list[list[list[float]]], int]:
    """For each (prompt, steps): one feature row (:data:`FEATURES`) per step, from one forward pass of
    prompt + steps joined by newlines (batched, right-padded); also the number of tokens run.
    ``tokenizer``: a tiny :class:`CharTokenizer` or a :class:`StepCodec` (any LM's)."""
    codec = StepCodec.of(tokenizer)
    enc = []
    for prompt, steps in items:
        p = ([codec.bos_token_id] if codec.bos_token_id is not None else []) + codec.encode(prompt)
        if not p:
            raise DeliberateError("lprm: an empty prompt without a BOS token leaves the first step unpredicted")
        c = codec.encode(SEPARATOR.join(steps))
        enc.append((p, c, [len(codec.encode(s)) for s in steps]))
    sep = len(codec.newline)
    max_len = int(getattr(model.config, "max_position_embeddings", 512))
    out: list[list[list[float]]] = [[] for _ in items]
    n_tokens = 0
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]) + len(enc[i][1]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        seqs = [(enc[i][0] + enc[i][1])[-max_len:] for i in chunk]
        n_tokens += sum(len(q) for q in seqs)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), codec.pad_token_id, dtype=torch.long)
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
                seg = lp[pos:pos + n]  # the step's tokens; the separator after it is not scored
                pos += n + sep
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


#: per frozen LM (weakly held): its incremental-scoring engine and step-feature memo (see LikelihoodPRM._engine)
_SHARED: "weakref.WeakKeyDictionary[Any, tuple[Any, dict]]" = weakref.WeakKeyDictionary()


class LikelihoodPRM(Verifier):
    """Per-step P(correct so far) = calibrated logistic function of the frozen LM's step log-probs; with
    an outcome calibration (``lorm:``) each step's score is P(right answer) were the solution to end there.
    ``tokenizer``: a tiny :class:`CharTokenizer` or a :class:`StepCodec`."""

    def __init__(self, model, tokenizer, calibration: dict[str, Any], task=None, path: str | None = None,
                 batch_size: int = 64):
        super().__init__()
        self.model, self.tokenizer, self.task, self.path = model.eval(), StepCodec.of(tokenizer), task, path
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
    # parent's (remembered in `_memo`); the new step's are its tokens' log-probs, which an Engine over
    # the LM computes from the parent's cached KV (`Engine.tail_logprobs`): only the new step's tokens run.
    # The Engine reads text through the StepCodec, so its tokens are the full forward's whenever the prompt
    # joins its steps cleanly (`StepCodec.joins`). Cold candidates whose earlier steps are unknown, and
    # sequences too long for the LM's context, take the full batched forward (`step_features`). Both give
    # the same scores up to float noise (tested).
    _MEMO_MAX = 500_000

    def _engine(self):
        if getattr(self, "_eng", None) is None:
            # one engine and feature memo per model object: verifiers sharing a loaded LM share them
            if self.model not in _SHARED:
                eng = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size) \
                    if is_llama_like(self.model) else False
                _SHARED[self.model] = (eng, {})
            self._eng, self._memo = _SHARED[self.model]
            self._max_len = int(getattr(self.model.config, "max_position_embeddings", 512))
        return self._eng

    def _remember(self, prompt: str, steps: Sequence[str], feats: Sequence[Sequence[float]]) -> None:
        if len(self._memo) > self._MEMO_MAX:
            self._memo.clear()
        for k, f in enumerate(feats):
            self._memo[(prompt, tuple(steps[:k + 1]))] = list(f)

    def _length(self, prompt: str, steps: Sequence[str]) -> int:
        """Tokens of the full forward over ``prompt`` and ``steps`` (BOS included)."""
        codec = self.tokenizer
        if codec.char_level:  # no need to encode: one token per character
            return 1 + len(prompt) + len(SEPARATOR.join(steps))
        bos = 0 if codec.bos_token_id is None else 1
        return bos + len(codec.encode(prompt)) + len(codec.encode(SEPARATOR.join(steps)))

    @torch.inference_mode()
    def score_batch(self, items):
        out: list[list[float]] = [[] for _ in items]
        eng = self._engine()
        codec = self.tokenizer
        inc, full = [], []
        for i, (p, steps) in enumerate(items):
            steps = list(steps)
            if not steps:
                continue
            prompt = problem_prompt(self.task, p)
            fits = bool(eng) and codec.joins(prompt) and self._length(prompt, steps) < self._max_len  # not truncated
            known = [self._memo.get((prompt, tuple(steps[:k + 1]))) for k in range(len(steps))] if eng else []
            tail = len(codec.encode(steps[-1])) if fits else 0
            if eng and all(f is not None for f in known):
                out[i] = self._scores(known)
            elif fits and all(f is not None for f in known[:-1]) and tail:
                inc.append((i, prompt, steps, known[:-1], tail))
            else:
                full.append((i, prompt, steps, fits))
        if inc:
            before = eng.stats.prefill_tokens
            lps = eng.tail_logprobs([prompt + SEPARATOR.join(steps) for _, prompt, steps, _, _ in inc],
                                    [tail for *_, tail in inc])
            self.stats.calls += 1
            self.stats.sequences += len(inc)
            self.stats.tokens += eng.stats.prefill_tokens - before
            for (i, prompt, steps, known, _), lp in zip(inc, lps):
                seg = lp.tolist()
                run_min = min(0.0, *(f[0] for f in known), sum(seg))
                feats = [*known, [sum(seg), min(seg), run_min]]
                self._remember(prompt, steps, feats)
                out[i] = self._scores(feats)
        if full:
            feats, n_tokens = step_features(self.model, codec, [(p, s) for _, p, s, _ in full], self.batch_size)
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
                **{k: self.cal[k] for k in ("lm", "lm_source", "labels", "train_bce", "n_steps", "n_solutions")
                   if k in self.cal}}


def load_lprm(directory: str | Path, task=None, batch_size: int = 64, device: str = "auto") -> LikelihoodPRM:
    """The verifier in ``directory`` (from :func:`train_lprm`) with its LM: the tiny copy in ``OUT/lm``, or
    the HF LM its calibration records as ``lm_source``. ``device``: where the frozen LM runs (``auto``: a
    CUDA GPU when there is one, else the CPU), float32."""
    d = Path(directory)
    f = d / CALIBRATION
    if not f.exists():
        raise DeliberateError(f"lprm: {str(f)!r} not found (make it with `deliberate train lprm`)")
    try:
        cal = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise DeliberateError(f"lprm: {f}: malformed JSON ({e})") from None
    if (d / "lm").exists():
        source: str | Path = d / "lm"
    elif cal.get("lm_source"):
        source = cal["lm_source"]
    else:
        raise DeliberateError(f"lprm: {d} has neither a tiny LM (lm/) nor an HF LM recorded (lm_source)")
    try:
        model, codec = load_lm(source, device)
    except DeliberateError as e:
        raise DeliberateError(f"lprm: {d}: cannot load its LM {source} ({e})") from None
    return LikelihoodPRM(model, codec, cal, task=task, path=str(directory), batch_size=batch_size)


def load_checked(kind: str, arg, task, **options: Any) -> LikelihoodPRM:
    """``kind:arg`` (``lprm`` or ``lorm``) loaded, refusing a calibration fitted to the other target."""
    if not arg:
        flag = "" if kind == KIND["step"] else " --target outcome"
        raise DeliberateError(f"the {kind} verifier needs a directory: {kind}:DIR (from `deliberate train lprm{flag}`)")
    v = load_lprm(arg, task=task, **options)
    if v.kind != kind:
        raise DeliberateError(f"{kind}:{arg} holds a calibration fitted to {v.target} labels; load it as {v.kind}:{arg}")
    return v


@register_verifier("lprm", options=("batch_size", "device"))
def _lprm(arg, task=None, **kw: Any):
    return load_checked("lprm", arg, task, **{k: v for k, v in kw.items() if k in ("batch_size", "device")})


@register_verifier("lorm", options=("batch_size", "device"))
def _lorm(arg, task=None, **kw: Any):
    return load_checked("lorm", arg, task, **{k: v for k, v in kw.items() if k in ("batch_size", "device")})


def train_lprm(lm: str | Path, labels: str | Path, out: str | Path, task=None, progress: bool = True,
               target: str = "step", device: str = "auto") -> dict[str, Any]:
    """Fit the calibration of :class:`LikelihoodPRM` with the LM ``lm`` (see :func:`load_lm`), reading each
    labelled solution after ``task``'s prompt (as the verifier will): to every step's soft label
    (``target="step"``, a PRM) or to each solution's outcome from its last step (``target="outcome"``, an
    ORM). Writes ``OUT/calibration.json`` last, atomically, after ``OUT/lm`` (a copy of a tiny LM, which
    runs on the CPU here); an HF LM runs on ``device`` and is recorded, not copied."""
    if target not in TARGETS:
        raise DeliberateError(f"lprm: target must be one of {', '.join(TARGETS)} (got {target!r})")
    rows = [r for r in read_labels(labels) if r["steps"]]
    if not rows:
        raise DeliberateError(f"lprm: {labels} holds no labelled solution with steps")
    tiny = is_tiny_lm(lm)
    model, codec = load_lm(lm, "cpu" if tiny else device)
    X: list[list[float]] = []
    Y: list[float] = []
    bar = tqdm(total=len(rows), desc="lprm features", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(rows), 256):
        chunk = rows[lo:lo + 256]
        prompts = [problem_prompt(task, Problem(id=str(r.get("problem_id", "")), question=r["question"],
                                                answer=str(r.get("gold")))) for r in chunk]
        feats, _ = step_features(model, codec, [(p, r["steps"]) for p, r in zip(prompts, chunk)])
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
    if not tiny:
        cal["lm_source"] = hf_source(lm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "lm").exists():  # also when an HF LM replaces a tiny one: lm/ would take precedence
        shutil.rmtree(out / "lm")
    if tiny:
        shutil.copytree(lm, out / "lm", ignore=shutil.ignore_patterns("optimizer.pt", "rng.pt", "trainer_state.json"))
    write_json_atomic(out / CALIBRATION, cal)
    return cal
