"""Automatic prefix caching in the sampling engine: same outputs as without it, less prefill, bounded memory."""

from __future__ import annotations

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import Engine, PrefixCache, HFRunner, LlamaRunner
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model

# questions of different lengths (>= 16 tokens each, the cache's lookup granularity)
QUESTIONS = [
    "Q: Tom has 12 apples and buys 7 more. How many apples?\nA:\n",
    "Q: 3+4*2 = ?\nA:\n",
    "Q: What is 100 minus 37, then doubled?\nA:\n",
]


@pytest.fixture(scope="module")
def model_tok():
    tok = CharTokenizer()
    model = build_tiny_model(TinyConfig(d_model=48, n_layers=2, n_heads=2, n_kv_heads=2), tok, seed=0).eval()
    return model, tok


def _beam_loop(eng: Engine, rounds: int = 4, *, greedy: bool = False) -> tuple[list, list[int]]:
    """Step-level search shape: generate one line per prefix, extend each prefix by one of its steps.

    Returns every round's (texts, logprobs, finish reasons) and the prefill tokens of each round.
    """
    prefixes = list(QUESTIONS)
    log, prefill = [], []
    for r in range(rounds):
        params = (SamplingParams(temperature=0, max_tokens=5, logprobs=True) if greedy else
                  SamplingParams(n=3, temperature=1.0, max_tokens=12, stop=("\n",), seed=r, logprobs=True))
        before = eng.stats.prefill_tokens
        out = eng.generate(prefixes, params)
        prefill.append(eng.stats.prefill_tokens - before)
        log.append([[(c.text, c.logprobs, c.finish_reason) for c in o] for o in out])
        # each prefix continues with a different sample, so rows' steps end at different lengths
        prefixes = [p + o[(r + i) % len(o)].text + "\n" for i, (p, o) in enumerate(zip(prefixes, out))]
    return log, prefill


def _same(a: list, b: list) -> None:
    for ra, rb in zip(a, b, strict=True):
        for oa, ob in zip(ra, rb, strict=True):
            for (ta, la, fa), (tb, lb, fb) in zip(oa, ob, strict=True):
                assert ta == tb and fa == fb
                assert la == pytest.approx(lb, abs=1e-4)


@pytest.mark.parametrize("greedy", [False, True])
def test_beam_loop_same_outputs_with_and_without_cache(model_tok, greedy):
    model, tok = model_tok
    off = Engine(model, tok, prefix_cache_bytes=0)
    on = Engine(model, tok)
    log_off, pf_off = _beam_loop(off, greedy=greedy)
    log_on, pf_on = _beam_loop(on, greedy=greedy)
    _same(log_off, log_on)
    assert off.stats.cached_tokens == 0 and on.stats.cached_tokens > 0
    assert pf_on[0] == pf_off[0]  # nothing cached yet in round 1
    for r in range(1, len(pf_on)):
        if greedy:
            # later rounds compute only what the cache lacks: the "\n" appended to the step, plus the
            # step's last token when max_tokens cut it (the last sampled token is never fed)
            assert pf_on[r] <= 2 * len(QUESTIONS) < pf_off[r]
        else:
            # the untrained model also samples <pad>/<bos>/<unk>, which decode to "": the re-encoded
            # prefix then differs from the fed tokens from there on, and that part is recomputed
            assert pf_on[r] * 3 < pf_off[r]
    assert on.stats.prefill_tokens + on.stats.cached_tokens == off.stats.prefill_tokens
    assert on.stats.decode_tokens == off.stats.decode_tokens


def test_cached_prefill_logits_match_full_prefill(model_tok):
    """Runner level: KV copied from a previous batch + a partial prefill == a full prefill."""
    model, tok = model_tok
    full = [[tok.bos_token_id] + tok.encode(q + "step one is here\n") for q in QUESTIONS]
    P = max(map(len, full))
    ids = torch.zeros(len(full), P, dtype=torch.long)
    pad = torch.zeros(len(full), dtype=torch.long)
    for i, e in enumerate(full):
        ids[i, P - len(e):] = torch.tensor(e)
        pad[i] = P - len(e)
    with torch.inference_mode():
        ref_r = LlamaRunner(model)
        ref = ref_r.start(ids, pad, P + 3)
        ref2 = ref_r.step(torch.tensor([5, 6, 7]))
        kv = [ref_r.row_kv(b) for b in range(len(full))]
        # rows reuse different amounts: none, part, all but the last token
        ms = [0, 20, len(full[2]) - 1]
        r = LlamaRunner(model)
        got = r.start(ids, pad, P + 3, reuse=[None if m == 0 else (k, v, m) for (k, v), m in zip(kv, ms)])
        got2 = r.step(torch.tensor([5, 6, 7]))
        hf = torch.stack([model(torch.tensor([e])).logits[0, -1] for e in full])
    assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(got, hf, atol=1e-4)
    assert torch.allclose(got2, ref2, atol=1e-5)
    with pytest.raises(DeliberateError, match="leave a token"):
        LlamaRunner(model).start(ids, pad, P + 3, reuse=[None, None, (kv[2][0], kv[2][1], len(full[2]))])


def test_shared_question_reused_across_different_partial_solutions(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    q = QUESTIONS[0]
    a = eng.generate([q + "First I add 12 and 7.\n"], SamplingParams(max_tokens=4, seed=1))
    eng.stats.reset()
    # neither prompt is a prefix of the other: the common part (BOS + question + "First I ") is reused
    b = eng.generate([q + "First I subtract.\n"], SamplingParams(max_tokens=4, seed=1))
    common = 1 + len(q + "First I ")
    assert eng.stats.cached_tokens == common
    assert eng.stats.prefill_tokens == len(q + "First I subtract.\n") + 1 - common
    ref = Engine(model, tok, prefix_cache_bytes=0)
    assert b[0][0].text == ref.generate([q + "First I subtract.\n"], SamplingParams(max_tokens=4, seed=1))[0][0].text
    again = ref.generate([q + "First I add 12 and 7.\n"], SamplingParams(max_tokens=4, seed=1))
    assert a[0][0].text == again[0][0].text


def test_identical_prompt_reuses_all_but_last_token(model_tok):
    model, tok = model_tok
    eng = Engine(model, tok)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=3)
    first = eng.generate(QUESTIONS, params)
    eng.stats.reset()
    again = eng.generate(QUESTIONS, params)
    assert [[c.text for c in o] for o in first] == [[c.text for c in o] for o in again]
    assert eng.stats.prefill_tokens == len(QUESTIONS)  # one token per prompt, for its logits
    assert eng.stats.cached_tokens == sum(len(q) for q in QUESTIONS)  # BOS + question - 1


def test_cache_smaller_than_one_entry_stores_nothing(model_tok):
    model, tok = model_tok
    small = Engine(model, tok, prefix_cache_bytes=1024)
    off = Engine(model, tok, prefix_cache_bytes=0)
    log_s, _ = _beam_loop(small, rounds=2)
    log_o, _ = _beam_loop(off, rounds=2)
    _same(log_s, log_o)
    assert len(small.prefix_cache) == 0 and small.prefix_cache.bytes == 0
    assert small.stats.cached_tokens == 0 and small.stats.prefill_tokens == off.stats.prefill_tokens
    assert off.prefix_cache is None


def test_lru_eviction_respects_byte_budget(model_tok):
    model, tok = model_tok
    per_tok = LlamaRunner(model).kv_bytes_per_token
    budget = per_tok * 100  # room for two of the ~40-token entries below
    eng = Engine(model, tok, prefix_cache_bytes=budget)
    params = SamplingParams(temperature=0, max_tokens=3)
    # no two prompts share 16 leading tokens, so a lookup never touches another prompt's entry
    prompts = [f"{i}: Q: a problem that asks for a sum\nA:\n" for i in range(6)]
    for p in prompts:
        eng.generate([p], params)
        assert 0 < eng.prefix_cache.bytes <= budget
        assert eng.prefix_cache.bytes == sum(e.nbytes for e in eng.prefix_cache._entries.values())
    assert len(eng.prefix_cache) == 2
    # the two most recent survive; an old one was evicted and is recomputed in full
    eng.stats.reset()
    eng.generate([prompts[-1]], params)
    assert eng.stats.prefill_tokens == 1
    eng.stats.reset()
    eng.generate([prompts[0]], params)
    assert eng.stats.cached_tokens == 0 and eng.stats.prefill_tokens == len(prompts[0]) + 1
    assert eng.prefix_cache.bytes <= budget and len(eng.prefix_cache) == 2
    # a hit counts as use: prompts[-1] (hit before prompts[0] ran) survived, prompts[-2] was evicted
    eng.stats.reset()
    eng.generate([prompts[-1], prompts[-2]], params)
    assert eng.stats.prefill_tokens == 1 + len(prompts[-2]) + 1


def test_prefix_cache_unit_dedup_and_budget():
    def kv(n: int):
        return lambda: (torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))

    c = PrefixCache(max_bytes=100)
    base = list(range(20))
    assert c.insert(base, 40, kv(20))
    assert c.insert(base + [7, 8], 44, kv(22))  # extends the first: the first is dropped
    assert len(c) == 1 and c.bytes == 44
    assert not c.insert(base + [7], 42, kv(21))  # covered by the stored one
    e, m = c.lookup(base + [7, 9, 9])
    assert m == 21 and e.tokens == tuple(base + [7, 8])
    assert c.lookup(list(range(1, 30))) == (None, 0)
    assert not c.insert(list(range(100, 110)), 20, kv(10))  # shorter than a lookup block: not stored
    assert not c.insert(list(range(200, 260)), 120, kv(60))  # larger than the whole budget
    assert c.insert(list(range(300, 330)), 60, kv(30))  # evicts the LRU entry to fit
    assert len(c) == 1 and c.bytes == 60
    c.clear()
    assert len(c) == 0 and c.bytes == 0
    with pytest.raises(DeliberateError, match="prefix_cache_bytes"):
        PrefixCache(-1)


def test_mixed_hits_and_misses_in_one_batch_are_deterministic(model_tok):
    """Sample j of prompt p does not depend on which other prompts hit the cache or share the batch."""
    model, tok = model_tok
    eng = Engine(model, tok, max_batch_size=4)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=5, logprobs=True)
    eng.generate(QUESTIONS[:1], params)  # warm the cache for one prompt only
    mixed = eng.generate(QUESTIONS + [QUESTIONS[0] + "So "], params)
    ref = Engine(model, tok, prefix_cache_bytes=0).generate(QUESTIONS + [QUESTIONS[0] + "So "], params)
    assert [[c.text for c in o] for o in mixed] == [[c.text for c in o] for o in ref]
    assert eng.stats.cached_tokens > 0


def test_clear_and_weight_change_drop_the_cache(model_tok):
    model, tok = model_tok
    model = build_tiny_model(TinyConfig(d_model=48, n_layers=2, n_heads=2, n_kv_heads=2), tok, seed=1).eval()
    eng = Engine(model, tok)
    params = SamplingParams(temperature=0, max_tokens=4)
    eng.generate(QUESTIONS, params)
    assert len(eng.prefix_cache) > 0
    eng.clear_prefix_cache()
    assert len(eng.prefix_cache) == 0 and eng.prefix_cache.bytes == 0
    eng.generate(QUESTIONS, params)
    with torch.no_grad():  # an in-place update, as an optimizer step would do
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    eng.stats.reset()
    out = eng.generate(QUESTIONS, params)
    assert eng.stats.cached_tokens == 0  # stale KV was not served
    ref = Engine(model, tok, prefix_cache_bytes=0).generate(QUESTIONS, params)
    assert [o[0].text for o in out] == [o[0].text for o in ref]


def test_generic_runner_does_full_prefill_and_counts_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = CharTokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256)
    model = GPT2LMHeadModel(cfg).eval()
    eng = Engine(model, tok)
    assert eng.runner_cls is HFRunner and eng.prefix_cache is None
    params = SamplingParams(temperature=0, max_tokens=4)
    eng.generate(QUESTIONS, params)
    eng.generate(QUESTIONS, params)
    assert eng.stats.cached_tokens == 0
    assert eng.stats.prefill_tokens == 2 * sum(len(q) + 1 for q in QUESTIONS)
    eng.clear_prefix_cache()  # a no-op, not an error


@pytest.mark.parametrize("bad", [-1, 1.5, "1GB", True])
def test_invalid_cache_budget_is_a_clear_error(model_tok, bad):
    model, tok = model_tok
    with pytest.raises(DeliberateError, match="prefix_cache_bytes"):
        Engine(model, tok, prefix_cache_bytes=bad)
