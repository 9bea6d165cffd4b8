"""Prefix caching in a simulated step-level beam search, cache on vs off, on the tiny model (CPU).

    python benchmarks/prefix_cache.py [--model runs/quickstart/sft/model] [--problems 16] [--beams 4]
                                      [--expand 4] [--rounds 5] [--max-tokens 24] [--repeats 2]

Each round generates one line (stop "\\n") for every ``question + partial solution`` — ``beams x
expand`` samples per question (round 1: all of them from the bare question) — and keeps the
``beams`` highest-scoring partial solutions (sum of token log-probs) as
``prefix + step + "\\n"``: the call pattern of step-level beam search. Runs with the prefix cache
on and off alternate (fresh engine each run). Printed per mode: wall time, generated tokens,
prompt tokens computed in prefill (and reused from the cache), computed prompt tokens per
generated token, and the speedup. Without ``--model`` a freshly initialised default tiny model is
used (it writes gibberish, but steps still end at "\\n" or ``--max-tokens``).
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


def beam_search(engine: Engine, questions: list[str], beams: int, expand: int, rounds: int,
                max_tokens: int) -> dict:
    """Run the simulated search; returns token counts and the final beams (to compare on vs off)."""
    engine.stats.reset()
    state = [[("", 0.0)] for _ in questions]  # per question: (partial solution, score)
    generated = 0
    for r in range(rounds):
        prompts, owner = [], []
        for qi, (q, bs) in enumerate(zip(questions, state)):
            for prefix, score in bs:
                prompts.append(q + prefix)
                owner.append((qi, prefix, score))
        n = beams * expand // len(state[0]) if r == 0 else expand
        out = engine.generate(prompts, SamplingParams(n=n, temperature=0.8, max_tokens=max_tokens, stop=("\n",),
                                                      seed=r, logprobs=True))
        cands: list[list[tuple[str, float]]] = [[] for _ in questions]
        for (qi, prefix, score), comps in zip(owner, out):
            for c in comps:
                generated += c.completion_tokens
                cands[qi].append((prefix + c.text + "\n", score + sum(c.logprobs)))
        for qi, cs in enumerate(cands):
            seen, keep = set(), []
            for text, score in sorted(cs, key=lambda x: -x[1]):
                if text not in seen:
                    seen.add(text)
                    keep.append((text, score))
            state[qi] = keep[:beams]
    s = engine.stats
    return {"generated_tokens": generated, "prefill_tokens": s.prefill_tokens, "cached_tokens": s.cached_tokens,
            "decode_tokens": s.decode_tokens, "forward_calls": s.forward_calls,
            "final": [[t for t, _ in bs] for bs in state]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="tiny checkpoint dir (default: fresh default-size model)")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--expand", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=64, help="engine max_batch_size")
    ap.add_argument("--repeats", type=int, default=2, help="alternating on/off pairs after one warm-up")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_or_init_tiny(a.model)
    task = get_task("arith")
    questions = [task.prompt(p) for p in task.problems("test", a.problems)]

    def run(cache_on: bool) -> tuple[float, dict]:
        eng = Engine(model, tok, max_batch_size=a.batch, prefix_cache_bytes=256 * 2**20 if cache_on else 0)
        t0 = time.perf_counter()
        res = beam_search(eng, questions, a.beams, a.expand, a.rounds, a.max_tokens)
        return time.perf_counter() - t0, res

    run(True)  # warm-up
    times: dict[str, list[float]] = {"on": [], "off": []}
    last: dict[str, dict] = {}
    for _ in range(a.repeats):
        for mode in ("on", "off"):
            dt, last[mode] = run(mode == "on")
            times[mode].append(dt)
    summary = {}
    for mode in ("off", "on"):
        r, med = last[mode], statistics.median(times[mode])
        ratio = r["prefill_tokens"] / r["generated_tokens"]
        summary[mode] = {"median_s": round(med, 3), "times_s": [round(t, 3) for t in times[mode]],
                         **{k: v for k, v in r.items() if k != "final"}, "prefill_per_generated": round(ratio, 3)}
        print(f"cache {mode:3s}: {med:6.2f}s (median of {len(times[mode])})  generated {r['generated_tokens']}  "
              f"prefill computed {r['prefill_tokens']}  reused {r['cached_tokens']}  "
              f"prefill/generated {ratio:.2f}", flush=True)
    pairs = [off / on for on, off in zip(times["on"], times["off"])]
    same = last["on"]["final"] == last["off"]["final"]
    print(f"speedup {statistics.median(pairs):.2f}x (paired runs: {', '.join(f'{x:.2f}' for x in pairs)}); "
          f"final beams identical on vs off: {same}; {a.problems} problems, {a.beams} beams x {a.expand} "
          f"expansions, {a.rounds} rounds, max {a.max_tokens} tokens/step, batch {a.batch}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(json.dumps({"speedup": round(statistics.median(pairs), 3), "identical": same, **summary}))


if __name__ == "__main__":
    main()
