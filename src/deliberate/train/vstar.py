"""V-STaR (Hosseini et al., 2024): a generator from correct samples, a DPO verifier from (correct, incorrect) pairs.

    deliberate train vstar --init runs/quickstart/sft/model --out runs/vstar
    deliberate sweep --task arith --task-arg min_ops=1 --task-arg max_ops=3 --task-arg max_operand=15 \\
        --model runs/vstar/generator/model --verifier dpo:runs/vstar/verifier \\
        --strategies majority,best_of_n,weighted --budgets 16,64 --seeds 0,1,2 --out runs/vstar/sweep

1. The seed policy samples ``k`` solutions for each of ``n_train`` training problems; the task's
   checker labels them.
2. **Generator**: the seed fine-tuned on the correct ones (at most ``max_per_problem`` distinct per
   problem) — one STaR / ReST-EM iteration.
3. **Verifier**: the seed trained with DPO on the Cartesian product of each problem's correct x
   incorrect solutions (at most ``dpo.max_pairs_per_problem``, chosen with the seed), against the
   frozen seed as reference: loss ``-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) -
   log ref(y_l))))`` over the solution tokens. ``val_fraction`` of the problems are held out to report
   pair accuracy (how often the implied reward ranks the correct solution above the incorrect one).
4. Best-of-k with the verifier (``dpo:OUT/verifier``, :mod:`deliberate.rewards.dpo`) through
   ``deliberate sweep``, against majority vote at the same k.

``verifier_init`` / ``verifier_ref`` start the verifier from another checkpoint (same tokenizer) and/or
reference it to another one; by default both are ``init``, as in the paper. With ``verifier_init`` a
stronger LM and ``verifier_ref`` the policy, the implied reward starts at ``log p_strong - log p_policy``
(high where the stronger LM finds a step likelier than the policy that wrote it) and DPO sharpens it.

``keep="process"`` counts a sample as correct only if its answer is right **and** every step passes
the task's step checker (as ``rest-em --keep process``): right answers reached through a wrong step
are then neither generator data nor a DPO "chosen" side, but a "rejected" one.

Each stage writes its output atomically and is skipped when rerun.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.models.engine import resolve_device
from deliberate.models.tiny import CharTokenizer, load_tiny
from deliberate.policy import FinetuneSettings, TinyPolicy
from deliberate.policy.tiny import save_model
from deliberate.rewards.dpo import token_logprobs
from deliberate.rewards.models import _pad_right, encode_steps
from deliberate.tasks import get_task
from deliberate.train.common import batch_indices, lr_at
from deliberate.train.selfimprove import (
    VERIFIED,
    Stopwatch,
    add_config_arguments,
    cached_rollouts,
    check_verified_mode,
    config_from_args,
    finetune,
    n_params_of,
    rollouts,
    sampled_tokens,
    start_run,
    verified,
)


@dataclass(frozen=True)
class DPOSettings:
    beta: float = 0.1
    lr: float = 2e-4
    epochs: float = 2.0
    max_steps: int = 600
    batch_size: int = 32  # pairs per step
    warmup: int = 20
    max_pairs_per_problem: int = 16


@dataclass(frozen=True)
class VStarConfig:
    init: str = "runs/quickstart/sft/model"
    verifier_init: str | None = None  # None: the verifier starts from ``init``
    verifier_ref: str | None = None  # None: the DPO reference is the verifier's starting point
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=lambda: {"min_ops": 1, "max_ops": 3, "max_operand": 15})
    n_train: int = 2000
    k: int = 8
    max_per_problem: int = 4
    keep: str = "outcome"  # "outcome": right answer; "process": right answer and every step right (step checker)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    val_fraction: float = 0.1
    seed: int = 0
    out: str = "runs/vstar"

    def __post_init__(self) -> None:
        for name, cls in (("finetune", FinetuneSettings), ("dpo", DPOSettings)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        problems = []
        for name in ("n_train", "k", "max_per_problem"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not (0 <= self.val_fraction < 1):
            problems.append(f"val_fraction must be in [0, 1) (got {self.val_fraction!r})")
        if self.keep not in VERIFIED:
            problems.append(f"keep must be one of {', '.join(VERIFIED)} (got {self.keep!r})")
        if not (self.dpo.beta > 0 and 0 < self.dpo.lr < 1 and self.dpo.batch_size >= 1):
            problems.append(f"dpo needs beta > 0, 0 < lr < 1, batch_size >= 1 (got {self.dpo})")
        for name in ("verifier_init", "verifier_ref"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).exists():
                problems.append(f"{name} {getattr(self, name)} does not exist")
        if problems:
            raise DeliberateError("vstar: " + "; ".join(problems))

    @property
    def verifier_start(self) -> str:
        return self.verifier_init if self.verifier_init is not None else self.init

    @property
    def verifier_reference(self) -> str:
        return self.verifier_ref if self.verifier_ref is not None else self.verifier_start


def _encode(tok, task, prompt: str, text: str) -> tuple[list[int], int, int] | None:
    """(ids, first solution token, last solution token) with the verifier's step encoding."""
    steps = list(task.split_steps(text))
    if not steps:
        return None
    ids, ends = encode_steps(tok, prompt, steps, "\n", tok.bos_token_id)
    return ids, 1 + len(tok.encode(prompt)), ends[-1]


def _seq_logps(model, seqs, pad_id: int) -> torch.Tensor:
    ids, mask = _pad_right([s[0] for s in seqs], pad_id, next(model.parameters()).device)
    lp = token_logprobs(model, ids, mask)
    sel = torch.zeros_like(lp)
    for r, (_, start, end) in enumerate(seqs):
        sel[r, start - 1:end] = 1  # token t is predicted at position t-1
    return (lp * sel).sum(dim=1)


def make_pairs(rows, cfg: VStarConfig, ok: list[list[bool]] | None = None) -> list[tuple[int, str, str]]:
    """(problem index, correct text, incorrect text), Cartesian per problem, capped with the seed;
    ``ok[i][j]``: whether sample j of problem i counts as correct (default: its answer is right)."""
    rng = random.Random(cfg.seed)
    ok = ok or [[r.correct for r in rs] for rs in rows]
    pairs = []
    for i, rs in enumerate(rows):
        good = list(dict.fromkeys(r.text for r, y in zip(rs, ok[i]) if y))
        bad = list(dict.fromkeys(r.text for r, y in zip(rs, ok[i]) if not y))
        prod = [(i, g, b) for g in good for b in bad]
        if len(prod) > cfg.dpo.max_pairs_per_problem:
            prod = rng.sample(prod, cfg.dpo.max_pairs_per_problem)
        pairs += prod
    return pairs


def encoded_pairs(cfg: VStarConfig, rows, task, tok, ok: list[list[bool]] | None = None):
    """(training pairs, held-out pairs, {(problem, text): encoding}): :func:`make_pairs`, encoded with ``tok``,
    split so that the last ``val_fraction`` of the problems (their order is random) are held out."""
    pairs = make_pairs(rows, cfg, ok)
    n_val = int(len(rows) * cfg.val_fraction)
    val_ids = set(range(len(rows) - n_val, len(rows)))
    enc = {}
    for i, g, b in pairs:
        for t in (g, b):
            if (i, t) not in enc:
                enc[(i, t)] = _encode(tok, task, rows[i][0].prompt, t)
    pairs = [p for p in pairs if enc[(p[0], p[1])] is not None and enc[(p[0], p[2])] is not None]
    return [p for p in pairs if p[0] not in val_ids], [p for p in pairs if p[0] in val_ids], enc


def pair_accuracy(model, ref_lp: dict, enc: dict, pairs, pad_id: int) -> float | None:
    """Share of (problem, correct, incorrect) pairs whose implied reward ``log model - log ref`` (``ref_lp``: the
    reference's log-prob per (problem, text)) ranks the correct solution higher."""
    if not pairs:
        return None
    right = 0
    with torch.no_grad():
        for lo in range(0, len(pairs), 128):
            ch = pairs[lo:lo + 128]
            lp = _seq_logps(model, [enc[(i, g)] for i, g, _ in ch] + [enc[(i, b)] for i, _, b in ch], pad_id)
            m = len(ch)
            r = torch.tensor([ref_lp[(i, g)] for i, g, _ in ch] + [ref_lp[(i, b)] for i, _, b in ch]).to(lp.device)
            right += int((((lp[:m] - r[:m]) - (lp[m:] - r[m:])) > 0).sum())
    return right / len(pairs)


def reference_logps(ref, enc: dict, pad_id: int) -> dict:
    """The reference's log-prob of every encoded solution, computed once."""
    keys = [k for k in enc if enc[k] is not None]
    out = {}
    with torch.no_grad():
        for lo in range(0, len(keys), 256):
            ks = keys[lo:lo + 256]
            out.update(zip(ks, _seq_logps(ref, [enc[k] for k in ks], pad_id).tolist()))
    return out


def train_dpo_verifier(cfg: VStarConfig, rows, train, task, out: Path, progress: bool,
                       ok: list[list[bool]] | None = None, device: str = "auto") -> dict[str, Any]:
    """DPO on the (correct, incorrect) pairs of ``rows``, on ``device`` (``auto``: a CUDA GPU when there is
    one, as the recipe's other training; recorded in ``dpo.json``); the saved verifier loads anywhere."""
    meta_path = out / "dpo.json"
    if meta_path.exists() and (out / "model").exists() and (out / "ref").exists():
        return json.loads(meta_path.read_text())
    dev = resolve_device(device, what="DPO verifier")
    torch.manual_seed(cfg.seed)
    model, tok = load_tiny(cfg.verifier_start)
    ref, _ = load_tiny(cfg.verifier_reference)  # same tokenizer: checked by run_vstar before any sampling
    model, ref = model.to(dev), ref.to(dev)  # on the CPU: the same objects
    ref.eval().requires_grad_(False)
    tr, va, enc = encoded_pairs(cfg, rows, task, tok, ok)
    if not tr:
        raise DeliberateError("vstar: no (correct, incorrect) pair to train the verifier on "
                              "(every problem's samples were all right or all wrong)")
    ref_lp = reference_logps(ref, enc, tok.pad_token_id)  # once per distinct solution
    s = cfg.dpo
    steps = max(1, min(s.max_steps, round(s.epochs * len(tr) / s.batch_size)))
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    trained = 0
    bar = tqdm(range(steps), desc="DPO verifier", disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        batch = [tr[j] for j in batch_indices(len(tr), s.batch_size, cfg.seed, step)]
        seqs = [enc[(i, g)] for i, g, _ in batch] + [enc[(i, b)] for i, _, b in batch]
        lp = _seq_logps(model, seqs, tok.pad_token_id)
        r = torch.tensor([ref_lp[(i, g)] for i, g, _ in batch] + [ref_lp[(i, b)] for i, _, b in batch]).to(dev)
        n = len(batch)
        margin = s.beta * ((lp[:n] - r[:n]) - (lp[n:] - r[n:]))
        loss = -F.logsigmoid(margin).mean()
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step, steps, s.lr, s.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        trained += sum(len(q[0]) for q in seqs)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(margin > 0).float().mean().item():.2f}")
    model.eval()

    meta = {"beta": s.beta, "task": cfg.task, "task_options": cfg.task_options, "init": str(cfg.verifier_start),
            "ref": str(cfg.verifier_reference), "pairs": len(tr), "val_pairs": len(va), "steps": steps, "tokens_trained": trained,
            "train_pair_accuracy": pair_accuracy(model, ref_lp, enc, tr[:2000], tok.pad_token_id),
            "val_pair_accuracy": pair_accuracy(model, ref_lp, enc, va, tok.pad_token_id), "device": str(dev)}
    for name, m in (("model", model), ("ref", ref)):
        save_model(m, tok, out / name)
    write_json_atomic(meta_path, meta)
    return meta


def run_vstar(cfg: VStarConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    if CharTokenizer.load(cfg.verifier_reference).itos != CharTokenizer.load(cfg.verifier_start).itos:
        raise DeliberateError(f"vstar: the verifier's start {cfg.verifier_start} and its reference "
                              f"{cfg.verifier_reference} have different tokenizers")
    clock = Stopwatch()
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    rows = cached_rollouts(out / "samples.jsonl", lambda: rollouts(
        TinyPolicy(cfg.init), task, train, cfg.k, seed=cfg.seed, progress=progress,
        desc="samples"))
    gen, prompt = sampled_tokens(rows)
    t_sample = clock()
    check_verified_mode(task, cfg.keep, "vstar --keep")
    ok = [[verified(task, p, r.text, r.correct, cfg.keep) for r in rs] for p, rs in zip(train, rows)]
    good = [(rs[0].prompt, t) for rs, y in zip(rows, ok)
            for t in list(dict.fromkeys(r.text for r, v in zip(rs, y) if v))[:cfg.max_per_problem]]
    gen_dir, gen_tokens = finetune(cfg.init, good, out / "generator", cfg.finetune, seed=cfg.seed, progress=progress,
                                   desc="generator")
    t_gen = clock() - t_sample
    meta = train_dpo_verifier(cfg, rows, train, task, out / "verifier", progress, ok)
    t_ver = clock() - t_sample - t_gen
    n = n_params_of(gen_dir)
    trained = gen_tokens + meta["tokens_trained"]
    summary = {"recipe": "vstar", "config": cfg_dict, "generator": str(gen_dir), "verifier": str(out / "verifier"),
               "verifier_meta": meta,
               "compute": {"tokens_sampled": gen, "prompt_tokens": prompt, "tokens_trained": trained,
                           # DPO also runs the frozen reference forward once per distinct solution
                           "flops": 6.0 * n * trained + 2.0 * n * (gen + prompt), "sample_wall_s": t_sample,
                           "generator_wall_s": round(t_gen, 3), "verifier_wall_s": round(t_ver, 3)}}
    write_json_atomic(out / "summary.json", summary)
    return summary


HELP = {
    "init": "seed policy: samples the training solutions; the generator starts from it, and so does the "
            "verifier unless --verifier-init is given",
    "verifier_init": "a tiny checkpoint to start the DPO verifier from (default: --init), e.g. an LM stronger "
                     "than the policy",
    "verifier_ref": "the DPO reference, same tokenizer as the verifier's start (default: the verifier's start); "
                    "e.g. --verifier-init STRONG --verifier-ref the policy makes the reward start at "
                    "log p_STRONG - log p_policy",
    "k": "samples per training problem",
    "max_per_problem": "distinct correct samples per problem for the generator",
    "keep": "correct = 'outcome' (right answer) or 'process' (right answer and every step right by the task's step checker)",
    "dpo_beta": "DPO temperature (also scales the verifier's reward)",
    "val_fraction": "share of problems held out to measure the verifier's pair accuracy",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, VStarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(VStarConfig, args)
    s = run_vstar(cfg)
    m = s["verifier_meta"]
    print(f"generator: {s['generator']}")
    print(f"DPO verifier: {s['verifier']}  ({m['pairs']} pairs, {m['steps']} steps; pair accuracy train "
          f"{m['train_pair_accuracy']}, held-out {m['val_pair_accuracy']})")
    print(f"next: deliberate sweep --model {s['generator']} --verifier dpo:{s['verifier']} "
          f"--strategies majority,best_of_n,weighted --budgets 16,64 --seeds 0,1,2 ...")
    return 0
