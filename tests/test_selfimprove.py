"""Self-improvement recipes: GRPO's loss and advantages, ReST-EM and GRPO loops, resume equals uninterrupted."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARITH  # the task options easy_ckpt was trained on

from deliberate.errors import DeliberateError
from deliberate.models.tiny import load_tiny
from deliberate.tasks import get_task
from deliberate.policy import gradient as gradient_mod
from deliberate.policy.gradient import LOSS_TYPES, grpo_loss, loss_denominator
from deliberate.train import advantages as adv_mod
from deliberate.train import grpo as grpo_mod
from deliberate.train.advantages import group_advantages
from deliberate.train.grpo import GRPOConfig, lr_at, run_grpo
from deliberate.train.rest_em import RestEMConfig, run_rest_em
from deliberate.policy import FinetuneResult, FinetuneSettings, TinyPolicy
from deliberate.train.selfimprove import finetune, rollouts


def test_group_advantages():
    assert group_advantages([1.0, 1.0, 1.0]) is None  # no signal in a group that all agree
    a = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert a is not None and abs(sum(a)) < 1e-9
    assert a[0] > 0 > a[1] and a[0] == pytest.approx(1.0, abs=1e-3)


def test_grpo_loss_gradient_and_clip():
    torch.manual_seed(0)
    logp = torch.log(torch.full((2, 3), 0.5)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), mask, adv, clip=0.2, beta=0.0)
    loss.backward()
    # descent raises the log-prob of the positively advantaged row's tokens, lowers the other's
    assert (logp.grad[0, :2] < 0).all() and (logp.grad[1] > 0).all()
    assert logp.grad[0, 2] == 0  # masked
    assert stats["kl"] == pytest.approx(0.0) and stats["clipped"] == 0
    # a ratio already past 1+clip with a positive advantage gets no gradient (clipped)
    lp2 = (torch.log(torch.full((1, 2), 0.5)) + 0.5).requires_grad_(True)
    loss2, stats2 = grpo_loss(lp2, torch.log(torch.full((1, 2), 0.5)), lp2.detach(), torch.ones(1, 2, dtype=torch.bool),
                              torch.tensor([1.0]), clip=0.2, beta=0.0)
    loss2.backward()
    assert torch.all(lp2.grad == 0) and stats2["clipped"] == 1.0
    # KL to a different reference is positive and pulls toward it
    lp3 = torch.log(torch.full((1, 2), 0.5)).requires_grad_(True)
    ref = torch.log(torch.full((1, 2), 0.7))
    loss3, stats3 = grpo_loss(lp3, lp3.detach(), ref, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.0]),
                              clip=0.2, beta=1.0)
    loss3.backward()
    assert stats3["kl"] > 0 and (lp3.grad < 0).all()


def test_grpo_loss_types_weigh_tokens_as_trl_does():
    """grpo: per-completion means averaged; dapo: one mean over all tokens; dr_grpo: token sum / (B x max_len)."""
    logp = torch.log(torch.full((2, 4), 0.5))
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)  # a 1-token and a 4-token completion
    old = logp - 0.1  # ratio exp(0.1), inside the clip: every token's surrogate is -ratio * A
    adv = torch.tensor([1.0, 1.0])
    r = math.exp(0.1)
    got = {t: float(grpo_loss(logp, old, logp, mask, adv, clip=0.2, beta=0.0, loss_type=t, max_len=8)[0])
           for t in LOSS_TYPES}
    assert got["grpo"] == pytest.approx(-r)  # each completion's mean is -r
    assert got["dapo"] == pytest.approx(-5 * r / 5)
    assert got["dr_grpo"] == pytest.approx(-5 * r / (2 * 8))
    # where they differ: a negative advantage on the long completion weighs 4x under dapo, 1x under grpo
    adv2 = torch.tensor([1.0, -1.0])
    g = float(grpo_loss(logp, old, logp, mask, adv2, clip=0.2, beta=0.0, loss_type="grpo")[0])
    d = float(grpo_loss(logp, old, logp, mask, adv2, clip=0.2, beta=0.0, loss_type="dapo")[0])
    assert g == pytest.approx(0.0, abs=1e-9) and d == pytest.approx(3 * r / 5)
    # an explicit denominator (a rank's share under DDP) replaces the batch's own
    assert float(grpo_loss(logp, old, logp, mask, adv, 0.2, 0.0, denom=10.0, loss_type="dapo")[0]) == pytest.approx(-r / 2)
    assert loss_denominator("dapo", [1, 4], 8) == 5 and loss_denominator("dr_grpo", [1, 4], 8) == 16
    with pytest.raises(DeliberateError, match="max_len"):
        grpo_loss(logp, old, logp, mask, adv, clip=0.2, beta=0.0, loss_type="dr_grpo")
    with pytest.raises(DeliberateError, match="loss_type"):
        GRPOConfig(loss_type="bnpo")


def test_group_advantages_without_std_scaling():
    a = group_advantages([1.0, 0.0, 0.0, 0.0], scale=False)
    assert a == pytest.approx([0.75, -0.25, -0.25, -0.25])  # Dr. GRPO: r - mean
    assert group_advantages([0.0, 0.0], scale=False) is None


def test_grpo_dr_grpo_run_trains_and_records_its_loss(easy_ckpt, tmp_path):
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "steps": 1, "problems_per_step": 6,
            "group": 4, "lr": 1e-3, "eval_every": 1, "checkpoint_every": 1, "eval_problems": 4, "eval_n": 2}
    a = run_grpo(GRPOConfig(**base, out=str(tmp_path / "a")), progress=False)
    b = run_grpo(GRPOConfig(**base, loss_type="dr_grpo", scale_rewards=False, out=str(tmp_path / "b")),
                 progress=False)
    assert b["config"]["loss_type"] == "dr_grpo" and b["config"]["scale_rewards"] is False
    ra, rb = a["iterations"][1], b["iterations"][1]
    assert ra["groups_used"] == rb["groups_used"] > 0  # the same samples (same seed) ...
    assert ra["tokens_sampled"] == rb["tokens_sampled"]
    wa, wb = load_tiny(tmp_path / "a" / "checkpoint")[0], load_tiny(tmp_path / "b" / "checkpoint")[0]
    diff = max(float((x - y).abs().max()) for x, y in zip(wa.parameters(), wb.parameters()))
    assert diff > 1e-6  # ... weighed differently, so a different update


def test_token_logprobs_follow_the_sampling_temperature(easy_ckpt):
    """Ratio and KL are taken under the distribution that sampled the completion: logits / temperature."""
    from deliberate.train.common import Example, collate

    model, tok = load_tiny(easy_ckpt)
    ids = tok.encode("3+4=")
    batch = collate([Example(tuple(ids + tok.encode("3+4=7")), len(ids))], tok.pad_token_id)
    with torch.no_grad():
        lp1, mask = gradient_mod.token_logprobs(model, batch)
        lp_t, _ = gradient_mod.token_logprobs(model, batch, 0.5)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    want = torch.log_softmax(logits / 0.5, -1).gather(-1, batch["labels"][:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    assert mask.sum() == len(tok.encode("3+4=7"))
    assert torch.allclose(lp_t[mask], want[mask], atol=1e-5)
    assert not torch.allclose(lp_t[mask], lp1[mask])  # a real change, not a no-op


def test_rollouts_seeded_and_verified(tiny_ckpt):
    model, tok = load_tiny(tiny_ckpt)
    task = get_task("arith", **SMALL_ARITH)
    probs = task.problems("train", 6, seed=0)
    a = rollouts(TinyPolicy(model=model, tokenizer=tok), task, probs, 3, seed=5, progress=False)
    b = rollouts(TinyPolicy(model=model, tokenizer=tok), task, probs, 3, seed=5, progress=False)
    assert [[r.text for r in rs] for rs in a] == [[r.text for r in rs] for rs in b]
    for p, rs in zip(probs, a):
        assert len(rs) == 3
        for r in rs:
            assert r.correct == (task.reward(r.text, p) > 0)
    # hinted prompts replace the task's
    c = rollouts(TinyPolicy(model=model, tokenizer=tok), task, probs, 1, seed=5, prompts=["x" + task.prompt(p) for p in probs], progress=False)
    assert all(rs[0].prompt.startswith("x") for rs in c)
    with pytest.raises(DeliberateError):
        rollouts(TinyPolicy(model=model, tokenizer=tok), task, probs, 0, progress=False)


def test_finetune_learns_and_is_deterministic(tiny_ckpt, tmp_path):
    task = get_task("arith", **SMALL_ARITH)
    probs = task.problems("train", 64, seed=1)
    pairs = [(task.prompt(p), task.rationale(p)) for p in probs]
    s = FinetuneSettings(steps=15, batch_size=16, lr=3e-3, warmup=2)
    d1, n1 = finetune(tiny_ckpt, pairs, tmp_path / "a", s, seed=3, progress=False)
    d2, n2 = finetune(tiny_ckpt, pairs, tmp_path / "b", s, seed=3, progress=False)
    assert n1 == n2 > 0
    m1, _ = load_tiny(d1)
    m2, _ = load_tiny(d2)
    m0, _ = load_tiny(tiny_ckpt)
    for (k, p1), p2, p0 in zip(m1.state_dict().items(), m2.state_dict().values(), m0.state_dict().values()):
        assert torch.equal(p1, p2), k
    assert any(not torch.equal(p1, p0) for p1, p0 in zip(m1.state_dict().values(), m0.state_dict().values()))
    # finished: a second call returns at once with the recorded token count
    assert finetune(tiny_ckpt, [], tmp_path / "a", s, seed=3, progress=False) == (d1, n1)
    with pytest.raises(DeliberateError, match="no training examples"):
        finetune(tiny_ckpt, [], tmp_path / "c", s, progress=False)


def test_finetune_bf16_autocast_trains_float32_weights(tiny_ckpt, tmp_path):
    """--bf16: the same batches and steps under bfloat16 autocast; weights stay float32, rounding differs."""
    task = get_task("arith", **SMALL_ARITH)
    pairs = [(task.prompt(p), task.rationale(p)) for p in task.problems("train", 32, seed=1)]
    s = FinetuneSettings(steps=6, batch_size=16, lr=3e-3, warmup=2)
    d32, n32 = finetune(tiny_ckpt, pairs, tmp_path / "f32", s, seed=3, progress=False)
    d16, n16 = finetune(tiny_ckpt, pairs, tmp_path / "bf16", dataclasses.replace(s, bf16=True), seed=3,
                        progress=False)
    assert n16 == n32 > 0  # same batches
    assert json.loads((tmp_path / "bf16" / "finetune.json").read_text())["bf16"] is True
    m32, _ = load_tiny(d32)
    m16, _ = load_tiny(d16)
    m0, _ = load_tiny(tiny_ckpt)
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    w32, w16, w0 = (torch.cat([p.flatten() for p in m.parameters()]) for m in (m32, m16, m0))
    assert not torch.equal(w16, w32)  # bf16 matmuls round differently ...
    assert (w16 - w32).norm() < 0.5 * (w32 - w0).norm()  # ... but take nearly the same steps


def _rest_cfg(ckpt, out):
    return RestEMConfig(init=str(ckpt), task_options=SMALL_ARITH, iterations=2, n_train=24, k=4, keep="outcome",
                        finetune=FinetuneSettings(steps=4, batch_size=8), eval_problems=12, eval_n=4, out=str(out))


def test_rest_em_runs_logs_compute_and_resumes(easy_ckpt, tmp_path):
    cfg = _rest_cfg(easy_ckpt, tmp_path / "run")
    s = run_rest_em(cfg, progress=False)
    rows = s["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["kept"] > 0 and r["problems_solved"] > 0
        assert r["tokens_sampled"] > 0 and r["tokens_trained"] > 0 and r["flops"] > 0
        assert set(r["eval"]) >= {"greedy", "maj@4", "pass@4"}
    assert rows[2]["cum_flops"] > rows[1]["cum_flops"] > 0
    assert (tmp_path / "run" / "curve.png").stat().st_size > 0
    # an interrupted iteration 2 (samples saved, no model, no marker) is redone to the same numbers
    shutil.rmtree(tmp_path / "run" / "it002" / "model")
    (tmp_path / "run" / "it002" / "finetune.json").unlink()
    (tmp_path / "run" / "iterations" / "002.json").unlink()
    shutil.rmtree(tmp_path / "run" / "it002" / "eval")
    s2 = run_rest_em(cfg, progress=False)
    strip = [{k: v for k, v in r.items() if "wall" not in k} for r in s2["iterations"]]
    assert strip == [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
    # a different config in the same directory is refused
    with pytest.raises(DeliberateError, match="different config"):
        run_rest_em(RestEMConfig(**{**cfg.__dict__, "k": 2}), progress=False)
    # more --iterations extends the finished run: iterations 0-2 kept as they were, only iteration 3 is new
    s3 = run_rest_em(RestEMConfig(**{**cfg.__dict__, "iterations": 3}), progress=False)["iterations"]
    assert [r["iteration"] for r in s3] == [0, 1, 2, 3]
    assert [{k: v for k, v in r.items() if "wall" not in k} for r in s3[:3]] == strip
    # `deliberate report` on the run: one table row per iteration, its accuracies and compute, the curve embedded
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "run").read_text()
    assert "<h1>rest-em — arith</h1>" in page and "<h2>Iterations</h2>" in page
    table = page.split("<h2>Iterations</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 4  # header + iterations 0-3
    assert "maj@4 [95% CI]" in table and f"<b>{s3[3]['eval']['greedy']['accuracy']:.3f}</b>" in table
    assert f"{s3[3]['cum_tokens_trained']:,}" in table and 'alt="curve.png"' in page


def _planted_groups(task, problems):
    """Per problem: the gold rationale, a lucky one (a wrong step, the right answer) and two wrong answers."""
    from deliberate.train.selfimprove import Rollout

    out = []
    for p in problems:
        gold = task.rationale(p)
        lucky = gold.replace("=", "=9", 1) if "=9" not in gold else gold.replace("=", "=8", 1)
        wrong = gold.rsplit("Answer:", 1)[0] + f"Answer: {int(p.answer) + 1}"
        out.append([Rollout(p.id, task.prompt(p), t, task.is_correct(task.extract_answer(t), p), 5, 20, "stop")
                    for t in (gold, lucky, wrong, wrong)])
    return out


def test_rest_em_process_filter_drops_lucky_samples(easy_ckpt, tmp_path, monkeypatch):
    """keep='process' trains only on samples whose every step passes the task's step checker; the E-step's
    samples are planted in the iteration's rollout cache (gold, lucky = wrong step but right answer, wrong x2)."""
    from deliberate.train.selfimprove import save_rollouts

    task = get_task("arith", **SMALL_ARITH)
    train = task.problems("train", 6, seed=0)
    planted = _planted_groups(task, train)
    assert all(not all(task.step_correct(p, task.split_steps(rs[1].text))) and rs[1].correct
               for p, rs in zip(train, planted))
    seen: dict[str, list] = {}
    for keep in ("outcome", "process"):
        def fake_finetune(self, pairs, out, settings, keep=keep, **kw):
            seen[keep] = list(pairs)
            return FinetuneResult(self.path, 1, 1)
        monkeypatch.setattr(TinyPolicy, "finetune", fake_finetune)
        cfg = RestEMConfig(**{**_rest_cfg(easy_ckpt, tmp_path / keep).__dict__, "iterations": 1, "keep": keep,
                              "n_train": 6, "k": 4})
        (tmp_path / keep / "it001").mkdir(parents=True)
        save_rollouts(tmp_path / keep / "it001" / "samples.jsonl", planted)
        row = run_rest_em(cfg, progress=False)["iterations"][1]
        assert row["kept"] == len(seen[keep])
    assert seen["outcome"] == [(r.prompt, r.text) for rs in planted for r in rs[:2]]
    assert seen["process"] == [(rs[0].prompt, rs[0].text) for rs in planted]
    with pytest.raises(DeliberateError, match="keep must be one of"):
        RestEMConfig(keep="steps")
    monkeypatch.setattr(type(task), "step_correct", lambda self, problem, steps: None)
    with pytest.raises(DeliberateError, match="needs a task with a step checker"):
        run_rest_em(RestEMConfig(**{**_rest_cfg(easy_ckpt, tmp_path / "none").__dict__, "keep": "process"}),
                    progress=False)


def test_a_refused_start_does_not_block_the_corrected_command(easy_ckpt, tmp_path):
    """A check that fails after the output directory was made leaves only config.json (and the --init weights'
    fingerprint): no work to protect."""
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "gym"  # a generated task without a step checker (no data files needed)
    with pytest.raises(DeliberateError, match="needs a task with a step checker"):
        run_rest_em(RestEMConfig(init=str(easy_ckpt), task="gym:chain_sum", task_options={}, keep="process",
                                 out=str(out)), progress=False)
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "init_fingerprint.json"]
    cfg = RestEMConfig(init=str(easy_ckpt), task="gym:chain_sum", task_options={}, keep="outcome", out=str(out))
    from deliberate.train.selfimprove import start_run

    start_run(cfg)  # the corrected config takes the directory over
    assert json.loads((out / "config.json").read_text())["keep"] == "outcome"
    (out / "it000").mkdir()  # once work is there, a different config is refused as before
    with pytest.raises(DeliberateError, match="different config"):
        start_run(RestEMConfig(**{**cfg.__dict__, "k": 2}))


def test_split_minibatches_partitions_in_a_seeded_order():
    assert grpo_mod.split_minibatches(5, 1, 0, 3) == [[0, 1, 2, 3, 4]]
    mbs = grpo_mod.split_minibatches(10, 3, 0, 3)
    assert sorted(i for mb in mbs for i in mb) == list(range(10)) and sorted(map(len, mbs)) == [3, 3, 4]
    assert mbs == grpo_mod.split_minibatches(10, 3, 0, 3)  # a resumed run cuts the same minibatches
    assert mbs != grpo_mod.split_minibatches(10, 3, 0, 4)
    assert len(grpo_mod.split_minibatches(2, 5, 0, 0)) == 2  # never an empty minibatch


def test_grpo_minibatches_make_more_updates_from_the_same_samples(easy_ckpt, tmp_path, monkeypatch):
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "steps": 1, "problems_per_step": 6,
            "group": 4, "lr": 1e-3, "eval_every": 1, "checkpoint_every": 1, "eval_problems": 4, "eval_n": 2}
    calls = []
    real = gradient_mod.grpo_loss
    monkeypatch.setattr(gradient_mod, "grpo_loss", lambda *a, **k: (calls.append(a[0].shape[0]), real(*a, **k))[1])
    one = run_grpo(GRPOConfig(**base, out=str(tmp_path / "one")), progress=False)
    n_one = list(calls)
    calls.clear()
    three = run_grpo(GRPOConfig(**base, minibatches=3, out=str(tmp_path / "three")), progress=False)
    assert len(n_one) == 1 and len(calls) == 3 and sum(calls) == n_one[0]  # the same completions, cut in 3
    r1, r3 = one["iterations"][-1], three["iterations"][-1]
    assert r3["tokens_trained"] == r1["tokens_trained"] > 0 and r3["tokens_sampled"] == r1["tokens_sampled"]
    m1, _ = load_tiny(tmp_path / "one" / "checkpoint")
    m3, _ = load_tiny(tmp_path / "three" / "checkpoint")
    assert any(not torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))
    with pytest.raises(DeliberateError, match="minibatches must be an integer >= 1"):
        GRPOConfig(**base, minibatches=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_micro_batches_accumulate_to_the_same_update(easy_ckpt, tmp_path, monkeypatch, loss_type):
    # per-token (step-credit) advantages: [B, L-1] tensors are cut by rows and trimmed to each chunk's width
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "steps": 1, "problems_per_step": 6,
            "group": 4, "lr": 1e-3, "credit": "steps", "loss_type": loss_type, "eval_every": 1,
            "checkpoint_every": 1, "eval_problems": 4, "eval_n": 2}
    calls, steps, norms = [], [], []
    real, real_step, real_clip = gradient_mod.grpo_loss, torch.optim.AdamW.step, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(gradient_mod, "grpo_loss", lambda *a, **k: (calls.append(tuple(a[0].shape)), real(*a, **k))[1])
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1])
    # the accumulated gradient itself (Adam's first step would hide a wrong overall scale)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(float(real_clip(*a, **k))))
    whole = run_grpo(GRPOConfig(**base, out=str(tmp_path / "whole")), progress=False)
    (shape,) = calls
    calls.clear(), steps.clear()
    micro = run_grpo(GRPOConfig(**base, micro_batch=5, out=str(tmp_path / "micro")), progress=False)
    assert len(steps) == 1  # one optimizer update, as without micro-batches
    assert len(norms) == 2 and norms[1] == pytest.approx(norms[0], rel=1e-5) and norms[0] > 0
    assert [c[0] for c in calls] == [5] * (shape[0] // 5) + ([shape[0] % 5] if shape[0] % 5 else [])
    assert max(c[1] for c in calls) == shape[1] and min(c[1] for c in calls) <= shape[1]  # trimmed to own width
    w1, w2 = load_tiny(tmp_path / "whole" / "checkpoint")[0].state_dict(), \
        load_tiny(tmp_path / "micro" / "checkpoint")[0].state_dict()
    seed = load_tiny(easy_ckpt)[0].state_dict()
    assert max(float((w1[k] - seed[k]).abs().max()) for k in w1) > 1e-4  # the update is real ...
    # ... and the same up to float rounding, which Adam's first step (g / |g|) amplifies where g is near 0
    # (1.002e-6 with dapo here; the gradient norms above check the accumulation itself)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    strip = lambda r: {k: v for k, v in r.items() if "wall" not in k and k != "eval"}  # eval: argmax ties
    assert strip(micro["iterations"][-1]) == strip(whole["iterations"][-1])
    assert micro["config"]["micro_batch"] == 5
    with pytest.raises(DeliberateError, match="micro_batch must be an integer >= 0"):
        GRPOConfig(**base, micro_batch=-1)


def test_grpo_kill_and_resume_matches_uninterrupted(easy_ckpt, tmp_path, monkeypatch):
    # warmup 3: the resumed steps 2-3 must run at the full lr again, not restart the warmup
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "steps": 4, "problems_per_step": 4,
            "group": 4, "lr": 1e-3, "warmup": 3, "eval_every": 4, "checkpoint_every": 2, "eval_problems": 8,
            "eval_n": 2}
    lrs = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), real_step(self, *a, **k))[1])
    ref = run_grpo(GRPOConfig(**base, out=str(tmp_path / "ref")), progress=False)
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])  # one update per step: the warmup schedule
    lrs.clear()
    # crash right after the step-2 checkpoint lands, then rerun the same command
    real_save = gradient_mod.save_checkpoint
    calls = {"n": 0}

    def crashing_save(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(gradient_mod, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(GRPOConfig(**base, out=str(tmp_path / "b")), progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    monkeypatch.setattr(gradient_mod, "save_checkpoint", real_save)
    lrs.clear()
    res = run_grpo(GRPOConfig(**base, out=str(tmp_path / "b")), progress=False)
    assert lrs == pytest.approx([1e-3, 1e-3])
    m1, _ = load_tiny(tmp_path / "ref" / "checkpoint")
    m2, _ = load_tiny(tmp_path / "b" / "checkpoint")
    for (k, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), k
    strip = lambda rows: [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
    assert strip(res["iterations"]) == strip(ref["iterations"])
    last = ref["iterations"][-1]
    assert last["groups"] == 4 * 4 and last["groups_used"] > 0 and last["tokens_trained"] > 0


def test_grpo_finished_run_extends_to_more_steps(easy_ckpt, tmp_path):
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "problems_per_step": 4,
            "group": 4, "lr": 1e-3, "eval_every": 2, "checkpoint_every": 1, "eval_problems": 6, "eval_n": 2}
    ref = run_grpo(GRPOConfig(**base, steps=4, out=str(tmp_path / "ref")), progress=False)
    short = run_grpo(GRPOConfig(**base, steps=2, out=str(tmp_path / "b")), progress=False)
    assert [r["step"] for r in short["iterations"]] == [0, 2]
    res = run_grpo(GRPOConfig(**base, steps=4, out=str(tmp_path / "b")), progress=False)  # continues at step 2
    m1, _ = load_tiny(tmp_path / "ref" / "checkpoint")
    m2, _ = load_tiny(tmp_path / "b" / "checkpoint")
    for (k, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), k
    strip = lambda rows: [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
    assert strip(res["iterations"]) == strip(ref["iterations"]) and res["config"]["steps"] == 4
    # a total that is not a multiple of eval_every ended on a partial interval: continuing it is refused
    run_grpo(GRPOConfig(**base, steps=3, out=str(tmp_path / "odd")), progress=False)
    with pytest.raises(DeliberateError, match="not a multiple of --eval-every 2"):
        run_grpo(GRPOConfig(**base, steps=4, out=str(tmp_path / "odd")), progress=False)
    with pytest.raises(DeliberateError, match="different config"):  # other fields still fixed
        run_grpo(GRPOConfig(**{**base, "lr": 2e-3}, steps=4, out=str(tmp_path / "b")), progress=False)


def test_grpo_lr_schedulers_decay_to_zero_at_the_end_after_warmup():
    lrs = lambda **kw: [lr_at(GRPOConfig(lr=0.5, steps=6, **kw), s) * 2 for s in range(6)]  # in units of lr
    assert lrs() == [1.0] * 6
    assert lrs(warmup=2) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert lrs(lr_scheduler="linear") == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert lrs(lr_scheduler="linear", warmup=2) == pytest.approx([0.5, 1.0, 0.8, 0.6, 0.4, 0.2])  # peak at step 1
    cos = [lr_at(GRPOConfig(lr=0.5, steps=6, warmup=3, lr_scheduler="cosine"), s) * 2 for s in range(6)]
    assert cos[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and cos[4] == pytest.approx(0.5)  # peak at step 2, half at 4
    assert all(a > b > 0 for a, b in itertools.pairwise(cos[2:]))
    with pytest.raises(DeliberateError, match="lr_scheduler must be one of constant, linear, cosine"):
        GRPOConfig(lr_scheduler="step")
    with pytest.raises(DeliberateError, match="warmup .6. must be < steps .6."):
        GRPOConfig(lr_scheduler="cosine", steps=6, warmup=6)


def test_grpo_decaying_lr_run_uses_its_schedule_and_cannot_be_extended(easy_ckpt, tmp_path, monkeypatch):
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "problems_per_step": 4,
            "group": 4, "lr": 1e-3, "lr_scheduler": "linear", "eval_every": 2, "checkpoint_every": 1,
            "eval_problems": 6, "eval_n": 2}
    lrs = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), real_step(self, *a, **k))[1])
    run_grpo(GRPOConfig(**base, steps=4, out=str(tmp_path / "a")), progress=False)
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    with pytest.raises(DeliberateError, match="decays to 0 at step 4"):
        run_grpo(GRPOConfig(**base, steps=6, out=str(tmp_path / "a")), progress=False)


def test_grpo_config_validation():
    with pytest.raises(DeliberateError, match="group"):
        GRPOConfig(group=1)
    with pytest.raises(DeliberateError, match="lr"):
        GRPOConfig(lr=0)
    with pytest.raises(DeliberateError, match="reward must be one of"):
        GRPOConfig(reward="steps")
    with pytest.raises(DeliberateError, match="warmup must be an integer >= 0"):
        GRPOConfig(warmup=-1)


def test_grpo_process_reward_scores_lucky_samples_zero(easy_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(grpo_mod, "rollouts", lambda policy, task, problems, k, **kw: _planted_groups(task, problems))
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 16, "steps": 1, "problems_per_step": 4,
            "group": 4, "lr": 1e-3, "eval_every": 1, "checkpoint_every": 1, "eval_problems": 4, "eval_n": 2}
    rows = {r: run_grpo(GRPOConfig(**base, reward=r, out=str(tmp_path / r)), progress=False)["iterations"][-1]
            for r in ("outcome", "process")}
    assert rows["outcome"]["train_reward"] == pytest.approx(2 / 4)  # gold and lucky
    assert rows["process"]["train_reward"] == pytest.approx(1 / 4)  # gold only
    assert rows["outcome"]["groups_used"] == rows["process"]["groups_used"] == 4


def test_step_spans_are_the_task_steps():
    task = get_task("arith", **SMALL_ARITH)
    for text in ("1+2=3\nAnswer: 3", "\n\n1+2=3\n\nAnswer: 3\n\n", "", "  \n", "Answer: 3", "a\r\nb"):
        spans = adv_mod.step_spans(text)
        assert tuple(text[a:b].strip() for a, b in spans) == task.split_steps(text)
        # contiguous from the first step on, the last one running to the end of the text
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
        assert not spans or spans[-1][1] == len(text)


def test_outcome_plus_steps_credit_has_no_position_bias():
    task = get_task("arith", **SMALL_ARITH)
    prob = task.problems("train", 1, seed=0)[0]
    gold, lucky, wrong, _ = (r.text for r in _planted_groups(task, [prob])[0])
    texts = (gold, lucky, wrong, wrong)
    items = [(*adv_mod.step_rewards(task, prob, t, float(t == gold)), len(t) + 1) for t in texts]
    adv = adv_mod.outcome_step_advantages(items)
    finals = group_advantages([1.0, 0.0, 0.0, 0.0])
    spans = [adv_mod.step_spans(t) for t in texts]
    for i in range(4):
        assert adv[i][-1] == pytest.approx(finals[i])  # EOS: the outcome term only
    # step 1: right in gold and wrong, wrong in lucky -> normalised among the four at that position
    z1 = group_advantages([1.0, 0.0, 1.0, 1.0])
    for i in range(4):
        a, b = spans[i][0]
        assert all(adv[i][t] == pytest.approx(finals[i] + z1[i]) for t in range(a, b))
    # every term averages zero over the group: no systematic push on the EOS token or the answer line
    assert sum(adv[i][-1] for i in range(4)) == pytest.approx(0.0, abs=1e-6)
    last = [adv[i][spans[i][-1][0]] for i in range(4)]
    assert sum(last) == pytest.approx(0.0, abs=1e-6)
    # the pooled "steps" credit has that push: its EOS advantages sum below zero here
    pooled = adv_mod.step_credit_advantages(items, to_go=False)
    assert sum(pooled[i][-1] for i in range(4)) < -0.5
    # a position only one completion reaches, or where all agree, adds nothing; no signal at all -> None
    assert adv_mod.outcome_step_advantages([items[0], items[0]]) is None
    short = (adv_mod.step_spans("Answer: 9"), [0.0, 0.0], 10)
    two = adv_mod.outcome_step_advantages([items[2], short])
    assert two[0][spans[2][1][0]] == pytest.approx(0.0)  # step 2 exists in one completion only, finals equal


def test_step_credit_rewards_right_steps_of_wrong_answers(easy_ckpt, tmp_path, monkeypatch):
    task = get_task("arith", **SMALL_ARITH)
    prob = task.problems("train", 1, seed=0)[0]
    gold, lucky, wrong, _ = (r.text for r in _planted_groups(task, [prob])[0])
    items = [(*adv_mod.step_rewards(task, prob, t, float(t == gold)), len(t) + 1) for t in (gold, lucky, wrong)]
    assert [rs for _, rs, _ in items] == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]  # steps' prefix correctness + final
    adv = adv_mod.step_credit_advantages(items, to_go=False)
    step1 = adv_mod.step_spans(wrong)[0]
    assert all(a > 0 for a in adv[0]) and adv[1][0] < 0
    assert all(adv[2][t] > 0 for t in range(*step1))  # the wrong-answer sample's right first step is credited
    assert adv[2][step1[1]] < 0  # ... and its wrong answer line is not
    flat = [r for _, rs, _ in items for r in rs]
    z = lambda r: (r - sum(flat) / len(flat)) / (torch.tensor(flat).std(unbiased=False).item() + 1e-4)
    to_go = adv_mod.step_credit_advantages(items, to_go=True)
    assert to_go[2][0] == pytest.approx(sum(z(r) for r in items[2][1]))  # first token: every reward after it
    assert to_go[2][-1] == pytest.approx(z(0.0))  # EOS: the final reward only
    assert adv_mod.step_credit_advantages([items[0], items[0]], to_go=False) is None  # no differences, no signal
    # whole runs on planted groups with no verified sample (wrong answers, one lucky): no signal per completion,
    # signal per step
    monkeypatch.setattr(grpo_mod, "rollouts", lambda policy, task, problems, k, **kw:
                        [[rs[2], rs[1], rs[2], rs[3]] for rs in _planted_groups(task, problems)])
    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 16, "steps": 1, "problems_per_step": 4,
            "group": 4, "lr": 1e-3, "reward": "process", "eval_every": 1, "checkpoint_every": 1, "eval_problems": 4,
            "eval_n": 2}
    rows = {c: run_grpo(GRPOConfig(**base, credit=c, out=str(tmp_path / c)), progress=False)["iterations"][-1]
            for c in ("sequence", "steps", "outcome+steps")}
    assert rows["sequence"]["groups_used"] == 0 and rows["sequence"]["tokens_trained"] == 0
    assert rows["steps"]["groups_used"] == 4 and rows["steps"]["tokens_trained"] > 0
    assert rows["outcome+steps"]["groups_used"] == 4 and rows["outcome+steps"]["tokens_trained"] > 0
    m0, _ = load_tiny(easy_ckpt)
    m1, _ = load_tiny(tmp_path / "steps" / "checkpoint")
    assert any(not torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values()))
    with pytest.raises(DeliberateError, match="credit must be one of"):
        GRPOConfig(credit="tokens")
    monkeypatch.setattr(type(task), "step_correct", lambda self, problem, steps: None)
    with pytest.raises(DeliberateError, match="needs a task with a step checker"):
        run_grpo(GRPOConfig(**{**base, "reward": "outcome"}, credit="steps", out=str(tmp_path / "none")),
                 progress=False)


def test_self_correct_pairs_and_run(easy_ckpt, tmp_path):
    from deliberate.train.self_correct import (
        SelfCorrectConfig,
        build_pairs,
        revision_prompt,
        run_self_correct,
    )
    from deliberate.train.selfimprove import Rollout

    def ro(text, ok):
        return Rollout("p", "Q: 1+1\nA:\n", text, ok, 3, 5, "stop")

    cfg = SelfCorrectConfig(keep_fraction=0.5, max_pairs_per_problem=2)
    rows = [[ro("w1", False), ro("r1", True), ro("w2", False), ro("w3", False)],
            [ro("x", False), ro("y", False)],  # nothing right: no pair
            [ro("r2", True), ro("r2", True)]]
    pairs, counts = build_pairs(rows, cfg)
    assert counts == {"fix_pairs": 2, "keep_pairs": 2}
    assert (revision_prompt("Q: 1+1\nA:\n", "w1"), "r1") in pairs
    assert all(p.endswith("\n") and "Wait!" in p for p, _ in pairs)
    assert not any(c in ("x", "y", "w1", "w2", "w3") for _, c in pairs)  # targets are always right attempts
    s = run_self_correct(SelfCorrectConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, n_train=40, k=4,
                                           finetune=FinetuneSettings(steps=3, batch_size=8), eval_problems=16,
                                           out=str(tmp_path / "sc")), progress=False)
    ev = s["eval"]
    assert ev["n_wrong_first"] + ev["n_right_first"] == 16
    for name in ("revise", "resample", "revise_untrained"):
        assert 0 <= ev[name]["fixed"] <= 1 and ev[name]["generated_tokens_per_problem"] > 0
    assert s["compute"]["tokens_trained"] > 0
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "sc").read_text()  # no iterations: every held-out accuracy, listed by path
    assert "<h1>self-correct — arith</h1>" in page and "<h2>Results</h2>" in page
    for name in ("revise", "resample"):
        assert f">eval.{name}</td>" in page and f"<b>{ev[name]['accuracy']:.3f}</b>" in page
    assert "eval.revise.fixed" in page  # the entries' other fields stay in the details table
    compute = page.split('id="compute"', 1)[1].split("</section>", 1)[0]
    assert ">tokens_trained<" in compute and any(f.format(s["compute"]["tokens_trained"]) in compute
                                                 for f in ("{}<", "{:,}<"))


def test_recipe_flags_come_from_config_fields():
    from deliberate.cli import build_parser
    from deliberate.cli.flags import config_from_args
    from deliberate.train.star import StarConfig

    p = build_parser()
    a = p.parse_args(["train", "rest-em", "--k", "3", "--epochs", "1.5", "--task-arg", "max_ops=2", "--out", "x"])
    cfg = config_from_args(RestEMConfig, a)
    assert cfg.k == 3 and cfg.finetune.epochs == 1.5 and cfg.out == "x"
    # --task-arg overrides one of the recipe's task options and keeps the others
    assert cfg.task_options == {**RestEMConfig().task_options, "max_ops": 2} != RestEMConfig().task_options
    assert cfg.finetune.lr == RestEMConfig().finetune.lr  # untouched nested fields keep their defaults
    # another task without --task-arg gets its own defaults, not arith's options
    assert config_from_args(RestEMConfig, p.parse_args(["train", "rest-em", "--task", "addition"])).task_options == {}
    assert config_from_args(RestEMConfig, p.parse_args(["train", "rest-em", "--task", "addition", "--task-arg",
                                                        "digits=2"])).task_options == {"digits": 2}
    # --model and --init name the same field; --model-* are the tiny seed's size flags
    assert config_from_args(StarConfig, p.parse_args(["train", "star", "--model", "m"])).init == "m"
    assert config_from_args(RestEMConfig, p.parse_args(["train", "rest-em", "--init", "m"])).init == "m"
    assert config_from_args(RestEMConfig, p.parse_args(["train", "rest-em", "--model", "m", "--no-chat"])).chat is False
    a = p.parse_args(["train", "star", "--no-rationalize", "--eval-digits", "4,6", "--seed-sft-steps", "7",
                      "--model-d-model", "64"])
    s = config_from_args(StarConfig, a)
    assert not s.rationalize and s.eval_digits == (4, 6) and s.seed_sft.steps == 7 and s.model.d_model == 64
    g = config_from_args(GRPOConfig, p.parse_args(["train", "grpo", "--beta", "0", "--group", "4"]))
    assert g.beta == 0 and g.group == 4
    with pytest.raises(SystemExit):
        p.parse_args(["train", "grpo", "--group", "four"])


def test_star_hinted_long_seed_and_sampled_rationalization(tmp_path, monkeypatch):
    import deliberate.train.star as star_mod
    from deliberate.models.tiny import TinyConfig
    from deliberate.train.selfimprove import load_rollouts

    real_finetune = TinyPolicy.finetune
    seen: dict[str, list] = {}

    def spy(self, pairs, out, settings, **kw):
        seen[kw.get("desc", "")] = list(pairs)
        return real_finetune(self, pairs, out, settings, **kw)

    monkeypatch.setattr(TinyPolicy, "finetune", spy)
    cfg = star_mod.StarConfig(seed_examples=100, seed_long_examples=20, seed_long_hint_fraction=1.0,
                              seed_sft=FinetuneSettings(steps=20, batch_size=16, lr=3e-3), n_train=16, iterations=1,
                              rationalize_samples=3, finetune=FinetuneSettings(steps=2, batch_size=8),
                              eval_digits=(2,), eval_problems=4,
                              model=TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2), out=str(tmp_path / "r"))
    s = star_mod.run_star(cfg, progress=False)
    seed_pairs = seen["seed SFT"]
    assert len(seed_pairs) == 120 and all("(hint: " in q for q, _ in seed_pairs[100:])  # every long example hinted
    assert 20 < sum("(hint: " in q for q, _ in seed_pairs[:100]) < 80                   # ~half of the short ones
    row = s["iterations"][1]
    direct = load_rollouts(tmp_path / "r" / "it001" / "samples.jsonl")
    rat = load_rollouts(tmp_path / "r" / "it001" / "rationalized.jsonl")
    failed = [rs for rs in direct if not rs[0].correct]
    assert len(rat) == len(failed) and all(len(rs) == 3 and "(hint: " in rs[0].prompt for rs in rat)
    assert len({r.text for rs in rat for r in rs}) > len(rat)  # sampled, not three greedy copies
    assert row["kept_rationalized"] == sum(any(r.correct for r in rs) for rs in rat)
    assert row["kept"] == row["kept_direct"] + row["kept_rationalized"]
    if row["kept"]:
        assert all("(hint:" not in q for q, _ in seen["fine-tune 1"])  # hints are removed for training
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "r").read_text()  # one accuracy column per evaluated digit count
    digits = list(s["iterations"][0]["eval"])
    assert "<h1>star — addition</h1>" in page and all(f">{d} [95% CI]<" in page for d in digits)
    with pytest.raises(DeliberateError, match="rationalize_samples"):
        star_mod.StarConfig(rationalize_samples=0)
    with pytest.raises(DeliberateError, match="seed_long_hint_fraction"):
        star_mod.StarConfig(seed_long_hint_fraction=1.5)


def test_vstar_generator_and_dpo_verifier(easy_ckpt, tmp_path):
    from deliberate.rewards import get_verifier
    from deliberate.train.selfimprove import Rollout
    from deliberate.train.vstar import DPOSettings, VStarConfig, make_pairs, run_vstar

    cfg = VStarConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, n_train=40, k=4,
                      finetune=FinetuneSettings(steps=3, batch_size=8),
                      dpo=DPOSettings(max_steps=6, batch_size=8, warmup=1, lr=1e-3, max_pairs_per_problem=3),
                      val_fraction=0.25, out=str(tmp_path / "vs"))
    # pairs: Cartesian product per problem, capped
    ro = lambda t, ok: Rollout("p", "Q\nA:\n", t, ok, 1, 1, "stop")
    ps = make_pairs([[ro("a", True), ro("b", True), ro("x", False), ro("y", False)], [ro("c", True)]], cfg)
    assert len(ps) == 3 and all(i == 0 and g in "ab" and b in "xy" for i, g, b in ps)
    s = run_vstar(cfg, progress=False)
    m = s["verifier_meta"]
    assert m["pairs"] > 0 and m["steps"] >= 1 and 0 <= m["train_pair_accuracy"] <= 1
    assert m["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # DPO trains where auto points
    task = get_task("arith", **SMALL_ARITH)
    v = get_verifier(f"dpo:{s['verifier']}", task=task)
    p = task.problems("test", 2, seed=0)
    steps = list(task.split_steps(task.rationale(p[0])))
    sc = v.score(p[0], steps)
    assert len(sc) == len(steps) and all(0 < x < 1 for x in sc)
    # the verifier moved away from its reference: not every score is the neutral 0.5
    assert any(abs(x - 0.5) > 1e-6 for x in sc)
    with pytest.raises(DeliberateError, match="not a DPO verifier"):
        get_verifier(f"dpo:{tmp_path}", task=task)
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "vs").read_text()  # no held-out accuracy of its own: says so, shows the rest
    assert "<h1>vstar — arith</h1>" in page and "No held-out accuracy in summary.json." in page
    assert "verifier_meta.train_pair_accuracy" in page


def test_vstar_pair_accuracy_script_reproduces_the_recorded_value(easy_ckpt, tmp_path, monkeypatch, capsys):
    """scripts/vstar_pair_accuracy.py rebuilds a run's held-out pairs: on its own verifier it prints the
    recorded val_pair_accuracy; with model = reference every pair ties, so the accuracy is 0."""
    import runpy
    import sys

    from deliberate.train.vstar import DPOSettings, VStarConfig, run_vstar

    cfg = VStarConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, n_train=40, k=4,
                      finetune=FinetuneSettings(steps=1, batch_size=8),
                      dpo=DPOSettings(max_steps=6, batch_size=8, warmup=1, lr=1e-3), val_fraction=0.5,
                      out=str(tmp_path / "vs"))
    m = run_vstar(cfg, progress=False)["verifier_meta"]
    assert m["val_pairs"] > 0
    script = str(Path(__file__).parents[1] / "scripts" / "vstar_pair_accuracy.py")
    for extra, want in (([], m["val_pair_accuracy"]), (["--model", str(easy_ckpt), "--ref", str(easy_ckpt)], 0.0)):
        monkeypatch.setattr(sys, "argv", ["vstar_pair_accuracy.py", cfg.out, *extra])
        runpy.run_path(script, run_name="__main__")
        out = capsys.readouterr().out
        assert f"{m['val_pairs']} held-out pairs, pair accuracy {want}" in out, out


def test_vstar_process_keep_moves_lucky_samples_to_the_rejected_side(easy_ckpt, tmp_path, monkeypatch):
    """keep='process': a right answer after a wrong step is neither generator data nor a chosen side."""
    import deliberate.train.vstar as vs
    from deliberate.train.selfimprove import save_rollouts

    task = get_task("arith", **SMALL_ARITH)
    train = task.problems("train", 6, seed=0)
    planted = _planted_groups(task, train)
    seen = {}
    for keep in ("outcome", "process"):
        out = tmp_path / keep
        out.mkdir()
        save_rollouts(out / "samples.jsonl", planted)  # the recipe's sample cache: no sampling happens

        def fake_finetune(policy, pairs, o, settings, keep=keep, **kw):
            seen["gen", keep] = list(pairs)
            return FinetuneResult(policy.path, 1, 1)

        def fake_dpo(cfg, rows, task, o, progress, ok, start, ref, keep=keep):
            seen["pairs", keep] = vs.make_pairs(rows, cfg, ok)
            return {"tokens_trained": 1}

        monkeypatch.setattr(TinyPolicy, "finetune", fake_finetune)
        monkeypatch.setattr(vs, "train_dpo_verifier", fake_dpo)
        vs.run_vstar(vs.VStarConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, n_train=6, k=4, keep=keep,
                                    out=str(out)), progress=False)
    gold = {rs[0].text for rs in planted}
    lucky = {rs[1].text for rs in planted}
    assert seen["gen", "outcome"] == [(r.prompt, r.text) for rs in planted for r in rs[:2]]
    assert seen["gen", "process"] == [(rs[0].prompt, rs[0].text) for rs in planted]
    assert {g for _, g, _ in seen["pairs", "outcome"]} == gold | lucky
    assert {g for _, g, _ in seen["pairs", "process"]} == gold
    assert lucky <= {b for _, _, b in seen["pairs", "process"]}
    with pytest.raises(DeliberateError, match="keep must be one of"):
        vs.VStarConfig(keep="vibes")


def test_vstar_verifier_init_starts_and_references_the_verifier_elsewhere(easy_ckpt, tiny_ckpt, tmp_path):
    """--verifier-init: the DPO verifier starts from (and is referenced to) another checkpoint; the generator
    still starts from --init; the verifier's reference is that checkpoint, unchanged."""
    from deliberate.train.selfimprove import save_rollouts
    from deliberate.train.vstar import DPOSettings, VStarConfig, run_vstar

    task = get_task("arith", **SMALL_ARITH)
    train = task.problems("train", 6, seed=0)
    out = tmp_path / "vi"
    out.mkdir()
    save_rollouts(out / "samples.jsonl", _planted_groups(task, train))  # no sampling
    cfg = VStarConfig(init=str(easy_ckpt), verifier_init=str(tiny_ckpt), task_options=SMALL_ARITH, n_train=6, k=4,
                      finetune=FinetuneSettings(steps=1, batch_size=4),
                      dpo=DPOSettings(max_steps=2, batch_size=4, warmup=1, lr=1e-3), val_fraction=0.0, out=str(out))
    s = run_vstar(cfg, progress=False)
    assert s["verifier_meta"]["init"] == str(tiny_ckpt) and s["config"]["verifier_init"] == str(tiny_ckpt)
    start, _ = load_tiny(tiny_ckpt)
    ref, _ = load_tiny(out / "verifier" / "ref")
    ver, _ = load_tiny(out / "verifier" / "model")
    gen, _ = load_tiny(out / "generator" / "model")
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), ref.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), ver.state_dict().values()))
    assert gen.config.hidden_size == load_tiny(easy_ckpt)[0].config.hidden_size
    with pytest.raises(DeliberateError, match="verifier_init .* does not exist"):
        VStarConfig(verifier_init=str(tmp_path / "nowhere"))
    # --verifier-ref: start at one checkpoint, reference another (the saved ref is that one, unchanged)
    out2 = tmp_path / "vr"
    out2.mkdir()
    shutil.copy(out / "samples.jsonl", out2 / "samples.jsonl")
    s2 = run_vstar(dataclasses.replace(cfg, verifier_ref=str(easy_ckpt), out=str(out2)), progress=False)
    assert s2["verifier_meta"]["init"] == str(tiny_ckpt) and s2["verifier_meta"]["ref"] == str(easy_ckpt)
    ref2, _ = load_tiny(out2 / "verifier" / "ref")
    easy, _ = load_tiny(easy_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(easy.state_dict().values(), ref2.state_dict().values()))
    # a reference whose tokenizer differs from the verifier's start is refused
    other = tmp_path / "other-tok"
    shutil.copytree(easy_ckpt, other)
    (other / "char_tokenizer.json").write_text(json.dumps({"chars": "0123456789+-*/=\n :A"}))
    with pytest.raises(DeliberateError, match="different tokenizers"):  # before any sampling
        run_vstar(dataclasses.replace(cfg, verifier_ref=str(other), out=str(tmp_path / "vt")), progress=False)
    assert not (tmp_path / "vt" / "samples.jsonl").exists()


def test_run_written_before_a_field_was_added_still_resumes(easy_ckpt, tmp_path):
    """A config.json without a field the recipe gained later resumes when the field is at its default,
    and is refused when it is not."""
    from deliberate.train.selfimprove import start_run
    from deliberate.train.vstar import DPOSettings, VStarConfig

    cfg = VStarConfig(init=str(easy_ckpt), out=str(tmp_path / "old"))
    start_run(cfg)
    (tmp_path / "old" / "samples.jsonl").write_text("")  # work of the old run (a config alone is taken over)
    p = tmp_path / "old" / "config.json"
    old = json.loads(p.read_text())
    del old["verifier_init"], old["dpo"]["warmup"]  # as written before these fields existed
    p.write_text(json.dumps(old))
    start_run(cfg)  # accepted: both missing fields are at their defaults
    p.write_text(json.dumps(old))
    with pytest.raises(DeliberateError, match="different config"):
        start_run(VStarConfig(init=str(easy_ckpt), verifier_init=str(easy_ckpt), out=str(tmp_path / "old")))
    with pytest.raises(DeliberateError, match="different config"):
        start_run(VStarConfig(init=str(easy_ckpt), dpo=DPOSettings(warmup=3), out=str(tmp_path / "old")))


def test_finetune_token_budget(tiny_ckpt, tmp_path):
    """``tokens``: train until that many tokens (prompt + completion) are processed, at most one batch over."""
    task = get_task("arith", **SMALL_ARITH)
    pairs = [(task.prompt(p), task.rationale(p)) for p in task.problems("train", 64, seed=1)]
    s = FinetuneSettings(batch_size=8, lr=3e-3, warmup=2, tokens=2000, steps=1000)  # tokens wins over steps
    _, n = finetune(tiny_ckpt, pairs, tmp_path / "a", s, seed=0, progress=False)
    meta = json.loads((tmp_path / "a" / "finetune.json").read_text())
    longest = max(len(q) + len(a) + 2 for q, a in pairs)
    assert 2000 <= n < 2000 + 8 * longest and meta["tokens_trained"] == n and meta["steps"] < 1000
    with pytest.raises(DeliberateError, match="mean length"):
        s.n_steps(10)


def test_sos_trains_both_conditions_on_equal_tokens(tmp_path):
    """Stream of Search: same problems, same token budget, both models evaluated by the exact checker."""
    from deliberate.models.tiny import CharTokenizer, TinyConfig
    from deliberate.train.sos import ModelContext, SoSConfig, build_pairs, run_sos

    cfg = SoSConfig(n_train=60, model=TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_len=160),
                    finetune=FinetuneSettings(batch_size=8, lr=3e-3, warmup=2, tokens=3000),
                    eval_problems=8, eval_n=2, out=str(tmp_path / "sos"))
    pairs, stats = build_pairs(cfg, ModelContext(CharTokenizer().encode, 1, 160))
    assert [q for q, _ in pairs["stream"]] == [q for q, _ in pairs["path"]]  # the same problems
    assert stats["kept"] + stats["dropped"] == 60 and stats["dropped"] > 0  # long streams left out of both
    assert stats["stream_mean_tokens"] > stats["path_mean_tokens"]
    for (_, st), (_, pa) in zip(pairs["stream"], pairs["path"]):
        assert st.endswith(pa.split("\n")[-1]) and len(st) >= len(pa)
    s = run_sos(cfg, progress=False)
    r = s["results"]
    assert set(r) == {"stream", "path"}
    for c in r.values():
        assert 3000 <= c["tokens_trained"] < 3000 + 8 * 160
        assert set(c["eval"]) >= {"greedy", "pass@2", "maj@2"} and c["train_flops"] > 0
    assert json.loads((tmp_path / "sos" / "summary.json").read_text())["results"]["path"]["tokens_trained"] == \
        r["path"]["tokens_trained"]
    again = run_sos(cfg, progress=False)["results"]  # rerun: finished parts are reused
    assert {c: {k: v for k, v in x.items() if k != "train_wall_s"} for c, x in again.items()} == \
        {c: {k: v for k, v in x.items() if k != "train_wall_s"} for c, x in r.items()}
    # the context read off the trained checkpoint is the one the filter used: characters, a BOS, 160 positions
    ctx = ModelContext.of(TinyPolicy(tmp_path / "sos" / "init"))
    assert (ctx.bos, ctx.max_len, ctx.prompt("Q: 1")) == (1, 160, "Q: 1") and build_pairs(cfg, ctx) == (pairs, stats)
    assert build_pairs(cfg, ModelContext(CharTokenizer().encode, 1, 120))[1]["kept"] < stats["kept"]
    with pytest.raises(DeliberateError, match="tokens"):
        SoSConfig(finetune=FinetuneSettings())
    with pytest.raises(DeliberateError, match="--model-"):  # a --model brings its own shape
        SoSConfig(init="smollm2", model=TinyConfig(d_model=32))
    with pytest.raises(DeliberateError, match="chat needs --model"):
        SoSConfig(chat=True)
    with pytest.raises(DeliberateError, match="max_tokens"):
        SoSConfig(max_tokens=0)
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "sos").read_text()
    for cond in ("stream", "path"):
        assert f">results.{cond}.eval.greedy</td>" in page
        assert f"<b>{r[cond]['eval']['greedy']['accuracy']:.3f}</b>" in page


def test_sos_arithmetic_facts_pretrain_the_shared_init(tmp_path):
    """Facts are legal, correct search operations; both conditions start from the pre-trained init."""
    from deliberate.models.tiny import TinyConfig
    from deliberate.train.sos import SoSConfig, arithmetic_facts, run_sos

    cfg = SoSConfig(n_train=40, model=TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_len=160),
                    finetune=FinetuneSettings(batch_size=8, lr=3e-3, warmup=2, tokens=2000), pretrain_tokens=1500,
                    facts_per_example=4, eval_problems=4, eval_n=2, out=str(tmp_path / "sos"))
    facts = arithmetic_facts(cfg, 50)
    assert facts == arithmetic_facts(cfg, 50) and len(facts) == 50  # seeded
    lines = [ln for _, text in facts for ln in text.split("\n")]
    assert len(lines) == 200 and all(q == "" for q, _ in facts)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    for ln in lines:
        m = re.fullmatch(r"(\d+)([+\-*/])(\d+)=(\d+)", ln)
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert a >= b and ops[op](a, b) == c and (op != "/" or a % b == 0), ln
    assert len({ln.split("=")[0] for ln in lines}) > 100  # spread over many operations
    s = run_sos(cfg, progress=False)
    pre = s["pretrain"]
    assert 1500 <= pre["tokens_trained"] < 1500 + 8 * 160 and pre["train_flops"] > 0
    fa = pre["fact_accuracy"]
    assert fa["facts"] == 400 and 0 <= fa["accuracy"] <= 1 and set(fa["by_op"]) <= set("+-*/")
    for c in s["results"].values():
        assert c["init"] == pre["model"] == str(tmp_path / "sos" / "pretrain" / "model")
        assert 2000 <= c["tokens_trained"] < 2000 + 8 * 160
    trained = json.loads((tmp_path / "sos" / "pretrain" / "finetune.json").read_text())
    assert trained["tokens_trained"] == pre["tokens_trained"]
    # --model: the pre-trained init as a tiny checkpoint gives both conditions the same start, so the same models
    again = run_sos(dataclasses.replace(cfg, init=pre["model"], pretrain_tokens=0, model=TinyConfig(),
                                        out=str(tmp_path / "from-ckpt")), progress=False)
    assert again["pretrain"] is None and again["n_params"] == s["n_params"] and again["data"] == s["data"]
    for cond, c in again["results"].items():
        assert c["init"] == pre["model"] and c["model"] == str(tmp_path / "from-ckpt" / cond / "model")
        assert (Path(c["model"]) / "model.safetensors").read_bytes() == \
            (Path(s["results"][cond]["model"]) / "model.safetensors").read_bytes()
        assert {k: c[k] for k in ("tokens_trained", "eval", "diagnosis")} == \
            {k: s["results"][cond][k] for k in ("tokens_trained", "eval", "diagnosis")}
    with pytest.raises(DeliberateError, match="pretrain_tokens"):
        SoSConfig(finetune=FinetuneSettings(tokens=10), pretrain_tokens=-1)


def test_mcts_ei_tree_labels():
    """Soft label of a prefix = fraction of the tree's finished solutions through it that are correct."""
    from deliberate.train.mcts_ei import tree_labels

    row = {"problem_id": "p", "question": "q", "gold": "3", "solutions": [
        {"steps": ["a", "b", "Answer: 3"], "answer": "3", "correct": True},
        {"steps": ["a", "c", "Answer: 4"], "answer": "4", "correct": False},
        {"steps": ["a", "c", "Answer: 3"], "answer": "3", "correct": True},
        {"steps": ["d", "Answer: 5"], "answer": "5", "correct": False}]}
    labels = tree_labels(row)
    assert [r["soft"] for r in labels] == [[2 / 3, 1.0, 1.0], [2 / 3, 0.5, 0.0], [2 / 3, 0.5, 1.0], [0.0, 0.0]]
    assert [r["hard"] for r in labels] == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0]]
    assert [r["outcome"] for r in labels] == [True, False, True, False]


def test_mcts_ei_runs_trains_policy_and_prm_and_resumes(easy_ckpt, tmp_path):
    from deliberate.rewards.mc_labels import read_labels
    from deliberate.cli.train.mcts_ei import format_iterations
    from deliberate.train.mcts_ei import MCTSEIConfig, run_mcts_ei

    cfg = MCTSEIConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, iterations=2, n_train=16, mcts_n=4,
                       expansions=2, batch_problems=8, finetune=FinetuneSettings(steps=4, batch_size=8),
                       prm_steps=4, prm_batch_size=8, eval_problems=8, eval_n=2, eval_mcts_n=2,
                       out=str(tmp_path / "run"))
    s = run_mcts_ei(cfg, progress=False)
    rows = s["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r["value"] for r in rows[1:]] == ["rollout", "prm"]  # no PRM before iteration 1 trains one
    assert rows[1]["tokens_forward"] == 0 < rows[2]["tokens_forward"]  # the PRM scored nodes in iteration 2
    task = get_task("arith", **SMALL_ARITH)
    for r in rows[1:]:
        assert r["kept"] > 0 and r["tokens_sampled"] > 0 and r["prm_tokens_trained"] > 0
        assert r["tokens_trained"] == r["policy_tokens_trained"] + r["prm_tokens_trained"]
        assert set(r["eval"]) >= {"greedy", "maj@2", "pass@2", "mcts@2"}
    # the policy trained only on solutions the checker accepts; the PRM on both iterations' labels
    it1 = tmp_path / "run" / "it001"
    search = [json.loads(x) for x in (it1 / "search.jsonl").read_text().splitlines()]
    assert len(search) == 16 and sum(len(r["solutions"]) for r in search) >= rows[1]["kept"]
    for r in search:
        p = next(q for q in task.problems("train", 16, seed=0) if q.id == r["problem_id"])
        for sol in r["solutions"]:
            assert sol["correct"] == task.is_correct(task.extract_answer("\n".join(sol["steps"])), p)
    n1 = len(read_labels(it1 / "labels.jsonl"))
    assert len(read_labels(tmp_path / "run" / "it002" / "prm_labels.jsonl")) == \
        n1 + len(read_labels(tmp_path / "run" / "it002" / "labels.jsonl"))
    # iteration 2 killed after its search (half of it saved): redone to the same numbers
    lines = (tmp_path / "run" / "it002" / "search.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run" / "it002" / "search.jsonl").write_text("".join(lines[:8]))
    for d in ("model", "prm", "eval"):
        shutil.rmtree(tmp_path / "run" / "it002" / d)
    for f in ("finetune.json", "eval_mcts.jsonl"):
        (tmp_path / "run" / "it002" / f).unlink()
    (tmp_path / "run" / "iterations" / "002.json").unlink()
    again = run_mcts_ei(cfg, progress=False)["iterations"]
    strip = lambda rs: [{k: v for k, v in r.items() if "wall" not in k} for r in rs]
    assert strip(again) == strip(rows)
    table = format_iterations(rows, 2, 2).splitlines()
    assert len(table) == 4 and "mcts@2" in table[0] and table[2].split()[0] == "1"
    from deliberate.eval.report import write_report

    page = write_report(tmp_path / "run").read_text()  # the search metric is a column like the others
    assert "<h1>mcts-ei — arith</h1>" in page and "mcts@2 [95% CI]" in page
    with pytest.raises(DeliberateError, match="value must be"):
        MCTSEIConfig(value="oracle")


def test_suspects_side_by_side_under_one_budget(easy_ckpt, tmp_path):
    from deliberate.experiments.suspects import SUSPECTS, SuspectsConfig, format_table, run_suspects

    budget = 0.001  # TFLOPs: one or two iterations of each iterative suspect at these sizes
    cfg = SuspectsConfig(init=str(easy_ckpt), task_options=SMALL_ARITH, train_tflops=budget, n_train=16, k=2,
                         finetune=FinetuneSettings(steps=3, batch_size=8), mcts_n=2, prm_steps=3, label_problems=4,
                         label_rollouts=2, grpo_steps=6, grpo_eval_every=2, eval_problems=6, eval_n=2,
                         out=str(tmp_path / "sus"))
    s = run_suspects(cfg, progress=False)
    assert list(s["suspects"]) == list(SUSPECTS)
    seed_greedy = s["suspects"]["guess-check"]["curve"][0]["eval"]["greedy"]
    for name, r in s["suspects"].items():
        curve = r["curve"]
        assert curve[0]["cum_flops"] == 0 and curve[0]["eval"]["greedy"] == seed_greedy  # one seed policy
        assert [c["cum_flops"] for c in curve] == sorted(c["cum_flops"] for c in curve)
        if name != "correct":  # iterative: stops at the first iteration boundary past the budget
            assert curve[-1]["cum_flops"] >= budget * 1e12 > curve[-2]["cum_flops"]
        assert set(r["final"]) >= {"greedy", "maj@2", "pass@2"}
        assert [c["n"] for c in r["test_time"]["maj"]] == [1, 2] and r["test_time"]["greedy"]
    pr = s["suspects"]["process-rewards"]
    assert pr["prm_flops"] > 0 and pr["curve"][1]["cum_flops"] > pr["prm_flops"]  # the PRM's cost is charged
    assert "revise" in s["suspects"]["correct"]["revision"]
    page = (tmp_path / "sus" / "report.html").read_text()
    assert "data:image/png;base64," in page and "guess-check" in page
    assert "process-rewards" in format_table(s)
    again = run_suspects(cfg, progress=False)  # finished suspects are not rerun
    assert again["suspects"] == s["suspects"]
    with pytest.raises(DeliberateError, match="unknown suspect"):
        SuspectsConfig(suspects=("guess-check", "vibes"))


def test_sos_diagnose_counts_arithmetic_and_goal_errors(tmp_path):
    from deliberate.train.sos import diagnose

    rows = [  # target 67
        {"text": "14*5=70 (3 70)\n 70-3=67 !\nAnswer: 14*5-3", "gold": "67", "correct": True, "finish_reason": "stop"},
        {"text": "14*5=70 (3 70)\n 70-3=67 x\n 70+3=73 x", "gold": "67", "correct": False, "finish_reason": "stop"},
        {"text": "14*5=71 (3 71)\n 71-3=68 !\nAnswer: 14*5-3", "gold": "67", "correct": False, "finish_reason": "stop"},
        {"text": "14+5=19 (3 19)\n 19*3=57 !\nAnswer: (14+5)*3", "gold": "67", "correct": False, "finish_reason": "stop"},
        {"text": "14+5=19 (3 19)\n 19+3=", "gold": "67", "correct": False, "finish_reason": "length"},
    ]
    p = tmp_path / "records.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = diagnose(p)
    assert d["completions"] == 5
    assert d["outcomes"] == {"correct": 0.2, "missed target": 0.2, "arithmetic error": 0.2, "false goal": 0.2,
                             "length": 0.2}
    assert d["op_lines"] == 10 and d["op_error_rate"] == pytest.approx(1 / 10)  # only 14*5=71
    assert d["op_error_rate_by_op"] == {"*": 0.25, "+": 0.0, "-": 0.0}
