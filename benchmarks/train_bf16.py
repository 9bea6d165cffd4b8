"""Training throughput of the tiny Llama on this machine: float32 vs bfloat16 autocast (``--bf16``).

    python benchmarks/train_bf16.py [--threads 2] [--batch 64] [--seq 140] [--steps 3]

For each model size (the default 0.8M, 3.2M, and the 10.9M Stream-of-Search size) it times full
optimizer steps (forward, backward, AdamW) on random token batches of ``--batch`` x ``--seq``, with the
same code path ``finetune`` uses (:func:`deliberate.train.common.supervised_step`), and prints tokens/s
for both precisions, their ratio, and the hours 15M training tokens take. Speed does not depend on the
weights or the data, so random tokens stand in for real examples.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.train.common import supervised_step

SIZES = ((128, 4, 4), (256, 4, 4), (384, 6, 6))  # (d_model, layers, heads): 0.8M, 3.2M, 10.9M parameters


def tokens_per_second(cfg: TinyConfig, bf16: bool, batch: int, seq: int, steps: int) -> tuple[float, int]:
    model = build_tiny_model(cfg, CharTokenizer(), seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, 60, (batch, seq))
    b = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}
    supervised_step(model, opt, b, 1e-3, 1.0, bf16=bf16)  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        supervised_step(model, opt, b, 1e-3, 1.0, bf16=bf16)
        times.append(time.perf_counter() - t)
    return batch * seq / statistics.median(times), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=140)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"batch {a.batch} x {a.seq} tokens")
    for d, layers, heads in SIZES:
        cfg = TinyConfig(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads, max_len=max(256, a.seq))
        f32, n = tokens_per_second(cfg, False, a.batch, a.seq, a.steps)
        b16, _ = tokens_per_second(cfg, True, a.batch, a.seq, a.steps)
        print(f"{n / 1e6:5.1f}M params: float32 {f32:8,.0f} tok/s, bf16 autocast {b16:8,.0f} tok/s, "
              f"ratio {b16 / f32:.2f}x; 15M tokens: {15e6 / f32 / 3600:.1f} h vs {15e6 / b16 / 3600:.1f} h")


if __name__ == "__main__":
    main()
