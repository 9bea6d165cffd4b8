"""Sampling engine vs ``transformers.generate`` on the same tiny model, batch 64, CPU.

    python benchmarks/engine_vs_generate.py [--model runs/quickstart/sft/model] [--batch 64] [--new 128]
                                            [--samples 1]

Both generate exactly ``--new`` tokens per row (EOS disabled) with temperature-1 sampling from the
same prompts: ``--batch / --samples`` distinct arith prompts, ``--samples`` samples of each (the
best-of-N / maj@k shape; `generate` gets the prompts repeated, as ``num_return_sequences`` does). The
runs alternate, and the script prints tokens/s for each and the median ratio. Without ``--model`` a freshly
initialised tiny model of the default size is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from deliberate.models.engine import Engine
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import load_or_init_tiny
from deliberate.tasks import get_task


class _NoEOS:
    """The tiny tokenizer with EOS switched off, so every row runs the full length."""

    def __init__(self, tok):
        self.tok, self.bos_token_id, self.eos_token_id = tok, tok.bos_token_id, None

    def encode(self, s):
        return self.tok.encode(s)

    def decode(self, ids):
        return self.tok.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--samples", type=int, default=1, help="samples per prompt (must divide --batch)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.samples < 1 or a.batch % a.samples:
        ap.error(f"--samples must be >= 1 and divide --batch (got {a.samples} and {a.batch})")
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_or_init_tiny(a.model)
    task = get_task("arith")
    prompts = [task.prompt(p) for p in task.problems("test", a.batch // a.samples, seed=0)]
    # no prefix cache: the same prompts repeat across runs, and generate gets no such reuse
    engine = Engine(model, _NoEOS(tok), max_batch_size=a.batch, prefix_cache_bytes=0)
    params = SamplingParams(n=a.samples, temperature=1.0, max_tokens=a.new, seed=0)

    # transformers.generate on the same left-padded batch
    enc = [[tok.bos_token_id] + tok.encode(p) for p in prompts for _ in range(a.samples)]
    P = max(map(len, enc))
    ids = torch.full((len(enc), P), tok.pad_token_id)
    mask = torch.zeros((len(enc), P), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, P - len(e):] = torch.tensor(e)
        mask[i, P - len(e):] = 1

    def run_engine():
        out = engine.generate(prompts, params)
        return sum(c.completion_tokens for cs in out for c in cs)

    def run_hf():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=a.new, min_new_tokens=a.new, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
        return int((out.shape[1] - P) * out.shape[0])

    # interleave the two (engine, generate, engine, generate ...) so drift in the machine's speed hits
    # both alike; report median tokens/s of each and the median of the per-pair ratios
    fns = {"engine": run_engine, "transformers.generate": run_hf}
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    ntok = {}
    for _ in range(a.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            ntok[name] = fn()
            times[name].append(time.perf_counter() - t0)
    res = {}
    for name in fns:
        med = statistics.median(times[name])
        res[name] = {"tokens": ntok[name], "median_s": med, "tok_per_s": ntok[name] / med}
        print(f"{name:24s} {ntok[name]} tokens  median {med:.2f}s  {ntok[name] / med:.0f} tok/s", flush=True)
    pair = [h / e for e, h in zip(times["engine"], times["transformers.generate"])]
    ratio = statistics.median(pair)
    print(f"ratio engine / transformers.generate = {ratio:.2f}x  (median of {a.repeats} interleaved pairs, "
          f"range {min(pair):.2f}-{max(pair):.2f}; batch {a.batch} = {len(prompts)} prompts x {a.samples} "
          f"samples, {a.new} new tokens, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()})")
    print(json.dumps({"batch": a.batch, "samples": a.samples, "new": a.new, "ratio": round(ratio, 3), "pair_ratios": [round(x, 3) for x in pair], **res}))


if __name__ == "__main__":
    main()
