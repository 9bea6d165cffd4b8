"""The likelihood PRM (rewards/likelihood.py): features from a frozen LM, a logistic calibration on
Monte-Carlo labels, the `lprm:DIR` verifier and `deliberate train lprm`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.tiny import load_tiny
from deliberate.rewards import get_verifier
from deliberate.rewards.likelihood import FEATURES, fit_calibration, step_features
from deliberate.tasks import get_task


def _direct_logprobs(model, tok, prompt, text):
    p = [tok.bos_token_id] + tok.encode(prompt)
    c = tok.encode(text)
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([p + c])).logits[0, :-1].float().log_softmax(-1)
    return lp[len(p) - 1:].gather(1, torch.tensor(c)[:, None])[:, 0].tolist()


def test_step_features_match_one_unpadded_forward_and_do_not_depend_on_the_batch(tiny_ckpt):
    model, tok = load_tiny(tiny_ckpt)
    short = ("Q: 1+1?\nA:\n", ["1+1=2", "Answer: 2"])
    long = ("Q: Eva has 12 books. She gives 8 away and buys 3 packs of 5. How many?\nA:\n",
            ["12-8=4", "3*5=15", "4+15=19", "Answer: 19"])
    alone = step_features(model, tok, [short])[0][0]
    batched, n_tokens = step_features(model, tok, [long, short, long], batch_size=3)
    assert len(alone) == 2 and all(len(r) == len(FEATURES) for r in alone)
    for a, b in zip(alone, batched[1]):
        assert a == pytest.approx(b, abs=1e-4)  # right padding of the shorter row changes nothing
    lp = _direct_logprobs(model, tok, *long[:1], "\n".join(long[1]))
    pos, run_min = 0, 0.0
    for row, step in zip(batched[0], long[1]):
        seg = lp[pos:pos + len(step)]
        pos += len(step) + 1
        run_min = min(run_min, sum(seg))
        assert row == pytest.approx([sum(seg), min(seg), run_min], abs=1e-4)
    assert pos == len(lp) + 1  # every character scored, separators skipped
    assert n_tokens == 2 * (1 + len(long[0]) + len("\n".join(long[1]))) + 1 + len(short[0]) + len("\n".join(short[1]))


def test_fit_calibration_recovers_a_logistic_relation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=g)
    y = torch.sigmoid(2.0 * x[:, 0] - 1.0 * x[:, 2] + 0.5)
    cal = fit_calibration(x.tolist(), y.tolist())
    sd = cal["sd"]
    w = [cal["w"][i] / sd[i] for i in range(3)]  # back to the raw feature scale
    assert w[0] == pytest.approx(2.0, abs=0.05) and w[1] == pytest.approx(0.0, abs=0.05)
    assert w[2] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(DeliberateError, match="as many labels"):
        fit_calibration([[0.0, 0.0, 0.0]], [])


def test_train_lprm_and_the_verifier_end_to_end(tiny_ckpt, tmp_path):
    from deliberate.cli import main_cli

    task = get_task("arith", min_ops=1, max_ops=2, max_operand=9)
    rows = []
    for i, p in enumerate(task.problems("train", 40, seed=0)):
        gold = list(task.split_steps(task.rationale(p)))
        wrong = [s.replace("=", "=1", 1) if "=" in s else s for s in gold]  # garbled results: label 0
        rows.append({"question": p.question, "steps": gold, "soft": [1.0] * len(gold), "hard": [1.0] * len(gold),
                     "outcome": True})
        rows.append({"question": p.question, "steps": wrong, "soft": [0.0] * len(wrong),
                     "hard": [0.0] * len(wrong), "outcome": False})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main_cli(["train", "lprm", "--lm", str(tiny_ckpt), "--labels", str(labels), "--task-arg", "max_ops=2",
                     "--task-arg", "max_operand=9", "--out", str(tmp_path / "lprm")]) == 0
    cal = json.loads((tmp_path / "lprm" / "calibration.json").read_text())
    assert cal["features"] == list(FEATURES) and cal["n_steps"] == sum(len(r["steps"]) for r in rows)
    assert cal["task"] == "arith"
    assert cal["train_bce"] < math.log(2)  # better than a constant 0.5
    v = get_verifier(f"lprm:{tmp_path / 'lprm'}", task=task)
    p = task.problems("test", 1, seed=0)[0]
    gold = list(task.split_steps(task.rationale(p)))
    scores = v.score_batch([(p, gold), (p, []), (p, gold[:1])])
    assert len(scores[0]) == len(gold) and scores[1] == [] and all(0 < s < 1 for s in scores[0])
    assert scores[2] == pytest.approx(scores[0][:1], abs=1e-5)  # a prefix scores as in the full solution
    assert v.stats.sequences == 2 and v.stats.tokens > 0
    # the LM was copied: the verifier directory is self-contained
    assert (tmp_path / "lprm" / "lm" / "char_tokenizer.json").exists()
    with pytest.raises(DeliberateError, match="needs a directory"):
        get_verifier("lprm")
    with pytest.raises(DeliberateError, match="not found"):
        get_verifier(f"lprm:{tmp_path / 'nothing'}")


def test_outcome_target_fits_last_step_features_to_outcomes_and_loads_as_lorm(tiny_ckpt, tmp_path):
    from deliberate.cli import main_cli
    from deliberate.rewards.base import problem_prompt

    task = get_task("arith", min_ops=1, max_ops=2, max_operand=9)
    rows = []
    for p in task.problems("train", 30, seed=1):
        gold = list(task.split_steps(task.rationale(p)))
        wrong = gold[:-1] + ["Answer: 1" + gold[-1].split()[-1]]  # right chain, wrong final answer
        rows.append({"question": p.question, "gold": p.answer, "steps": gold, "soft": [0.5] * len(gold),
                     "hard": [1.0] * len(gold), "outcome": True})
        rows.append({"question": p.question, "gold": p.answer, "steps": wrong, "soft": [0.5] * len(wrong),
                     "hard": [1.0] * len(wrong), "outcome": False})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["train", "lprm", "--lm", str(tiny_ckpt), "--labels", str(labels), "--task-arg", "max_ops=2",
            "--task-arg", "max_operand=9"]
    assert main_cli(args + ["--target", "outcome", "--out", str(tmp_path / "lorm")]) == 0
    cal = json.loads((tmp_path / "lorm" / "calibration.json").read_text())
    assert cal["target"] == "outcome" and cal["n_solutions"] == len(rows) and "n_steps" not in cal
    # the fit is exactly a logistic regression of each solution's outcome on its last step's features
    model, tok = load_tiny(tiny_ckpt)
    from deliberate.types import Problem
    items = [(problem_prompt(task, Problem(id="", question=r["question"], answer=str(r["gold"]))), r["steps"])
             for r in rows]
    feats, _ = step_features(model, tok, items)
    ref = fit_calibration([f[-1] for f in feats], [float(r["outcome"]) for r in rows])
    assert cal["w"] == pytest.approx(ref["w"], abs=1e-6) and cal["b"] == pytest.approx(ref["b"], abs=1e-6)
    # the step-level fit of the same file sees only constant soft labels: no signal, unlike the outcomes
    assert main_cli(args + ["--out", str(tmp_path / "lprm")]) == 0
    step_cal = json.loads((tmp_path / "lprm" / "calibration.json").read_text())
    assert step_cal["target"] == "step" and step_cal["n_steps"] == sum(len(r["steps"]) for r in rows)
    assert max(abs(w) for w in step_cal["w"]) < 1e-3 < max(abs(w) for w in cal["w"])

    v = get_verifier(f"lorm:{tmp_path / 'lorm'}", task=task)
    assert v.name.startswith("lorm:") and v.describe()["target"] == "outcome"
    p = task.problems("test", 1, seed=0)[0]
    gold = list(task.split_steps(task.rationale(p)))
    wrong = gold[:-1] + ["Answer: 1" + gold[-1].split()[-1]]
    s, w = v.score_batch([(p, gold), (p, wrong)])
    assert len(s) == len(gold) and all(0 <= x <= 1 for x in s + w)
    assert s[-1] > w[-1] and s[:-1] == pytest.approx(w[:-1], abs=1e-5)  # prefixes score alike; the outcome differs
    with pytest.raises(DeliberateError, match="fitted to outcome labels; load it as lorm:"):
        get_verifier(f"lprm:{tmp_path / 'lorm'}", task=task)
    with pytest.raises(DeliberateError, match="fitted to step labels; load it as lprm:"):
        get_verifier(f"lorm:{tmp_path / 'lprm'}", task=task)
    with pytest.raises(SystemExit):
        main_cli(args + ["--target", "steps", "--out", str(tmp_path / "x")])


def test_sweep_warns_when_an_outcome_verifier_is_not_read_at_the_last_step(tiny_ckpt, tmp_path, caplog):
    from deliberate.cli import main_cli

    task = get_task("arith", min_ops=1, max_ops=2, max_operand=9)
    rows = []
    for i, p in enumerate(task.problems("train", 8)):
        steps = list(task.split_steps(task.rationale(p)))
        rows.append({"question": p.question, "gold": p.answer, "steps": steps, "soft": [1.0] * len(steps),
                     "hard": [1.0] * len(steps), "outcome": bool(i % 2)})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main_cli(["train", "lprm", "--lm", str(tiny_ckpt), "--labels", str(labels), "--target", "outcome",
                     "--task-arg", "max_ops=2", "--task-arg", "max_operand=9", "--out", str(tmp_path / "lorm")]) == 0
    sweep = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--task-arg", "max_operand=9", "--backend", "tiny",
             "--model", str(tiny_ckpt), "--verifier", f"lorm:{tmp_path / 'lorm'}", "--strategies", "best_of_n",
             "--budgets", "2", "--n-problems", "2", "--taste="]
    with caplog.at_level("WARNING", logger="deliberate.eval.sweep"):
        assert main_cli(sweep + ["--out", str(tmp_path / "min")]) == 0
    assert "lorm: is an outcome verifier" in caplog.text and "aggregation=min" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="deliberate.eval.sweep"):
        assert main_cli(sweep + ["--setting", "aggregation=last", "--out", str(tmp_path / "last")]) == 0
    assert "outcome verifier" not in caplog.text


def test_engine_tail_logprobs_match_a_plain_forward_cold_and_from_the_prefix_cache(tiny_ckpt):
    from deliberate.models.engine import Engine

    model, tok = load_tiny(tiny_ckpt)
    eng = Engine(model, tok)
    prompt = "Q: Eva has 12 books. She gives 8 away.\nA:\n"
    parent, child = prompt + "12-8=4", prompt + "12-8=4\nAnswer: 4"
    direct = _direct_logprobs(model, tok, prompt, "12-8=4\nAnswer: 4")
    cold = eng.tail_logprobs([parent], [6])[0]
    assert cold.tolist() == pytest.approx(direct[:6], abs=1e-4)
    assert eng.stats.cached_tokens == 0
    warm = eng.tail_logprobs([child, parent], [9, 3])  # the child extends the cached parent
    assert warm[0].tolist() == pytest.approx(direct[-9:], abs=1e-4)
    assert warm[1].tolist() == pytest.approx(direct[3:6], abs=1e-4)
    assert eng.stats.cached_tokens > 0  # only the new tokens ran
    with pytest.raises(DeliberateError, match="tail"):
        eng.tail_logprobs([parent], [0])
    with pytest.raises(DeliberateError, match="tail"):
        eng.tail_logprobs([parent], [1 + len(parent)])
    with pytest.raises(DeliberateError, match="tail lengths"):
        eng.tail_logprobs([parent, child], [1])


def test_search_style_scoring_runs_only_new_steps_and_matches_the_full_forward(tiny_ckpt, tmp_path):
    """A search scores parent prefixes, then children one step longer: the incremental path (memoised
    features + the engine's prefix cache) must give the scores of a from-scratch forward."""
    from deliberate.rewards.likelihood import CALIBRATION, LikelihoodPRM

    model, tok = load_tiny(tiny_ckpt)
    cal = {"features": list(FEATURES), "mu": [-3.0, -1.5, -4.0], "sd": [2.0, 1.0, 2.5], "w": [0.8, 0.5, 1.1],
           "b": -0.2, "target": "step"}
    (tmp_path / CALIBRATION).write_text(json.dumps(cal))
    task = get_task("arith", min_ops=2, max_ops=3, max_operand=9)
    problems = task.problems("test", 6, seed=0)
    sols = [list(task.split_steps(task.rationale(p))) for p in problems]
    sols += [[s.replace("=", "=1", 1) for s in sol] for sol in sols]  # wrong variants share the prompts
    problems = problems * 2
    search = LikelihoodPRM(model, tok, cal, task=task)
    full = LikelihoodPRM(model, tok, cal, task=task)
    full._eng = False  # the from-scratch path only
    got, nodes = {}, []
    for k in range(1, max(map(len, sols)) + 1):  # round k: every node one step longer
        batch = [(p, s[:k]) for p, s in zip(problems, sols) if len(s) >= k]
        nodes += batch
        for (p, s), sc in zip(batch, search.score_batch(batch)):
            got[(p.id, tuple(s))] = sc
    ref = full.score_batch(nodes)
    for (p, s), r in zip(nodes, ref):
        assert got[(p.id, tuple(s))] == pytest.approx(r, abs=1e-5)
    assert search.stats.sequences == len(nodes) > len(sols)
    assert search._eng.stats.cached_tokens > search._eng.stats.prefill_tokens  # most of each prefix was reused
    assert search.stats.tokens < full.stats.tokens / 2  # rescoring every node from scratch runs > 2x the tokens
    calls = search.stats.calls
    again = search.score_batch([(problems[0], sols[0])])  # all known: no model call
    assert again[0] == got[(problems[0].id, tuple(sols[0]))] and search.stats.calls == calls
