"""Quiet-STaR's mechanism: the parallel-thought mask against running each thought alone, rewards and
baseline against a hand computation, and think-then-predict decoding against a cache-free recomputation."""

from __future__ import annotations

import pytest
import torch

from deliberate.models.sampling import SamplingParams
from deliberate.models.thinking import ThinkingDecoder, ThinkingHead, decoder_parts
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.policy.thinking import (Streams, ThoughtSettings, pick_positions, quiet_star_loss, sample_thoughts,
                                        thought_forward, thought_rewards)


def tiny():
    tok = CharTokenizer()
    return build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, max_len=128), tok, seed=1), tok


def hf_llama():
    """A small HF Llama unlike the tiny one: grouped-query attention, untied embeddings, its own vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg)


def random_head(hidden: int, seed: int = 0) -> ThinkingHead:
    torch.manual_seed(seed)
    head = ThinkingHead(hidden, init=torch.randn(hidden))
    with torch.no_grad():  # a mixer that is not (almost) constant, so mixing is exercised
        for p in head.mixer.parameters():
            p.normal_(0, 0.5)
    return head


def alone(model, head, seq: list[int], t: int, thought: list[int], h: int):
    """Run ``x_0..x_t <start> thought <end> x_t+1..x_t+h-1`` by itself: (thought log-prob, mixed and plain
    log-probs of x_t+1..x_t+h), from a plain forward without any custom mask."""
    body, lm_head = decoder_parts(model)
    emb = model.get_input_embeddings()
    x = torch.tensor(seq)
    text_h = body(inputs_embeds=emb(x)[None]).last_hidden_state[0]
    forced = seq[t + 1:t + h]
    inp = torch.cat([emb(x[:t + 1]), head.start[None], emb(torch.tensor(thought, dtype=torch.long)), head.end[None],
                     emb(torch.tensor(forced, dtype=torch.long))])
    hid = body(inputs_embeds=inp[None]).last_hidden_state[0]
    lp = torch.log_softmax(lm_head(hid).float(), -1)
    n = len(thought)
    thought_lp = sum(float(lp[t + 1 + j, thought[j]]) for j in range(n))
    mixed, plain = [], []
    for i in range(h):
        if t + 1 + i >= len(seq):
            break
        post, ph = hid[t + n + 2 + i], text_h[t + i]
        m = head.mix(lm_head(ph).float(), lm_head(post).float(), ph, post)
        mixed.append(float(torch.log_softmax(m, -1)[seq[t + 1 + i]]))
        plain.append(float(torch.log_softmax(lm_head(ph).float(), -1)[seq[t + 1 + i]]))
    return thought_lp, mixed, plain


@pytest.mark.parametrize("which", ["tiny", "hf"])
def test_mask_gives_each_thought_exactly_its_prefix(which):
    model, _ = tiny() if which == "tiny" else (hf_llama(), None)
    model.eval()
    V = model.config.vocab_size
    head = random_head(model.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([11, 7])
    ids = torch.randint(4, V, (2, 11), generator=g)
    ids[1, 7:] = 0  # padding
    s = ThoughtSettings(thought_len=3, n_thoughts=2, n_positions=3, horizon=3)
    pos, valid = pick_positions(lengths, s.n_positions, g)
    streams = Streams.at(pos, valid, s.n_thoughts)
    thoughts = torch.randint(4, V, (2, streams.pos.shape[1], s.thought_len), generator=g)
    with torch.no_grad():
        p = thought_forward(model, head, ids, lengths, streams, thoughts, s)
        for b in range(2):
            seq = ids[b, :lengths[b]].tolist()
            for q in range(streams.pos.shape[1]):
                t = int(streams.pos[b, q])
                tlp, mixed, plain = alone(model, head, seq, t, thoughts[b, q].tolist(), s.horizon)
                assert float(p.thought_logp[b, q]) == pytest.approx(tlp, abs=1e-4)
                k = len(mixed)
                assert p.target_valid[b, q].tolist() == [i < k for i in range(s.horizon)]
                assert p.mixed_lp[b, q, :k].tolist() == pytest.approx(mixed, abs=1e-4)
                assert p.plain_lp[b, q, :k].tolist() == pytest.approx(plain, abs=1e-4)
        # the text's own logits are untouched by the blocks after it
        plain_logits = model(ids, attention_mask=(torch.arange(11)[None] < lengths[:, None]).long()).logits
        assert torch.allclose(p.text_logits[0], plain_logits[0], atol=1e-4)
        assert torch.allclose(p.text_logits[1, :7], plain_logits[1, :7], atol=1e-4)


@pytest.mark.parametrize("which", ["tiny", "hf"])
def test_cached_sampling_matches_greedy_rollouts_alone(which):
    model, _ = tiny() if which == "tiny" else (hf_llama(), None)
    model.eval()
    head = random_head(model.config.hidden_size, seed=1)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 6])
    ids = torch.randint(4, V, (2, 9), generator=g)
    s = ThoughtSettings(thought_len=4, n_thoughts=1, n_positions=0, horizon=1)
    pos, valid = pick_positions(lengths, 0, g)
    streams = Streams.at(pos, valid, 1)
    got = sample_thoughts(model, head, ids, lengths, streams, s, g, temperature=0)
    body, lm_head = decoder_parts(model)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        for b in range(2):
            for q in range(int(valid[b].sum())):
                t = int(pos[b, q])
                x = torch.cat([emb(ids[b, :t + 1]), head.start[None]])
                want = []
                for _ in range(s.thought_len):
                    nxt = int(lm_head(body(inputs_embeds=x[None]).last_hidden_state[0, -1]).argmax())
                    want.append(nxt)
                    x = torch.cat([x, emb(torch.tensor([nxt]))])
                assert got[b, q].tolist() == want


def test_rewards_and_baseline_match_a_hand_computation():
    # one row, 2 positions x 3 thoughts, horizon 2; the second position's last target is past the text
    mixed = torch.tensor([[[-1.0, -2.0], [-0.5, -0.5], [-3.0, -1.0], [-2.0, -9.0], [-1.0, -9.0], [-4.0, -9.0]]])
    plain = torch.tensor([[[-1.5, -1.5], [-1.5, -1.5], [-1.5, -1.5], [-2.0, -2.0], [-2.0, -2.0], [-2.0, -2.0]]])
    valid = torch.tensor([[[True, True]] * 3 + [[True, False]] * 3])
    reward, baseline, adv = thought_rewards(mixed, plain, valid, 3)
    # position 1: gains (-1+1.5)+(-2+1.5)=0, (-0.5+1.5)*2=2, (-3+1.5)+(-1+1.5)=-1 -> mean 1/3
    # position 2: only the first target counts: 0, 1, -2 -> mean -1/3
    assert reward[0].tolist() == pytest.approx([0.0, 2.0, -1.0, 0.0, 1.0, -2.0])
    assert baseline[0].tolist() == pytest.approx([1 / 3] * 3 + [-1 / 3] * 3)
    assert adv[0].tolist() == pytest.approx([-1 / 3, 5 / 3, -4 / 3, 1 / 3, 4 / 3, -5 / 3])


def test_loss_gradient_reaches_thoughts_head_and_embeddings():
    model, _ = tiny()
    head = random_head(model.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([12, 12])
    ids = torch.randint(4, model.config.vocab_size, (2, 12), generator=g)
    s = ThoughtSettings(thought_len=2, n_thoughts=2, n_positions=4, horizon=2)
    streams = Streams.at(*pick_positions(lengths, 4, g), 2)
    thoughts = sample_thoughts(model, head, ids, lengths, streams, s, g)
    passed = thought_forward(model, head, ids, lengths, streams, thoughts, s)
    loss, stats = quiet_star_loss(passed, ids, lengths, 2, 1.0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (head.start, head.end, head.mixer[0].weight))
    assert set(stats) == {"loss", "lm", "mixed_nll", "policy", "reward", "mix_weight"}


class FakeTok:
    """Engine tokenizer protocol over the small HF Llama's ids: one character per id."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text):
        return [4 + (ord(c) % 57) for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + (i - 4) % 26) for i in ids if i >= 4)


@pytest.mark.parametrize("which", ["tiny", "hf"])
def test_think_then_predict_decoding_matches_recomputation(which):
    """Greedy think-then-predict with the KV cache (thought dropped after each token) equals recomputing
    every step from scratch: prefix + start + greedy thought + end, mixed with the plain prediction."""
    model, tok = tiny() if which == "tiny" else (hf_llama(), FakeTok())
    model.eval()
    head = random_head(model.config.hidden_size, seed=2)
    dec = ThinkingDecoder(model, tok, head, thought_len=2, think_temperature=0)
    prompts = ["ab", "hello"]
    out = dec.generate(prompts, SamplingParams(temperature=0, max_tokens=5))
    body, lm_head = decoder_parts(model)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        for prompt, (c,) in zip(prompts, out):
            seq = [tok.bos_token_id] + tok.encode(prompt)
            gen = []
            for _ in range(5):
                x = emb(torch.tensor(seq))
                h_plain = body(inputs_embeds=x[None]).last_hidden_state[0, -1]
                th = torch.cat([x, head.start[None]])
                for _ in range(2):
                    nxt = int(lm_head(body(inputs_embeds=th[None]).last_hidden_state[0, -1]).argmax())
                    th = torch.cat([th, emb(torch.tensor([nxt]))])
                h_post = body(inputs_embeds=torch.cat([th, head.end[None]])[None]).last_hidden_state[0, -1]
                t = int(head.mix(lm_head(h_plain), lm_head(h_post), h_plain, h_post).argmax())
                gen.append(t)
                if t == tok.eos_token_id:
                    break
                seq.append(t)
            assert c.completion_tokens == len(gen) * (1 + 2 + 2)  # each visible token + start, 2 thought, end
            assert c.text == tok.decode([i for i in gen if i != tok.eos_token_id])
