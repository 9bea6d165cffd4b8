"""The engine's device / dtype path: argument parsing and errors, bf16 on CPU, the CUDA-only kernels
(SDPA prefill, one row group) checked on CPU against the default path, the per-step host reads, the
GPU benchmark script's smoke mode, and -- only where CUDA is available -- engine vs ``generate`` on
the GPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend, parse_kv
from deliberate.models.engine import (
    DEFAULT_MAX_BATCH,
    Engine,
    LlamaRunner,
    default_max_batch_size,
    resolve_device,
    resolve_dtype,
)
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import MAX_BATCH as TINY_MAX_BATCH
from deliberate.models.tiny import CharTokenizer, TinyBackend, TinyConfig, build_tiny_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the error raised where CUDA is missing")
PROMPTS = ["Q: 12+7\nA:\n", "Q: Mia has 3 pens. How many pens now?\nA:\n", "hi"]
ROOT = Path(__file__).resolve().parents[1]


class NoEOS:
    """The char tokenizer with EOS switched off: every row runs ``max_tokens``."""

    def __init__(self, tok):
        self.tok, self.bos_token_id, self.eos_token_id = tok, tok.bos_token_id, None

    def encode(self, s):
        return self.tok.encode(s)

    def decode(self, ids):
        return self.tok.decode(ids)


def _model(seed=3, **kw):
    tok = CharTokenizer()
    cfg = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, **kw}
    return build_tiny_model(TinyConfig(**cfg), tok, seed=seed).eval(), tok


# --------------------------------------------------------------------------- parsing and errors


def test_resolve_device():
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ".strip().lower()) == torch.device("cpu")
    for bad in ("tpu", "bogus", "cuda:x", True, 2.5):
        with pytest.raises(DeliberateError, match="device"):
            resolve_device(bad)
    with pytest.raises(DeliberateError, match="only 1 CUDA|only .* CUDA|CUDA is not available"):
        resolve_device("cuda:99")


@no_cuda
def test_cuda_without_cuda_is_a_clear_error():
    for dev in ("cuda", "cuda:1", 0):
        with pytest.raises(DeliberateError, match="CUDA is not available.*device=cpu"):
            resolve_device(dev, what="tiny backend")
    m, tok = _model()
    with pytest.raises(DeliberateError, match="tiny backend: device 'cuda' requested but CUDA is not available"):
        TinyBackend(model=m, tokenizer=tok, device="cuda")
    with pytest.raises(DeliberateError, match="CUDA is not available"):
        get_backend("tiny", model=m, tokenizer=tok, **parse_kv(["device=cuda", "dtype=bfloat16"]))
    with pytest.raises(DeliberateError, match="CUDA is not available"):
        Engine(m, tok, device="cuda")


def _finetune_pairs():
    return [(f"Q: {a}+{b}\nA:\n", f"{a + b}") for a in range(8) for b in range(4)]


@no_cuda
def test_recipe_finetune_device(tmp_path):
    from deliberate.models.tiny import save_tiny
    from deliberate.train.selfimprove import FinetuneSettings, finetune

    m, tok = _model()
    save_tiny(m, tok, tmp_path / "init")
    with pytest.raises(DeliberateError, match="M-step: device 'cuda' requested but CUDA is not available"):
        finetune(tmp_path / "init", _finetune_pairs(), tmp_path / "gpu", FinetuneSettings(steps=2, batch_size=8),
                 progress=False, desc="M-step", device="cuda")
    assert not (tmp_path / "gpu" / "model").exists()
    _, trained = finetune(tmp_path / "init", _finetune_pairs(), tmp_path / "cpu",
                          FinetuneSettings(steps=2, batch_size=8), progress=False)  # auto -> cpu here
    assert json.loads((tmp_path / "cpu" / "finetune.json").read_text())["device"] == "cpu" and trained > 0



SMALL_ARITH = {"min_ops": 1, "max_ops": 1, "max_operand": 5}


def _sft_cfg(out, steps=10):
    from deliberate.train.sft import SFTConfig

    return SFTConfig(task_options=SMALL_ARITH, steps=steps, n_train=400, batch_size=16, lr=5e-3, checkpoint_every=steps,
                     model=TinyConfig(d_model=48, n_layers=2, n_heads=2, n_kv_heads=2), out=str(out))


def _grpo_cfg(init, out, steps=1):
    from deliberate.train.grpo import GRPOConfig

    return GRPOConfig(init=str(init), task_options=SMALL_ARITH, n_train=32, steps=steps, problems_per_step=6, group=4,
                      lr=1e-3, eval_every=1, checkpoint_every=1, eval_problems=4, eval_n=2, out=str(out))


@no_cuda
def test_sft_and_grpo_device(tmp_path, monkeypatch):
    """``train sft`` / ``train grpo`` run on ``--device`` (``auto``: the GPU where there is one): asking for
    CUDA where there is none fails before anything is written; a CPU run records its device; under a
    launcher the accelerate config places the ranks, so an explicit device is refused."""
    from deliberate.cli import main_cli
    from deliberate.policy.distributed import Single, setup
    from deliberate.train.grpo import run_grpo
    from deliberate.train.sft import train_sft

    with pytest.raises(DeliberateError, match="sft: device 'cuda' requested but CUDA is not available"):
        train_sft(_sft_cfg(tmp_path / "gpu"), progress=False, device="cuda")
    assert not (tmp_path / "gpu").exists()
    model_dir = train_sft(_sft_cfg(tmp_path / "sft", steps=2), progress=False)  # auto -> cpu here
    assert json.loads((tmp_path / "sft" / "compute.json").read_text())["device"] == "cpu"
    with pytest.raises(DeliberateError, match="grpo: device 'cuda:0' requested but CUDA is not available"):
        run_grpo(_grpo_cfg(model_dir, tmp_path / "grpo-gpu"), progress=False, device="cuda:0")
    assert not (tmp_path / "grpo-gpu").exists()
    assert main_cli(["train", "grpo", "--device", "cuda", "--init", str(model_dir), "--out",
                     str(tmp_path / "cli-gpu")]) == 2  # one-line error, exit 2
    assert not (tmp_path / "cli-gpu").exists()
    summary = run_grpo(_grpo_cfg(model_dir, tmp_path / "grpo"), progress=False, device="cpu")
    assert summary["device"] == "cpu" and len(summary["iterations"]) == 2
    # on the CPU placement is the identity: the plain run's code is what it always was
    one, m = setup("grpo", "cpu"), _model()[0]
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}
    assert isinstance(one, Single) and one.place(m) is m and one.to_device(batch)["input_ids"] is batch["input_ids"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch sets
    with pytest.raises(DeliberateError, match="--device cpu is for plain runs; under accelerate launch"):
        setup("grpo", "cpu")


@needs_cuda
def test_sft_and_grpo_train_on_the_gpu(tmp_path):
    """Plain ``train sft`` / ``train grpo`` on CUDA: SFT takes the CPU run's batches and lands within float
    rounding of its weights; GRPO samples and updates on the GPU, its checkpoint (optimizer state included)
    continues on the CPU."""
    from deliberate.models.tiny import load_tiny
    from deliberate.train.grpo import run_grpo
    from deliberate.train.sft import train_sft

    dirs = {d: train_sft(_sft_cfg(tmp_path / f"sft-{d}"), progress=False, device=d) for d in ("cpu", "cuda")}
    comp = {d: json.loads((tmp_path / f"sft-{d}" / "compute.json").read_text()) for d in dirs}
    assert comp["cuda"]["device"].startswith("cuda") and comp["cuda"]["tokens_trained"] == comp["cpu"]["tokens_trained"]
    a, b = (load_tiny(dirs[d])[0] for d in ("cpu", "cuda"))
    assert next(b.parameters()).device.type == "cpu"
    start = build_tiny_model(_sft_cfg(tmp_path / "x").model, CharTokenizer(), seed=0)  # both runs' start (seed 0)
    flat = [torch.cat([p.detach().flatten() for p in x.parameters()]) for x in (start, a, b)]
    moved = (flat[1] - flat[0]).abs().mean()
    assert moved > 0 and (flat[2] - flat[1]).abs().mean() < 0.05 * moved
    easy = train_sft(_sft_cfg(tmp_path / "easy", steps=120), progress=False, device="cuda")
    s1 = run_grpo(_grpo_cfg(easy, tmp_path / "grpo"), progress=False, device="cuda")
    assert s1["device"].startswith("cuda") and s1["iterations"][1]["groups_used"] > 0
    seed, after = load_tiny(easy)[0], load_tiny(tmp_path / "grpo" / "checkpoint")[0]
    assert max(float((x - y).abs().max()) for x, y in zip(seed.parameters(), after.parameters())) > 1e-5
    s2 = run_grpo(_grpo_cfg(easy, tmp_path / "grpo", steps=2), progress=False, device="cpu")  # continue on the CPU
    assert s2["device"] == "cpu" and [r["step"] for r in s2["iterations"]] == [0, 1, 2]


@no_cuda
def test_recipe_rollouts_device(tmp_path):
    """Recipes sample from a checkpoint on ``device`` (``auto`` = the GPU where there is one): asking
    for CUDA where there is none fails before any sampling; ``cpu`` and ``auto`` give the same rollouts."""
    from deliberate.models.tiny import save_tiny
    from deliberate.tasks import get_task
    from deliberate.policy.tiny import load_sampler
    from deliberate.train.selfimprove import policy_rollouts

    m, tok = _model()
    save_tiny(m, tok, tmp_path / "policy")
    task = get_task("arith")
    probs = task.problems("train", 4, seed=0)
    spec = ("arith", {})
    with pytest.raises(DeliberateError, match="device 'cuda' requested but CUDA is not available"):
        policy_rollouts(tmp_path / "policy", task, spec, probs, 2, max_tokens=8, progress=False, desc="E-step 1",
                        device="cuda")
    model, _ = load_sampler(tmp_path / "policy", "cpu")
    assert next(model.parameters()).device.type == "cpu" and not model.training
    rows = {d: policy_rollouts(tmp_path / "policy", task, spec, probs, 2, max_tokens=8, seed=5, progress=False,
                               device=d) for d in ("auto", "cpu")}
    assert [[r.text for r in rs] for rs in rows["auto"]] == [[r.text for r in rs] for rs in rows["cpu"]]
    assert all(len(rs) == 2 for rs in rows["cpu"])

def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == resolve_dtype("BF16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("float32", "cpu") == resolve_dtype(torch.float32, "cpu") == torch.float32
    for bad in ("int8", "float64", "", torch.int8, 16):
        with pytest.raises(DeliberateError, match="dtype must be"):
            resolve_dtype(bad, "cpu", what="hf backend")


def test_device_aware_batch_defaults():
    assert default_max_batch_size("cpu") == DEFAULT_MAX_BATCH["cpu"] == 64
    assert default_max_batch_size("cuda") == DEFAULT_MAX_BATCH["cuda"] == 256
    assert default_max_batch_size("cuda:1", TINY_MAX_BATCH) == 1024
    assert default_max_batch_size("cpu", TINY_MAX_BATCH) == 256
    m, tok = _model()
    eng = Engine(m, tok)
    assert eng.device == torch.device("cpu") and eng.max_batch_size == 64
    assert eng.rows_per_chunk(10_000) == 64  # the KV-memory cap applies on CUDA only
    for bad in (0, -1, 2.0, True):
        with pytest.raises(DeliberateError, match="max_batch_size"):
            Engine(m, tok, max_batch_size=bad)
    assert TinyBackend(model=m, tokenizer=tok).engine.max_batch_size == (1024 if CUDA else 256)


def test_engine_runs_where_the_model_is():
    m, tok = _model()
    assert Engine(m, tok, device="cpu").device == torch.device("cpu")
    meta = build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2), tok).to("meta")
    assert Engine(meta, tok).device == torch.device("meta")
    with pytest.raises(DeliberateError, match="model is on meta but device='cpu'.*move the model"):
        Engine(meta, tok, device="cpu")


def test_tiny_backend_device_and_dtype_args():
    m, tok = _model()
    b = get_backend("tiny", model=m, tokenizer=tok, **parse_kv(["device=cpu", "dtype=bfloat16"]))
    assert b.device == torch.device("cpu") and b.dtype == torch.bfloat16
    assert b.model.dtype == torch.bfloat16 and b.engine.device == torch.device("cpu")
    with pytest.raises(DeliberateError, match="tiny backend: dtype must be"):
        TinyBackend(model=m, tokenizer=tok, device="cpu", dtype="int4")
    with pytest.raises(DeliberateError, match="max_batch_size"):
        TinyBackend(model=m, tokenizer=tok, device="cpu", max_batch_size=0)


def _hf_tokenizer():
    """A byte-level HF fast tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_hf_backend_device_and_dtype_args():
    from transformers import LlamaConfig, LlamaForCausalLM

    from deliberate.models.hf import HFBackend

    hf_tok = _hf_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    if not CUDA:
        b = HFBackend(model=model, tokenizer=hf_tok)  # defaults on a CPU machine: today's behaviour
        assert (b.device, b.dtype, b.model.dtype, b.engine.max_batch_size) == ("cpu", torch.float32, torch.float32, 32)
    b = get_backend("hf", model=model, tokenizer=hf_tok, **parse_kv(["device=cpu", "dtype=bfloat16"]))
    assert b.model.dtype == torch.bfloat16 and b.engine.device == torch.device("cpu")
    out = b.generate(["Hello there"], SamplingParams(n=3, temperature=1.0, max_tokens=7, seed=1, logprobs=True))
    assert all(c.completion_tokens <= 7 and len(c.logprobs) == c.completion_tokens for c in out[0])
    with pytest.raises(DeliberateError, match="hf backend: dtype must be"):
        HFBackend(model=model, tokenizer=hf_tok, device="cpu", dtype="int8")
    with pytest.raises(DeliberateError, match="hf backend: .*device"):
        HFBackend(model=model, tokenizer=hf_tok, device="tpu")


# --------------------------------------------------------------------------- bf16 and the CUDA kernels on CPU


def test_bf16_on_cpu_valid_completions_exact_counts():
    m, tok = _model()
    b = TinyBackend(model=m, tokenizer=NoEOS(tok), device="cpu", dtype="bfloat16")
    r = LlamaRunner(b.model)
    assert r.kv_bytes_per_token == 2 * 2 * 2 * 8 * 2  # bf16 KV cache: 2 bytes per value
    for params in (SamplingParams(n=4, temperature=1.0, max_tokens=13, seed=1, logprobs=True),
                   SamplingParams(temperature=0, max_tokens=9, logprobs=True),
                   SamplingParams(n=2, temperature=0.8, top_p=0.9, max_tokens=11, seed=2, logprobs=True)):
        out = b.generate(PROMPTS, params)
        for row in out:
            assert len(row) == params.n
            for c in row:
                assert c.completion_tokens == params.max_tokens and c.finish_reason == "length"
                assert len(c.logprobs) == params.max_tokens
                assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
                assert c.prompt_tokens in {len(p) + 1 for p in PROMPTS}
    # the same seeds give the same bf16 samples, and samples do not depend on the batch around them
    p = SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=5)
    a = b.generate(PROMPTS, p)
    assert b.generate(PROMPTS[1:2], p)[0] == a[1]


def _left_padded(enc):
    """Token id lists as one left-padded batch: (ids, pad lengths, width)."""
    P = max(map(len, enc))
    ids = torch.zeros(len(enc), P, dtype=torch.long)
    pad = torch.tensor([P - len(e) for e in enc])
    for i, e in enumerate(enc):
        ids[i, P - len(e):] = torch.tensor(e)
    return ids, pad, P


def test_bf16_logits_are_float32_and_close_to_float32_model():
    m, tok = _model(seed=4)
    enc = [[tok.bos_token_id] + tok.encode(x) for x in PROMPTS]
    ids, pad, P = _left_padded(enc)
    with torch.no_grad():
        ref = LlamaRunner(m).start(ids, pad, P + 2)
        mb = build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2), tok, seed=4)
        rb = LlamaRunner(mb.to(torch.bfloat16).eval())
        got = rb.start(ids, pad, P + 2)
        assert got.dtype == torch.float32 and rb.k.dtype == torch.bfloat16
        assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()))


class _CudaKernelsRunner(LlamaRunner):
    """The Llama runner with the kernel choices it makes on CUDA (SDPA prefill, one row group)."""

    def __init__(self, model):
        super().__init__(model)
        self.sdpa, self.row_groups = True, 1


def test_cuda_kernel_choices_match_the_cpu_path_on_cpu():
    m, tok = _model(seed=6)
    prompts = PROMPTS * 6  # 18 rows: >= 16, so the CPU path splits into row groups
    enc = sorted(([tok.bos_token_id] + tok.encode(x) for x in prompts), key=len, reverse=True)
    ids, pad, P = _left_padded(enc)
    with torch.no_grad():
        a, b = LlamaRunner(m), _CudaKernelsRunner(m)
        assert torch.allclose(a.start(ids, pad, P + 3), b.start(ids, pad, P + 3), atol=1e-5)
        t = torch.arange(len(enc)) % 40 + 4
        assert torch.allclose(a.step(t), b.step(t), atol=1e-5)
    # through the engine: shared prompts, dropped rows, prefix cache
    params = SamplingParams(n=3, temperature=0, max_tokens=12, logprobs=True)
    ea, eb = Engine(m, tok), Engine(m, tok)
    eb.runner_cls = _CudaKernelsRunner
    for _ in range(2):  # second round: prefill from the prefix cache
        ra, rb = ea.generate(prompts, params), eb.generate(prompts, params)
        assert [[c.text for c in r] for r in ra] == [[c.text for c in r] for r in rb]
        for x, y in zip(ra, rb):
            assert x[0].logprobs == pytest.approx(y[0].logprobs, abs=1e-4)


def test_decode_reads_the_device_once_per_step(monkeypatch):
    """The hot loop's only device -> host reads are the sampled tokens + log-probs, one copy per step
    (on CUDA each is a sync); everything else the loop needs is kept on the host."""
    m, tok = _model()
    eng = Engine(m, NoEOS(tok), prefix_cache_bytes=0)
    calls = {"n": 0}
    orig_tolist, orig_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self):
        calls["n"] += 1
        return orig_tolist(self)

    def item(self):
        calls["n"] += 1
        return orig_item(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    counts = []
    for T in (5, 15):
        calls["n"] = 0
        eng.generate(PROMPTS * 6, SamplingParams(n=2, temperature=1.0, max_tokens=T, seed=0))
        counts.append(calls["n"])
    assert counts[1] - counts[0] == 10


# --------------------------------------------------------------------------- the GPU benchmark, smoke mode


def test_gpu_benchmark_script_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_engine
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    threads = torch.get_num_threads()
    out = tmp_path / "gpu_engine.json"
    try:
        rep = gpu_engine.main(["--device", "cpu", "--tiny", "--new", "6", "--repeats", "1", "--shapes", "4x1,2x2",
                               "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(rep))
    for key in ("device", "device_name", "dtype", "torch", "transformers", "params", "new", "results", "total_s"):
        assert key in data
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["new"] == 6
    assert [(r["prompts"], r["samples"], r["batch"]) for r in data["results"]] == [(4, 1, 4), (2, 2, 4)]
    for r in data["results"]:
        assert r["engine"]["tokens"] == r["generate"]["tokens"] == r["batch"] * 6
        assert r["engine"]["tok_per_s"] > 0 and r["generate"]["tok_per_s"] > 0 and r["ratio"] > 0
    assert gpu_engine.default_out().name == "gpu_engine.json"


# --------------------------------------------------------------------------- CUDA only


@needs_cuda
def test_recipe_finetune_trains_on_the_gpu_like_on_the_cpu(tmp_path):
    """``finetune`` (every tiny recipe's M-step) trains on CUDA when it is there: same batches and
    token counts as on the CPU, weights equal up to float rounding, the checkpoint loads anywhere."""
    from deliberate.models.tiny import load_tiny, save_tiny
    from deliberate.train.selfimprove import FinetuneSettings, finetune

    m, tok = _model()
    save_tiny(m, tok, tmp_path / "init")
    settings = FinetuneSettings(steps=5, batch_size=8, lr=1e-3)
    runs = {dev: finetune(tmp_path / "init", _finetune_pairs(), tmp_path / dev, settings, progress=False, device=dev)
            for dev in ("cpu", "cuda")}
    assert runs["cpu"][1] == runs["cuda"][1]
    assert json.loads((tmp_path / "cuda" / "finetune.json").read_text())["device"].startswith("cuda")
    (a, _), (b, _) = load_tiny(runs["cpu"][0]), load_tiny(runs["cuda"][0])
    assert next(b.parameters()).device.type == "cpu"
    flat = [torch.cat([p.detach().flatten() for p in x.parameters()]) for x in (m, a, b)]
    moved = (flat[1] - flat[0]).abs().mean()  # how far training moved the CPU weights
    assert moved > 0 and (flat[2] - flat[1]).abs().mean() < 0.05 * moved



@needs_cuda
def test_recipe_rollouts_on_the_gpu_match_the_cpu(tmp_path):
    """A recipe's rollouts from a checkpoint loaded on CUDA (what ``auto`` picks on a GPU machine) are
    the CPU's rollouts: same seeded random stream, float32 either way, so texts agree but for rare
    near-ties; greedy ones must agree exactly on this small model."""
    from deliberate.models.tiny import save_tiny
    from deliberate.tasks import get_task
    from deliberate.policy.tiny import load_sampler
    from deliberate.train.selfimprove import policy_rollouts

    m, tok = _model()
    save_tiny(m, tok, tmp_path / "policy")
    task = get_task("arith")
    probs = task.problems("train", 16, seed=0)
    spec = ("arith", {})
    assert next(load_sampler(tmp_path / "policy")[0].parameters()).device.type == "cuda"
    for temp, need in ((0.0, 1.0), (1.0, 0.9)):
        rows = {d: policy_rollouts(tmp_path / "policy", task, spec, probs, 4, temperature=temp, max_tokens=12, seed=1,
                                   progress=False, device=d) for d in ("cpu", "cuda")}
        texts = {d: [r.text for rs in v for r in rs] for d, v in rows.items()}
        same = sum(a == b for a, b in zip(texts["cpu"], texts["cuda"])) / len(texts["cpu"])
        assert same >= need, (temp, same)

@needs_cuda
def test_cuda_greedy_matches_transformers_generate_float32():
    m, tok = _model()
    b = TinyBackend(model=m, tokenizer=tok, device="cuda", dtype="float32")
    assert next(b.model.parameters()).device.type == "cuda" and b.engine.device.type == "cuda"
    out = b.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    for p, c in zip(PROMPTS, out):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(p)], device="cuda")
        ref = b.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id)]
        assert c[0].text == tok.decode(ref)


@needs_cuda
def test_cuda_bf16_engine_agrees_with_cpu_and_counts_exactly():
    m, tok = _model(seed=7)
    cpu = Engine(m, NoEOS(tok)).generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8, logprobs=True))
    mc = build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2), tok, seed=7)
    b = TinyBackend(model=mc, tokenizer=NoEOS(tok), device="cuda")
    if torch.cuda.get_device_capability() >= (8, 0):
        assert b.model.dtype == torch.bfloat16  # dtype=auto
    out = b.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_tokens=20, seed=1, logprobs=True))
    assert all(c.completion_tokens == 20 and len(c.logprobs) == 20 for r in out for c in r)
    g = b.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8, logprobs=True))
    # first greedy token's log-prob: bf16 on the GPU vs float32 on the CPU, up to bf16 noise
    for x, y in zip(g, cpu):
        assert x[0].logprobs[0] == pytest.approx(y[0].logprobs[0], abs=0.1)
    e = b.engine
    assert 1 <= e.rows_per_chunk(1 << 20) <= e.max_batch_size
