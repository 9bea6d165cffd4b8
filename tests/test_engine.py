"""The sampling engine: exactness against transformers, seeding contract, stops, log-probs, accounting."""

from __future__ import annotations

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import Engine, HFRunner, LlamaRunner
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model

PROMPTS = ["Q: 12+7\nA:\n", "Q: Mia has 3 pens. How many pens now?\nA:\n", "hi"]


@pytest.fixture(scope="module")
def model_tok():
    tok = CharTokenizer()
    return build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2), tok, seed=3).eval(), tok


def _left_pad(enc, pad_id=0):
    P = max(map(len, enc))
    ids = torch.full((len(enc), P), pad_id)
    padn = torch.zeros(len(enc), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, P - len(e):] = torch.tensor(e)
        padn[i] = P - len(e)
    return ids, padn


@pytest.mark.parametrize("runner", [LlamaRunner, HFRunner])
def test_runner_logits_match_transformers_forward(model_tok, runner):
    model, tok = model_tok
    enc = [[tok.bos_token_id] + tok.encode(p) for p in PROMPTS]
    ids, pad = _left_pad(enc)
    with torch.no_grad():
        r = runner(model)
        got = r.start(ids, pad, ids.shape[1] + 4)
        ref = torch.stack([model(torch.tensor([e])).logits[0, -1] for e in enc])
        assert torch.allclose(got, ref, atol=1e-4)
        nxt = torch.tensor([5, 6, 7])
        got2 = r.step(nxt)
        ref2 = torch.stack([model(torch.tensor([e + [t]])).logits[0, -1] for e, t in zip(enc, nxt.tolist())])
        assert torch.allclose(got2, ref2, atol=1e-4)


def test_shared_prompt_decode_matches_copied_prompts(model_tok):
    """Several samples per prompt: ``share`` keeps each prompt's KV once and attends to it as one GEMM
    per prompt; logits, per-row KV and the model's own forward all agree with copying the prompt KV
    into every row -- also after rows leave the batch and the prompts' groups become uneven."""
    model, tok = model_tok
    enc = [[tok.bos_token_id] + tok.encode(p) for p in PROMPTS]
    enc.sort(key=len, reverse=True)  # the engine's order: longest prompt first
    ids, pad = _left_pad(enc)
    expand = torch.tensor([0, 0, 0, 1, 2, 2])
    with torch.no_grad():
        a, b = LlamaRunner(model), LlamaRunner(model)
        a.start(ids, pad, ids.shape[1] + 6)
        b.start(ids, pad, ids.shape[1] + 6)
        a.share(expand)
        b.select(expand)
        seqs = [list(enc[int(g)]) for g in expand]
        toks = torch.tensor([5, 6, 7, 8, 9, 10])
        for t in range(4):
            if t == 2:  # drop rows: group sizes 3,1,2 -> 2,0,1 (one prompt has no rows left)
                keep = torch.tensor([0, 2, 5])
                a.select(keep), b.select(keep)
                seqs = [seqs[k] for k in keep.tolist()]
                toks = toks.index_select(0, keep)
            la, lb = a.step(toks), b.step(toks)
            assert torch.allclose(la, lb, atol=1e-5)
            seqs = [s + [int(x)] for s, x in zip(seqs, toks)]
            ref = torch.stack([model(torch.tensor([s])).logits[0, -1] for s in seqs])
            assert torch.allclose(la, ref, atol=1e-4)
            toks = (toks + 1) % 40 + 3
        for r in range(len(seqs)):
            for x, y in zip(a.row_kv(r), b.row_kv(r)):
                assert x.shape == y.shape and torch.allclose(x, y, atol=1e-6)
        with pytest.raises(DeliberateError, match="grouped"):
            a.select(torch.tensor([2, 0]))


def test_greedy_matches_transformers_generate(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    out = eng.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    for p, c in zip(PROMPTS, out):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(p)])
        ref = model.generate(ids, do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id)]
        assert c[0].text == tok.decode(ref)


def test_same_seed_same_samples_independent_of_batch(model_tok):
    model, tok = model_tok
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=7)
    a = Engine(model, tok, max_batch_size=64).generate(PROMPTS, params)
    b = Engine(model, tok, max_batch_size=3).generate(PROMPTS[::-1], params)[::-1]
    c = Engine(model, tok).generate([PROMPTS[1]], params)
    assert [[x.text for x in r] for r in a] == [[x.text for x in r] for r in b]
    assert [x.text for x in a[1]] == [x.text for x in c[0]]
    d = Engine(model, tok).generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=8))
    assert [[x.text for x in r] for r in a] != [[x.text for x in r] for r in d]
    assert len({x.text for x in a[0]}) > 1  # samples of one prompt differ from each other


def test_greedy_n_copies_and_tiny_top_p_is_greedy(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    g = eng.generate(PROMPTS, SamplingParams(n=3, temperature=0, max_tokens=10))
    assert all(len(r) == 3 and len({x.text for x in r}) == 1 for r in g)
    t = eng.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=10, seed=1))
    assert [[x.text for x in r] for r in t] == [[x.text for x in r][:2] for r in g]


def test_stop_strings_length_and_token_accounting(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    free = eng.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_tokens=30, seed=2, logprobs=True))
    for r in free:
        for c in r:
            assert c.finish_reason in ("stop", "length")
            assert len(c.logprobs) == c.completion_tokens
            if c.finish_reason == "length":
                assert c.completion_tokens == 30 and len(c.text) <= 30  # special tokens decode to ''
    # pick a 2-char string the free run produced and use it as a stop string
    text = free[0][0].text
    assert len(text) >= 6
    stop = text[3:5]
    cut = eng.generate(PROMPTS[:1], SamplingParams(n=2, temperature=1.0, max_tokens=30, seed=2, stop=(stop,),
                                                   logprobs=True))
    c = cut[0][0]
    first = text.find(stop)
    assert c.text == text[:first] and c.finish_reason == "stop"
    # same tokens as the free run up to the one that completed the stop string, and no further
    assert c.logprobs == pytest.approx(free[0][0].logprobs[: c.completion_tokens], abs=1e-4)
    assert first + len(stop) <= c.completion_tokens < 30
    assert all(x.prompt_tokens == len(PROMPTS[0]) + 1 for x in cut[0])


def test_logprobs_are_model_logprobs(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    c = eng.generate(PROMPTS[:1], SamplingParams(temperature=0.7, max_tokens=6, seed=4, logprobs=True))[0][0]
    ids = [tok.bos_token_id] + tok.encode(PROMPTS[0])
    gen = tok.encode(c.text)
    with torch.no_grad():
        logits = model(torch.tensor([ids + gen])).logits[0]
    ref = torch.log_softmax(logits[len(ids) - 1: len(ids) - 1 + len(gen)], -1)
    ref = ref.gather(-1, torch.tensor(gen)[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(c.logprobs[: len(gen)]), ref, atol=1e-4)


def test_engine_stats_count_shared_prefill(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    eng.generate(PROMPTS[:1], SamplingParams(n=8, temperature=1.0, max_tokens=5, seed=0))
    assert eng.stats.prefill_tokens == len(PROMPTS[0]) + 1  # one prefill shared by the 8 samples


def test_generic_runner_on_non_llama_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = CharTokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    eng = Engine(model, tok)
    assert eng.runner_cls is HFRunner
    out = eng.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=8))
    for p, c in zip(PROMPTS, out):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(p)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id)]
        assert c[0].text == tok.decode(ref)


@pytest.mark.parametrize("bad", [dict(n=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=0),
                                 dict(seed=-1), dict(stop=("",)), dict(temperature=float("nan"))])
def test_invalid_sampling_params(bad):
    with pytest.raises(DeliberateError, match="invalid sampling parameters"):
        SamplingParams(**bad)


def test_prompt_longer_than_context_is_a_clear_error(model_tok):
    model, tok = model_tok
    with pytest.raises(DeliberateError, match="does not fit"):
        Engine(model, tok).generate(["x" * 600], SamplingParams(max_tokens=4))
