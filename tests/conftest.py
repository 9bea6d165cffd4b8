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
