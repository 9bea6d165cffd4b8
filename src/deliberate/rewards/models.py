"""The PRM/ORM that ``deliberate train prm|orm`` writes: a causal LM's backbone with a 1-logit
token-classification head.

``prm:DIR`` / ``orm:DIR`` — a checkpoint written by ``deliberate train prm|orm``: the tiny char-level
Llama as a ``LlamaForTokenClassification``, or a Hugging Face causal LM (``--model`` naming an HF
directory, a ``.gguf`` or ``smollm2``) as its ``AutoModelForTokenClassification`` with the HF tokenizer,
usually initialised from the policy's weights (the backbone already reads the task's format). Training
and scoring encode a candidate with the same :func:`encode_steps` (the tokenizer's own BOS first, then
each ``step + STEP_END`` as one chunk), so the positions scored are the positions trained. The scored text is::

    <bos> Q: ...\\nA:\\n  step 1 \\n  step 2 \\n ...

and the score of step ``i`` is ``sigmoid(logit)`` at the ``\\n`` that ends step ``i``. Because the
model is causal, that position has seen exactly the question and steps ``1..i``, so **one forward pass
scores every prefix** of a candidate. The PRM is trained on every step end (step labels); the ORM
only on the last one (outcome labels), but it is asked at every step end at test time, so both return
one score per step.

Hugging Face checkpoints (``hf-prm:``, ``hf-orm:`` and the published PRM formats) live in
``classifier.py``, ``math_shepherd.py``, ``rlhflow.py`` and ``qwen_prm.py``; the encoding helpers here
(:func:`encode_steps`, :func:`pad_right`, :func:`keep_tail`, :func:`head_probability`) are shared with them.
A trained HF PRM is also an ordinary 1-logit token classifier, so ``hf-prm:DIR/model`` loads it too (it encodes
each step and its separator apart, which can tokenize differently; ``prm:`` reads it exactly as trained).

Every verifier here counts its compute in ``stats``: forward calls, sequences, tokens.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import Engine, is_llama_like, resolve_device
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.types import Problem

#: file in a verifier checkpoint that says what it is (kind, task, how it was trained)
VERIFIER_META = "verifier.json"
VERIFIER_KINDS = ("prm", "orm")
#: what ends every step in the text a learned verifier reads (the tasks' default step delimiter)
STEP_END = "\n"
#: a tiny checkpoint holds this file (an HF one holds the HF tokenizer's files instead)
CHAR_TOKENIZER_FILE = "char_tokenizer.json"


# --------------------------------------------------------------------------------------------
# Encoding: prompt + steps -> token ids and the positions that end each step
# --------------------------------------------------------------------------------------------

def encode_steps(tokenizer, prompt: str, steps: Sequence[str], separator: str = "\n",
                 bos: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of ``[bos] + prompt + (step + separator) * n`` and, per step, the index of its last token.

    Steps are encoded one chunk at a time so the step-end positions are exact for any tokenizer
    (for the char tokenizer this equals encoding the whole string)."""
    ids = ([bos] if bos is not None else []) + list(tokenizer.encode(prompt))
    ends = []
    for s in steps:
        chunk = list(tokenizer.encode(s + separator))
        if not chunk:
            raise DeliberateError(f"step {s!r} encodes to no tokens")
        ids.extend(chunk)
        ends.append(len(ids) - 1)
    return ids, ends


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``seqs`` right-padded with ``pad_id``, on ``device`` (default: the CPU)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


_pad_right = pad_right  # the old name: train/vstar.py still imports it


def keep_tail(ids: list[int], ends: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Keep the last ``max_len`` tokens (a too-long candidate is judged on its end, not rejected).

    Step ends that fall off the front are read at the first kept position."""
    if len(ids) <= max_len:
        return ids, ends
    cut = len(ids) - max_len
    return ids[cut:], [max(0, e - cut) for e in ends]


def head_probability(logits: torch.Tensor, positive_label: int = 1) -> torch.Tensor:
    """P(correct) from a classification head's logits (``[..., num_labels]``).

    1 label: ``sigmoid``; 2 or more: ``softmax`` probability of ``positive_label``."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[..., 0].float())
    if not 0 <= positive_label < logits.shape[-1]:
        raise DeliberateError(f"positive_label {positive_label} is not a label of a {logits.shape[-1]}-label head")
    return torch.softmax(logits.float(), dim=-1)[..., positive_label]


# --------------------------------------------------------------------------------------------
# Building, saving and loading the PRM / ORM (tiny or Hugging Face)
# --------------------------------------------------------------------------------------------

class HFStepTokenizer:
    """A Hugging Face tokenizer behind the small protocol the learned verifiers train and score with.

    ``encode`` adds no special tokens; ``bos_token_id`` is the tokenizer's own BOS (None when it has
    none), put first as TRL's PRMTrainer and the ``hf-prm`` / ``genrm`` scorers put it; ``pad_token_id`` is
    the pad token, else EOS, else 0 (padding is masked, its id never matters)."""

    def __init__(self, tokenizer):
        self.hf = tokenizer
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id if self.eos_token_id is not None else 0)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(directory)

    @classmethod
    def load(cls, directory: str | Path) -> HFStepTokenizer:
        from transformers import AutoTokenizer  # heavy; only HF verifiers need it

        try:
            return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))
        except (OSError, ValueError, KeyError) as e:
            raise DeliberateError(f"cannot load the tokenizer of {directory}: {e}") from None


def is_tiny_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tiny (char-tokenizer) checkpoint rather than a Hugging Face one."""
    return Path(directory, CHAR_TOKENIZER_FILE).is_file()


def classification_head(model) -> torch.nn.Linear:
    """The token-classification head of ``model`` (``score`` for Llama-like models, ``classifier`` for others)."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise DeliberateError(f"{type(model).__name__} has no linear classification head (score / classifier)")
    return head


def zero_head(model) -> None:
    """A fresh head starting at logit 0 (p = 0.5) keeps the first steps' gradients sane."""
    head = classification_head(model)
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)


def build_reward_model(tokenizer, init_from: str | Path | None = None, model_config=None, seed: int = 0):
    """The tiny PRM/ORM: a ``LlamaForTokenClassification`` with one logit per position.

    ``init_from`` (a tiny policy checkpoint) gives the backbone its trained weights and a fresh
    head; otherwise a fresh model of ``model_config`` (a :class:`~deliberate.models.tiny.TinyConfig`).
    Dropout on the head is off: the tiny models are trained without dropout."""
    from transformers import AutoConfig, LlamaForTokenClassification  # heavy; only the verifiers' training needs it

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if init_from is not None:
            d = Path(init_from)
            if not (d / "config.json").exists():
                raise DeliberateError(f"--init-from {str(d)!r} is not a model checkpoint (no config.json)")
            cfg = AutoConfig.from_pretrained(d, local_files_only=True)
            cfg.num_labels = 1
            cfg.classifier_dropout = 0.0
            model = LlamaForTokenClassification.from_pretrained(d, config=cfg, local_files_only=True)
        else:
            causal = build_tiny_model(model_config or TinyConfig(), tokenizer, seed=seed)
            cfg = causal.config
            cfg.num_labels = 1
            cfg.classifier_dropout = 0.0
            model = LlamaForTokenClassification(cfg)
    zero_head(model)
    return model


def reward_model_from_lm(lm, seed: int = 0):
    """An ``AutoModelForTokenClassification`` with one logit per position: the Hugging Face causal LM
    ``lm``'s backbone weights (copied) under a fresh zero head, in float32, classifier dropout off."""
    from transformers import AutoModelForTokenClassification  # heavy; only HF verifiers need it

    cfg = copy.deepcopy(lm.config)
    cfg.num_labels = 1
    cfg.classifier_dropout = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = AutoModelForTokenClassification.from_config(cfg, dtype=torch.float32)
        except ValueError as e:
            raise DeliberateError(f"a {cfg.model_type!r} model has no token-classification class in transformers, "
                                  f"so it cannot become a PRM/ORM ({str(e).splitlines()[0]})") from None
    model.base_model.load_state_dict(lm.base_model.state_dict())  # strict: every backbone weight is copied
    zero_head(model)
    return model


def save_reward_model(model, tokenizer, directory: str | Path, meta: dict[str, Any]) -> None:
    """Weights + tokenizer (char or HF) + ``verifier.json`` (kind, task, training provenance)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    (directory / VERIFIER_META).write_text(json.dumps(meta, indent=2) + "\n")


def load_reward_model(directory: str | Path):
    """(model, tokenizer, meta) of a ``deliberate train prm|orm`` checkpoint (tiny or HF, in float32)."""
    # lazy: transformers (seconds to import); every verifier lookup imports this module, only loading needs it
    from transformers import AutoModelForTokenClassification, LlamaForTokenClassification

    d = Path(directory)
    if not d.is_dir():
        raise DeliberateError(f"verifier checkpoint {str(d)!r} not found (train one with `deliberate train prm`)")
    if not (d / VERIFIER_META).exists() and (d / "model" / VERIFIER_META).exists():
        d = d / "model"  # the training output directory: its final model
    meta_f = d / VERIFIER_META
    if not meta_f.exists():
        raise DeliberateError(f"{d} is not a PRM/ORM checkpoint (no {VERIFIER_META}); "
                              "for a Hugging Face checkpoint use hf-prm:, hf-orm: or a published format "
                              "(math-shepherd:, rlhflow-prm:, qwen-prm:)")
    try:
        meta = json.loads(meta_f.read_text())
    except json.JSONDecodeError as e:
        raise DeliberateError(f"{meta_f}: malformed JSON ({e})") from None
    if is_tiny_dir(d):
        tok = CharTokenizer.load(d)
        model = LlamaForTokenClassification.from_pretrained(d, local_files_only=True)
    else:
        tok = HFStepTokenizer.load(d)
        model = AutoModelForTokenClassification.from_pretrained(d, local_files_only=True, dtype=torch.float32)
    return model.eval(), tok, meta


# --------------------------------------------------------------------------------------------
# The PRM / ORM verifier
# --------------------------------------------------------------------------------------------


class StepRewardModel(Verifier):
    """PRM or ORM (tiny or HF): one forward pass per batch scores every step prefix."""

    def __init__(self, model, tokenizer, kind: str = "prm", task=None, batch_size: int = 256,
                 path: str | None = None, meta: dict[str, Any] | None = None):
        super().__init__()
        if kind not in VERIFIER_KINDS:
            raise DeliberateError(f"reward model kind must be one of {', '.join(VERIFIER_KINDS)} (got {kind!r})")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DeliberateError(f"batch_size must be a positive integer (got {batch_size!r})")
        self.model, self.tokenizer, self.kind, self.task = model.eval(), tokenizer, kind, task
        self.batch_size, self.path, self.meta = batch_size, path, dict(meta or {})
        self.max_len = int(getattr(model.config, "max_position_embeddings", 512))
        self.device = next(model.parameters()).device
        self.name = f"{kind}:{path}" if path else kind

    def _prompt(self, problem: Problem) -> str:
        return problem_prompt(self.task, problem)

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        ids, ends = encode_steps(self.tokenizer, self._prompt(problem), steps, STEP_END, self.tokenizer.bos_token_id)
        return keep_tail(ids, ends, self.max_len)

    # --- incremental scoring for search ------------------------------------------------------
    # A search scores a child = parent prefix + one new step. The score of every earlier step is the
    # parent's (remembered in `_memo`), and the new step's score is the head output at the last token,
    # which an Engine over this model computes from the parent's cached KV: only the new step's tokens
    # run through the model. Anything else (cold candidates, truncated long inputs) takes the full
    # batched forward below. Both paths give the same numbers up to float noise (tested).
    _MEMO_MAX = 500_000

    def _engine(self):
        if getattr(self, "_eng", None) is None:
            # the engine encodes a whole text at once, which equals encoding it step by step only for the
            # char tokenizer: an HF tokenizer's merges could move the step ends, so HF models take the full pass
            self._eng = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size) \
                if is_llama_like(self.model) and isinstance(self.tokenizer, CharTokenizer) else False
            self._memo: dict[tuple[str, tuple[str, ...]], float] = {}
        return self._eng

    def _remember(self, prompt: str, steps: Sequence[str], scores: Sequence[float]) -> None:
        if len(self._memo) > self._MEMO_MAX:
            self._memo.clear()
        for k, sc in enumerate(scores):
            self._memo[(prompt, tuple(steps[:k + 1]))] = float(sc)

    @torch.inference_mode()
    def score_batch(self, items):
        eng = self._engine()
        if not eng:
            return self._score_full(items)
        out: list[list[float] | None] = [None] * len(items)
        inc, full = [], []
        for i, (p, steps) in enumerate(items):
            steps = list(steps)
            if not steps:
                out[i] = []
                continue
            prompt = self._prompt(p)
            known = [self._memo.get((prompt, tuple(steps[:k + 1]))) for k in range(len(steps))]
            if all(x is not None for x in known):
                out[i] = known  # type: ignore[assignment]
            elif all(x is not None for x in known[:-1]) and len(self.encode(p, steps)[0]) < self.max_len:
                inc.append((i, prompt, steps, known[:-1]))
            else:
                full.append(i)
        if inc:
            before = eng.stats.prefill_tokens
            texts = [prompt + "".join(st + STEP_END for st in steps) for _, prompt, steps, _ in inc]
            probs = head_probability(eng.last_logits(texts)).tolist()
            self.stats.calls += 1
            self.stats.sequences += len(inc)
            self.stats.tokens += eng.stats.prefill_tokens - before
            for (i, prompt, steps, known), pr in zip(inc, probs):
                out[i] = [*known, pr]
                self._remember(prompt, steps, out[i])  # type: ignore[arg-type]
        if full:
            got = self._score_full([items[i] for i in full])
            for i, sc in zip(full, got):
                out[i] = sc
                p, steps = items[i]
                if len(self.encode(p, list(steps))[0]) < self.max_len:
                    self._remember(self._prompt(p), list(steps), sc)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_full(self, items):
        out: list[list[float]] = [[] for _ in items]
        enc = [(i, *self.encode(p, list(s))) for i, (p, s) in enumerate(items) if len(s)]
        enc.sort(key=lambda e: len(e[1]))  # similar lengths together: less padding
        for start in range(0, len(enc), self.batch_size):
            chunk = enc[start:start + self.batch_size]
            ids, mask = pad_right([e[1] for e in chunk], self.tokenizer.pad_token_id, self.device)
            probs = head_probability(self.model(input_ids=ids, attention_mask=mask).logits)
            self.stats.calls += 1
            self.stats.sequences += len(chunk)
            self.stats.tokens += int(mask.sum())
            for row, (i, _, ends) in enumerate(chunk):
                out[i] = probs[row, ends].tolist()
        return out

    def describe(self):
        return {"name": self.name, "kind": self.kind, "path": self.path,
                **{k: self.meta[k] for k in ("task", "task_options", "labels", "label_type") if k in self.meta}}


def _load_verifier(arg: str | None, kind: str, task=None, batch_size: int = 256, device: str = "auto",
                   **_: Any) -> StepRewardModel:
    """``device``: where the verifier runs (``auto``: a CUDA GPU when there is one, else the CPU), float32."""
    if not arg:
        raise DeliberateError(f"the {kind} verifier needs a checkpoint: {kind}:DIR")
    dev = resolve_device(device, what=f"{kind} verifier")
    model, tok, meta = load_reward_model(arg)
    model = model.to(dev)  # on the CPU: the same object
    if meta.get("kind") not in (None, kind):
        raise DeliberateError(f"{arg} holds a {meta.get('kind')!r} model, not {kind!r} (use {meta.get('kind')}:{arg})")
    return StepRewardModel(model, tok, kind=kind, task=task, batch_size=batch_size, path=arg, meta=meta)


@register_verifier("prm", options=("batch_size", "device"))
def _prm(arg, task=None, **kw):
    return _load_verifier(arg, "prm", task=task, **kw)


@register_verifier("orm", options=("batch_size", "device"))
def _orm(arg, task=None, **kw):
    return _load_verifier(arg, "orm", task=task, **kw)
