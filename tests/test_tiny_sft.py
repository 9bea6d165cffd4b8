"""Tiny model tokenizer/checkpoints and SFT: determinism, checkpoint/resume equals uninterrupted."""

from __future__ import annotations

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyBackend, TinyConfig, load_tiny
from deliberate.train import sft
from deliberate.train.common import batch_indices

SMALL = TinyConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2)


def test_char_tokenizer_round_trip():
    tok = CharTokenizer()
    s = "Q: Mia has 12 pens.\nA:\n3*4=12\nAnswer: 12"
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode("é") == [tok.unk_token_id]
    assert tok.decode([tok.bos_token_id, tok.eos_token_id]) == ""


def test_batch_indices_cover_each_epoch_once():
    per_epoch = 1000 // 10
    seen = [i for s in range(per_epoch) for i in batch_indices(1000, 10, 3, s)]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 1000
    assert batch_indices(1000, 10, 3, 5) == batch_indices(1000, 10, 3, 5)
    assert batch_indices(1000, 10, 3, 5) != batch_indices(1000, 10, 3, 105)  # next epoch reshuffled


def _cfg(out, **kw):
    return sft.SFTConfig(steps=6, n_train=64, batch_size=8, lr=3e-3, warmup=2, model=SMALL, checkpoint_every=3,
                         out=str(out), **kw)


def _weights(path):
    m, _ = load_tiny(path)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_sft_resume_after_crash_matches_uninterrupted(tmp_path, monkeypatch):
    full = _weights(sft.train_sft(_cfg(tmp_path / "a"), progress=False))
    real_lr = sft.lr_at

    def crash_at_4(step, *a, **k):
        if step == 4:
            raise RuntimeError("simulated crash")
        return real_lr(step, *a, **k)

    monkeypatch.setattr(sft, "lr_at", crash_at_4)
    with pytest.raises(RuntimeError):
        sft.train_sft(_cfg(tmp_path / "b"), progress=False)
    assert (tmp_path / "b" / "checkpoint" / "trainer_state.json").exists()
    monkeypatch.setattr(sft, "lr_at", real_lr)
    resumed = _weights(sft.train_sft(_cfg(tmp_path / "b"), progress=False))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert len(log) >= 2 and "flops" in log[-1]


def test_sft_refuses_to_resume_a_different_config(tmp_path):
    sft.train_sft(_cfg(tmp_path), progress=False)
    with pytest.raises(DeliberateError, match="different config"):
        sft.train_sft(_cfg(tmp_path, seed=5), progress=False)


def test_sft_config_validation():
    with pytest.raises(DeliberateError, match="steps"):
        sft.SFTConfig(steps=0)
    with pytest.raises(DeliberateError, match="divisible"):
        TinyConfig(d_model=30, n_heads=4)


def test_tiny_backend_loads_and_generates(tiny_ckpt):
    b = TinyBackend(tiny_ckpt)
    out = b.generate(["Q: Mia has 3 pens. How many pens now?\nA:\n"], SamplingParams(n=2, max_tokens=20, seed=0))
    assert len(out) == 1 and len(out[0]) == 2
    assert all(c.completion_tokens <= 20 for c in out[0])
    with pytest.raises(DeliberateError, match="not found"):
        TinyBackend("/nonexistent/dir")
