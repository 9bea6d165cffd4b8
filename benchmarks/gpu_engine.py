"""Sampling engine vs ``transformers.generate`` on a GPU: a ~135M-parameter Llama in bf16, batch 64.

    python benchmarks/gpu_engine.py                          # CUDA, bf16, writes $OUT/gpu_engine.json
    python benchmarks/gpu_engine.py --device cpu --tiny      # smoke test anywhere (tiny model, CPU)

Self-contained for a machine with no network: the model is a randomly initialised ``LlamaForCausalLM``
of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocab 49152) and the
tokenizer is byte-level, so nothing is downloaded. Speed does not depend on the weights, but random
weights would stop at a random EOS: EOS is switched off on both sides, so every row generates exactly
``--new`` tokens. Method as in ``benchmarks/engine_vs_generate.py``: temperature-1 sampling, the same
prompts (arith task prompts, left-padded for ``generate``), one warm-up run of each excluded, then
``--repeats`` interleaved pairs (engine, generate, ...), each timed between ``torch.cuda.synchronize()``
calls; tokens/s is generated tokens / median seconds, the ratio the median of per-pair ratios. Batch
shapes (``--shapes``, prompts x samples): 64 x 1 (64 distinct prompts) and 4 x 16 (best-of-N; ``generate``
gets each prompt repeated 16 times, as ``num_return_sequences`` does). Prints a markdown table with the
GPU's name and the torch / transformers versions, and writes JSON to ``--out`` (default
``$OUT/gpu_engine.json`` when ``OUT`` is set, else ``runs/gpu_engine.json``). If the warm-up shows the
timed runs would overrun ``--budget-s``, fewer repeats are run (and the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import deliberate  # noqa: F401
except ModuleNotFoundError:  # a bare copy of the repo: use its sources
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deliberate.models.engine import Engine, count_parameters, resolve_device, resolve_dtype
from deliberate.models.sampling import SamplingParams
from deliberate.tasks import get_task

#: SmolLM2-135M's shape
FULL = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 2048, "rope_theta": 100000.0}
#: for --tiny: seconds on a CPU
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 1024, "rope_theta": 10000.0}
PAD, BOS, OFFSET = 0, 1, 3  # byte b is token b + OFFSET


class ByteTokenizer:
    """Bytes as tokens (ids 3..258); other ids (a random model samples any of the vocabulary) decode
    to nothing. No EOS, so rows always run ``max_tokens``."""

    bos_token_id = BOS
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - OFFSET for i in ids if OFFSET <= i < OFFSET + 256).decode("utf-8", errors="replace")


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**(TINY if tiny else FULL), tie_word_embeddings=True, rms_norm_eps=1e-5,
                      bos_token_id=BOS, eos_token_id=None, pad_token_id=PAD)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: fast for 135M parameters on a GPU
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_shape(model, tok, device, n_prompts: int, samples: int, new: int, repeats: int, deadline: float):
    task = get_task("arith")
    prompts = [task.prompt(p) for p in task.problems("test", n_prompts, seed=0)]
    batch = n_prompts * samples
    # no prefix cache: the same prompts repeat across runs, and generate gets no such reuse
    engine = Engine(model, tok, max_batch_size=batch, prefix_cache_bytes=0)
    params = SamplingParams(n=samples, temperature=1.0, max_tokens=new, seed=0)

    enc = [[BOS] + tok.encode(p) for p in prompts for _ in range(samples)]
    P = max(map(len, enc))
    ids = torch.full((len(enc), P), PAD)
    mask = torch.zeros((len(enc), P), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, P - len(e):] = torch.tensor(e)
        mask[i, P - len(e):] = 1
    ids, mask = ids.to(device), mask.to(device)

    def run_engine() -> int:
        out = engine.generate(prompts, params)
        n = sum(c.completion_tokens for cs in out for c in cs)
        if n != batch * new:
            raise RuntimeError(f"engine generated {n} tokens, expected {batch} x {new}")
        return n

    def run_hf() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                                 pad_token_id=PAD)
        n = int((out.shape[1] - P) * out.shape[0])
        if n != batch * new:
            raise RuntimeError(f"generate produced {n} tokens, expected {batch} x {new}")
        return n

    fns = {"engine": run_engine, "transformers.generate": run_hf}
    warm = {}
    for name, fn in fns.items():  # warm-up (allocator, kernels, autotuning): not timed in the results
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        warm[name] = time.perf_counter() - t0
    # fit the budget: each timed pair costs about one warm-up pair
    fit = int(max(0.0, deadline - time.perf_counter()) // max(1e-9, sum(warm.values())))
    reps = max(1, min(repeats, fit))
    times: dict[str, list[float]] = {k: [] for k in fns}
    ntok: dict[str, int] = {}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            ntok[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    res = {}
    for name in fns:
        med = statistics.median(times[name])
        res[name] = {"tokens": ntok[name], "median_s": round(med, 4), "tok_per_s": round(ntok[name] / med, 1),
                     "times_s": [round(t, 4) for t in times[name]], "warmup_s": round(warm[name], 3)}
    pair = [h / e for e, h in zip(times["engine"], times["transformers.generate"])]
    return {"prompts": n_prompts, "samples": samples, "batch": batch, "prompt_tokens_max": P, "new": new,
            "repeats": reps, "repeats_requested": repeats, "ratio": round(statistics.median(pair), 3),
            "pair_ratios": [round(x, 3) for x in pair], "engine": res["engine"],
            "generate": res["transformers.generate"]}


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition("x")
        out.append((int(a), int(b or 1)))
    if not out or any(p < 1 or s < 1 for p, s in out):
        raise ValueError(f"bad --shapes {text!r} (want e.g. 64x1,4x16)")
    return out


def default_out() -> Path:
    env = os.environ.get("OUT")
    return Path(env, "gpu_engine.json") if env else Path("runs", "gpu_engine.json")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on Ampere+ GPUs, else float32), bfloat16, ...")
    ap.add_argument("--tiny", action="store_true", help="a very small model (smoke test, e.g. on CPU)")
    ap.add_argument("--shapes", default="64x1,4x16", help="batch shapes, prompts x samples (default 64x1,4x16)")
    ap.add_argument("--new", type=int, default=256, help="new tokens per row (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed pairs per shape (default 3)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="cut repeats to stay within this (default 200)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default $OUT/gpu_engine.json or runs/)")
    a = ap.parse_args(argv)
    try:
        shapes = _shapes(a.shapes)
    except ValueError as e:
        ap.error(str(e))
    if a.new < 1 or a.repeats < 1:
        ap.error("--new and --repeats must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    device = resolve_device(a.device, what="gpu_engine")
    dtype = resolve_dtype(a.dtype, device, what="gpu_engine")
    out_path = a.out or default_out()

    import transformers

    model = build_model(a.tiny, device, dtype)
    tok = ByteTokenizer()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                            platform.machine())
    info = {"device": str(device), "device_name": name, "dtype": str(dtype).replace("torch.", ""),
            "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "model": "tiny Llama (random init)" if a.tiny else "Llama, SmolLM2-135M shape (random init)",
            "params": count_parameters(model), "config": TINY if a.tiny else FULL,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "sampling": "temperature 1.0, top_p 1.0, EOS off (every row runs --new tokens)"}
    print(f"# engine vs transformers.generate on {name} ({info['device']}, {info['dtype']}): "
          f"{info['params'] / 1e6:.1f}M params, torch {torch.__version__}, transformers {transformers.__version__}"
          f", CUDA {torch.version.cuda}", flush=True)
    deadline = t_start + a.budget_s
    results = []
    for k, (n_prompts, samples) in enumerate(shapes):
        # share what is left of the budget among the shapes still to run
        left = max(0.0, deadline - time.perf_counter())
        r = bench_shape(model, tok, device, n_prompts, samples, a.new, a.repeats,
                        time.perf_counter() + left / (len(shapes) - k))
        results.append(r)
        print(f"  {n_prompts} x {samples}: engine {r['engine']['tok_per_s']:.0f} tok/s, generate "
              f"{r['generate']['tok_per_s']:.0f} tok/s, ratio {r['ratio']:.2f}x ({r['repeats']} pairs)", flush=True)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    report = {**info, "new": a.new, "results": results, "peak_mem_bytes": peak,
              "total_s": round(time.perf_counter() - t_start, 2)}
    print()
    print(f"{name}, {info['dtype']}, {info['params'] / 1e6:.1f}M-param Llama (random init), {a.new} new tokens "
          f"per row, sampling at temperature 1; torch {torch.__version__}, transformers {transformers.__version__}")
    print()
    print("| batch (prompts x samples) | engine tok/s | transformers.generate tok/s | engine / generate |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch']} ({r['prompts']} x {r['samples']}) | {r['engine']['tok_per_s']:.0f} | "
              f"{r['generate']['tok_per_s']:.0f} | {r['ratio']:.2f}x |")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out_path} ({report['total_s']:.0f}s in all)")
    return report


if __name__ == "__main__":
    main()
