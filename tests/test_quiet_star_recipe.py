"""``deliberate train quiet-star``: a killed run resumes with identical numbers; the baseline trains the
same batches; the trained model decodes think-then-predict through ``--backend-arg think=...``."""

from __future__ import annotations

import json

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model, load_tiny, save_tiny
from deliberate.train import quiet_star, quiet_star_eval
from deliberate.train.quiet_star import QuietStarConfig, run_quiet_star

SMALL = dict(task_options={"min_ops": 1, "max_ops": 1, "max_operand": 9}, n_train=16, thought_len=2, n_thoughts=2,
             n_positions=4, horizon=2, steps=4, batch_size=4, checkpoint_every=2, eval_problems=2, eval_thoughts=1,
             lr=1e-3, warmup=1)


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    d = tmp_path_factory.mktemp("init") / "model"
    tok = CharTokenizer()
    save_tiny(build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, max_len=256), tok, seed=0),
              tok, d)
    return str(d)


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_killed_run_resumes_with_identical_numbers(init, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_quiet_star(QuietStarConfig(init=init, out=str(straight), **SMALL), progress=False)

    killed = tmp_path / "killed"
    real, calls = quiet_star.train_step, []

    def dies_at_step_4(*a, **kw):  # steps 1-2 checkpointed, step 3 done but not checkpointed, killed in step 4
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(quiet_star, "train_step", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_quiet_star(QuietStarConfig(init=init, out=str(killed), **SMALL), progress=False)
    assert [r["step"] for r in log_rows(killed)] == [1, 2, 3]
    monkeypatch.setattr(quiet_star, "train_step", real)
    got = run_quiet_star(QuietStarConfig(init=init, out=str(killed), **SMALL), progress=False)

    assert log_rows(killed) == log_rows(straight)  # step 3 redone from the step-2 checkpoint, identically
    a, _ = load_tiny(straight / "model")
    b, _ = load_tiny(killed / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(torch.load(straight / "model" / "thinking_head.pt")["start"],
                       torch.load(killed / "model" / "thinking_head.pt")["start"])
    want = json.loads((straight / "summary.json").read_text())["eval"]
    assert got["eval"] == want
    assert {"answer_ll", "greedy", "think_greedy", "think_greedy_tokens"} <= set(want)
    assert got["compute"]["tokens_sampled"] > 0


def test_baseline_trains_same_batches_without_thoughts_and_think_decoding_loads(init, tmp_path):
    cfg = QuietStarConfig(init=init, out=str(tmp_path / "plain"), thoughts=False, **SMALL)
    s = run_quiet_star(cfg, progress=False)
    assert s["compute"]["tokens_sampled"] == 0 and "think_greedy" not in s["eval"]
    assert not (tmp_path / "plain" / "model" / "thinking_head.pt").exists()
    with pytest.raises(DeliberateError, match="thinking head"):
        get_backend("tiny", path=str(tmp_path / "plain" / "model"), think=True)
    think = run_quiet_star(QuietStarConfig(init=init, out=str(tmp_path / "think"), **SMALL), progress=False)
    backend = get_backend("tiny", path=str(tmp_path / "think" / "model"), think=True, think_temperature=0)
    plain = get_backend("tiny", path=str(tmp_path / "think" / "model"))
    p = SamplingParams(temperature=0, max_tokens=6)
    (c,), = backend.generate(["Q: 1+1?"], p)
    (d,), = plain.generate(["Q: 1+1?"], p)
    visible = len(c.logprobs)
    assert c.completion_tokens == visible * (1 + 2 + 2)  # thoughts counted: start, 2 tokens, end per visible token
    assert d.completion_tokens <= 6  # the default backend counts visible tokens only
    assert think["compute"]["tokens_trained"] > s["compute"]["tokens_trained"]


def test_head_learns_at_its_own_rate(init, tmp_path):
    out = tmp_path / "fast-head"
    run_quiet_star(QuietStarConfig(init=init, out=str(out), head_lr_mult=10.0, **{**SMALL, "steps": 2}), progress=False)
    groups = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)["param_groups"]
    head = torch.load(out / "model" / "thinking_head.pt")
    assert len(groups[-1]["params"]) == len(head)  # start, end and the mixer's weights and biases: the last group
    assert groups[-1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    with pytest.raises(DeliberateError, match="head_lr_mult"):
        QuietStarConfig(init=init, head_lr_mult=0)


def write_rows(run, rows):
    run.mkdir()
    (run / "eval_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_pairs_by_problem_and_splits_answer_tokens_by_baseline_loss(tmp_path):
    def row(i, lp, greedy, think=None):
        r = {"id": f"p{i}", "token_lp": lp, "own_plain_lp": lp, "answer_span": [2, 4], "greedy": greedy,
             "greedy_tokens": 5}
        return r if think is None else {**r, "think_greedy": think, "think_greedy_tokens": 30}

    # per problem: tokens 0-1 the question, 2-3 the answer; the thought model gains 0.2 on answer tokens the
    # baseline finds hard (loss 2) and loses 0.1 on the easy ones (loss 0.5); nothing elsewhere
    plain = [[-1.0, -1.0, -2.0, -0.5], [-1.0, -1.0, -0.5, -0.5], [-1.0, -1.0, -2.0, -2.0]]
    thought = [[-1.0, -1.0, -1.8, -0.6], [-1.0, -1.0, -0.6, -0.6], [-1.0, -1.0, -1.8, -1.8]]
    for s in range(2):  # two seeds, the same three problems (listed in another order by the second)
        order = [0, 1, 2] if s == 0 else [2, 0, 1]
        write_rows(tmp_path / f"t{s}", [row(i, thought[i], True, think=i == 0) for i in order])
        write_rows(tmp_path / f"p{s}", [row(i, plain[i], i != 1) for i in order])
    res = quiet_star_eval.compare([tmp_path / "t0", tmp_path / "t1"], [tmp_path / "p0", tmp_path / "p1"], "test")
    per_problem = [(0.2 - 0.1) / 2, -0.1, 0.2]
    assert res["answer_ll_diff"]["mean"] == pytest.approx(sum(per_problem) / 3)
    assert res["answer_ll_diff"]["per_seed"] == pytest.approx([sum(per_problem) / 3] * 2)
    lo, hi = res["answer_ll_diff"]["ci"]
    assert min(per_problem) <= lo <= res["answer_ll_diff"]["mean"] <= hi <= max(per_problem)
    assert res["greedy_minus_plain_greedy"]["mean"] == pytest.approx(1 / 3)
    assert res["think_greedy_minus_plain_greedy"]["mean"] == pytest.approx(1 / 3 - 2 / 3)
    assert res["think_greedy_tokens"] == 30 and res["plain_greedy_tokens"] == 5
    hard = res["answer_by_baseline_loss"][-1]  # baseline loss 2: every such token gains 0.2
    assert hard["mean_gain"] == pytest.approx(0.2) and hard["ci"] == pytest.approx([0.2, 0.2])
    empty, easy = res["answer_by_baseline_loss"][:2]  # the loss-0.5 tokens tie the first two quartile edges
    assert empty["mean_gain"] is None and easy["mean_gain"] == pytest.approx(-0.1)
    assert res["by_baseline_loss"][0]["baseline_loss"][0] == pytest.approx(0.5)
