"""100 concurrent requests against ``deliberate serve`` over the tiny model: this tree's server vs an
earlier commit's (by default the hand-written one-request-at-a-time server this replaced).

    python benchmarks/serve_concurrency.py [--baseline 40120f4] [--requests 100] [--max-tokens 128]
                                           [--repeats 2] [--threads 1]

Each server runs in its own child process (``python -m deliberate serve``-equivalent: an untrained
default-size tiny model, the same weights in both) with the source tree on ``PYTHONPATH``; the
baseline tree is ``git archive``d from ``--baseline`` into a temporary folder. The client is the
``openai`` backend of this tree with ``concurrency`` = the number of requests: every request is one
distinct prompt, ``n=1``, one shared seed, which is how sweeps and evals drive a server. Printed:
wall seconds for each server (runs alternate, ``--repeats`` each, median shown), the speed-up
ratio, and how many samples are identical (the seeding contract says all; batching can only move
float noise in the log-probs). ``--threads``: torch threads of each server process (1 by default:
on a shared 2-core machine OpenMP barriers across two threads make timings erratic).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deliberate.models.openai import OpenAIBackend
from deliberate.models.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]

SERVER = """
from deliberate.models.server import make_server
from deliberate.models.tiny import TinyBackend, load_or_init_tiny
model, tok = load_or_init_tiny(None)
server = make_server(TinyBackend(model=model, tokenizer=tok, device="cpu"), port=0, model_name="tiny")
print("deliberate serve: at", server.base_url, flush=True)
server.serve_forever()
"""


def run(src: Path, prompts: list[str], params: SamplingParams, threads: int) -> tuple[float, list[str]]:
    """Wall seconds for all prompts at full concurrency against a server built from ``src``, and the texts."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        url = proc.stdout.readline().split(" at ")[1].split()[0]
        client = OpenAIBackend(url, model="tiny", concurrency=len(prompts), timeout=600, max_retries=0)
        client.generate(prompts[:1], params)  # warm-up: first forward pass, connection set-up
        t0 = time.perf_counter()
        out = client.generate(prompts, params)
        wall = time.perf_counter() - t0
        client.close()
        return wall, [row[0].text for row in out]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="40120f4", help="git revision of the server to compare against")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    prompts = [f"Q: Mia has {i} pens. She finds {i % 7 + 2} more. How many pens now?\nA:" for i in range(args.requests)]
    params = SamplingParams(n=1, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    walls: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for _ in range(args.repeats):
            wall, texts_before = run(Path(tmp) / "src", prompts, params, args.threads)
            walls["before"].append(wall)
            wall, texts_after = run(ROOT / "src", prompts, params, args.threads)
            walls["after"].append(wall)
            print(f"  run: baseline {walls['before'][-1]:.1f} s, this tree {wall:.1f} s", flush=True)
    before, after = statistics.median(walls["before"]), statistics.median(walls["after"])
    same = sum(a == b for a, b in zip(texts_before, texts_after))
    print(f"{args.requests} concurrent requests (n=1, max_tokens={args.max_tokens}) against the tiny model, "
          f"{args.threads} torch thread(s) per server, median of {args.repeats}")
    print(f"  baseline {args.baseline}: {before:.1f} s")
    print(f"  this tree:        {after:.1f} s")
    print(f"  ratio: {before / after:.1f}x faster; identical samples: {same}/{args.requests}")


if __name__ == "__main__":
    main()
