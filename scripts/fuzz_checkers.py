#!/usr/bin/env python3
"""Fuzz every answer checker: generated completions / answers in, no escaped exception, no hang out.

    python scripts/fuzz_checkers.py --examples 10000            # >= 10k inputs per checker
    python scripts/fuzz_checkers.py --examples 500 --checkers boxed,countdown --seed 3

Checkers (one entry of ``CHECKERS`` each; every one runs the task's extraction *and* its check):

* ``numeric``   - extract_last_number, parse_number (both modes), canonical_number, normalize_answer,
                  numbers_equal, gsm8k's numeric_extract;
* ``boxed``     - extract_answer, final_boxed, normalize_latex;
* ``math_verify`` - math_equal(pred, gold) (math_verify in its worker process, 2 s timeout);
* ``countdown`` - CountdownTask.extract_answer / is_correct / step_correct, check_expression;
* ``arith``, ``addition`` - the task's extract_answer / is_correct / step_correct.

Inputs come from a seeded generator (``make_input``): random characters from a LaTeX-heavy alphabet,
answer templates (``\\boxed{}``, ``Answer:``, ``####``, "The answer is"), numbers (up to 5000 digits,
commas, decimals, fractions, unicode minus), LaTeX (fractions, roots, power towers such as
``9^{9^{9^9}}``, deep nesting), long repetitions (up to ~200 KB) and unbalanced braces.

Each checker runs in a child process; the parent is a per-input wall-clock watchdog: an input that
runs longer than ``--hang-s`` (default 10 s; math_verify's own timeout is 2 s) is counted as a hang,
the child is killed and the run goes on from the next input. Prints one line per checker (inputs,
hangs, escaped exceptions, slowest input) and the total; exit status 1 when anything hung or raised.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import time
import traceback

# --------------------------------------------------------------------------------------------
# input generator
# --------------------------------------------------------------------------------------------

ALPHABET = "0123456789 \n\t+-*/=^_{}()[]\\$.,:;%!?<>|&~'\"#@abcxyzABXYZ−×÷√π²½\u200b"
WORDS = ["Answer:", "answer:", "The answer is", "the final answer is", "####", "\\boxed", "\\boxed{", "\\fbox",
         "}", "{", "\\frac", "\\dfrac", "\\sqrt", "\\text{", "\\left(", "\\right)", "\\pi", "\\infty", "$", "\\$",
         "=", "or", "and", "dollars", "%", "\\%", "\n", " ", ",", ".", "-", "**", "\\{", "\\}", "^{", "x", "\\cdot"]


def _number(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.3:
        return str(rng.randint(-1000, 1000))
    if k < 0.4:
        return str(rng.randint(0, 10 ** rng.randint(1, 60)))
    if k < 0.45:
        return "".join(rng.choice("0123456789") for _ in range(rng.choice([4000, 4301, 5000, 20000])))
    if k < 0.55:
        return f"{rng.randint(0, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}"
    if k < 0.65:
        return f"{rng.randint(-99, 99)}.{rng.randint(0, 10 ** 6)}"
    if k < 0.75:
        return f"{rng.randint(-50, 50)}/{rng.randint(-3, 50)}"
    if k < 0.8:
        return rng.choice(["−7", "1e5", "1E-3", "nan", "inf", "-0", ".5", "5.", "0x1F", "1_000", "٣", "١٢"])
    return str(rng.randint(0, 100))


def _latex(rng: random.Random, depth: int = 0) -> str:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([_number(rng), "x", "y", "\\pi", "e", "i", "\\infty", "n"])
    k = rng.randrange(12)
    a = _latex(rng, depth + 1)
    b = _latex(rng, depth + 1)
    if k == 0:
        return f"\\frac{{{a}}}{{{b}}}"
    if k == 1:
        return f"\\sqrt{{{a}}}"
    if k == 2:
        return f"{a}^{{{b}}}"
    if k == 3:
        return rng.choice(["9^{9^{9^9}}", "10^{10^{10^{10}}}", "(x+1)^{100000}", "x^{10^{9}}+1", "2^{2^{2^{2^{2}}}}",
                           "\\frac{1}{" * 30 + "2" + "}" * 30, "(" * 150 + "1" + ")" * 150, "10!!!!", "99999!"])
    if k == 4:
        return f"{a} {rng.choice('+-*/=<>')} {b}"
    if k == 5:
        return f"\\left({a}, {b}\\right)"
    if k == 6:
        return f"\\text{{{rng.choice(['or', 'and', 'dollars', 'cm', 'x', ''])}}} {a}"
    if k == 7:
        return f"\\{{{a}, {b}\\}}"
    if k == 8:
        return f"[{a}, {b})"
    if k == 9:
        return f"{a} \\text{{ or }} {b}"
    if k == 10:
        return f"\\begin{{pmatrix}} {a} & {b} \\end{{pmatrix}}"
    return f"{a}\\%"


def _chars(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def make_input(rng: random.Random) -> str:
    """One fuzz input: a would-be completion or answer string."""
    k = rng.random()
    if k < 0.15:
        return _chars(rng, rng.randint(0, 200))
    if k < 0.3:
        return " ".join(rng.choice(WORDS + [_number(rng)]) for _ in range(rng.randint(1, 40)))
    if k < 0.5:
        tmpl = rng.choice(["\\boxed{%s}", "$\\boxed{%s}$", "Answer: %s", "#### %s", "The answer is %s.",
                           "**Answer:** %s", "\\boxed %s", "\\fbox{%s}", "%s"])
        body = _latex(rng) if rng.random() < 0.6 else _number(rng)
        prefix = _chars(rng, rng.randint(0, 40)) + ("\n" if rng.random() < 0.5 else "")
        return prefix + tmpl % body
    if k < 0.6:  # several answers / hedges
        parts = [rng.choice(["\\boxed{%s}", "Answer: %s\n", "%s, "])
                 % (_latex(rng) if rng.random() < 0.5 else _number(rng)) for _ in range(rng.randint(2, 6))]
        return " ".join(parts)
    if k < 0.7:  # long repetitions (quadratic-time traps)
        unit = rng.choice(["\\boxed{", "{", "}", " ", "\n", "Answer: a ", "1,", "1 ", "-", "9", "\\", "$", "a" * 7,
                           "the answer is ", "#### ", "1.", "(", "\\frac{"])
        n = rng.choice([100, 1000, 10_000, 50_000])
        tail = rng.choice(["", "x", "b\n", "}", "7", "Answer: 7"])
        return rng.choice(["", "Answer: ", "\\boxed{", "the answer is "]) + unit * n + tail
    if k < 0.8:  # arithmetic lines
        return "\n".join(f"{_number(rng)}{rng.choice('+-*/x×÷')}{_number(rng)}={_number(rng)}"
                         for _ in range(rng.randint(1, 6))) + f"\nAnswer: {_number(rng)}"
    if k < 0.9:  # countdown-like expressions
        nums = [str(rng.randint(0, 120)) for _ in range(rng.randint(1, 8))]
        expr = nums[0]
        for v in nums[1:]:
            expr = rng.choice(["{a}{o}{b}", "({a}){o}{b}", "{b}{o}({a})"]).format(a=expr, o=rng.choice("+-*/x÷"), b=v)
        if rng.random() < 0.2:
            expr = "(" * rng.randint(50, 300) + expr + ")" * rng.randint(50, 300)
        if rng.random() < 0.2:
            expr += " = " + rng.choice(nums)
        return rng.choice(["Answer: %s", "\\boxed{%s}", "%s", "Answer: %s\nAnswer: %s"]).replace("%s", expr)
    text = _chars(rng, rng.randint(0, 80))  # mutate a valid-looking completion
    pos = rng.randint(0, len(text))
    return text[:pos] + rng.choice(WORDS) + _latex(rng) + text[pos:]


# --------------------------------------------------------------------------------------------
# checkers
# --------------------------------------------------------------------------------------------


def _golds(rng: random.Random) -> str:
    return rng.choice(["7", "0", "-3", "\\frac{1}{2}", "1000", "x+1", "\\sqrt{2}", "(3, \\frac{\\pi}{2})", "\\infty",
                       "2x", "\\{1, 2\\}", "0.25", "\\text{(C)}", "[0, 1)", "5\\sqrt{2}", "10\\%"])


def check_numeric(text: str, rng: random.Random) -> None:
    from deliberate.tasks import grading
    from deliberate.tasks.gsm8k import numeric_extract

    grading.extract_last_number(text)
    grading.parse_number(text)
    grading.parse_number(text, units=False)
    grading.canonical_number(text)
    grading.normalize_answer(text)
    grading.numbers_equal(text, rng.choice(["7", "1000", "-3", "0.5", text]))
    for fallback in (True, False):
        ans = numeric_extract(text, fallback)
        assert ans is None or isinstance(ans, str)
        grading.numbers_equal(ans, "42")


def check_boxed(text: str, rng: random.Random) -> None:
    from deliberate.tasks import grading

    ans = grading.extract_answer(text)
    assert ans is None or (isinstance(ans, str) and ans)
    has, boxed = grading.final_boxed(text)
    assert (not has and boxed is None) or has
    grading.normalize_latex(text)
    grading.normalize_latex(ans)


def check_math_verify(text: str, rng: random.Random) -> None:
    from deliberate.tasks import grading

    gold = _golds(rng)
    pred = grading.extract_answer(text) if rng.random() < 0.5 else text
    assert grading.math_equal(pred, gold, timeout=2.0) in (True, False)


def check_countdown(text: str, rng: random.Random) -> None:
    from deliberate.tasks.countdown import CountdownTask, check_expression
    from deliberate.types import Problem

    task = CountdownTask()
    nums = [rng.randint(1, 100) for _ in range(4)]
    target = rng.randint(0, 200)
    p = Problem(id="f", question="", answer=str(target), metadata={"numbers": nums, "target": target})
    ans = task.extract_answer(text)
    assert task.is_correct(ans, p) in (True, False)
    assert check_expression(text, nums, target) in (True, False)
    task.normalize(ans)
    task.step_correct(p, task.split_steps(text))


def _task_check(name: str, text: str, rng: random.Random) -> None:
    from deliberate.tasks.base import get_task

    task = get_task(name)
    p = _problem_cache(name)[rng.randrange(8)]
    ans = task.extract_answer(text)
    assert task.is_correct(ans, p) in (True, False)
    task.normalize(ans)
    task.step_correct(p, task.split_steps(text))


_PROBLEMS: dict = {}


def _problem_cache(name: str):
    if name not in _PROBLEMS:
        from deliberate.tasks.base import get_task

        _PROBLEMS[name] = get_task(name).problems("test", n=8, seed=0)
    return _PROBLEMS[name]


def check_arith(text: str, rng: random.Random) -> None:
    _task_check("arith", text, rng)


def check_addition(text: str, rng: random.Random) -> None:
    _task_check("addition", text, rng)


CHECKERS = {
    "numeric": check_numeric,
    "boxed": check_boxed,
    "math_verify": check_math_verify,
    "countdown": check_countdown,
    "arith": check_arith,
    "addition": check_addition,
}


def input_for(checker: str, seed: int, i: int) -> tuple[str, random.Random]:
    """Input ``i`` of a run (deterministic in ``(checker, seed, i)``) and the rng its check uses."""
    rng = random.Random(f"{checker}:{seed}:{i}")
    return make_input(rng), rng


# --------------------------------------------------------------------------------------------
# runner: a child process per checker, the parent a per-input watchdog
# --------------------------------------------------------------------------------------------


def _child(checker: str, seed: int, start: int, end: int, current, done, errors) -> None:
    import logging

    logging.disable(logging.WARNING)
    fn = CHECKERS[checker]
    for i in range(start, end):
        text, rng = input_for(checker, seed, i)
        current.value = i
        t0 = time.monotonic()
        try:
            fn(text, rng)
        except Exception as e:  # an escaped exception: the finding this script looks for
            errors.put((i, f"{type(e).__name__}: {e}"[:300], text[:200], traceback.format_exc()[-800:]))
        dt = time.monotonic() - t0
        with done.get_lock():
            done.value = i + 1
        if dt > 1.0:
            errors.put((i, f"SLOW {dt:.2f}s", text[:200], ""))
    errors.put(None)


def run_checker(checker: str, n: int, seed: int, hang_s: float) -> dict:
    ctx = mp.get_context("spawn")
    stats = {"checker": checker, "inputs": 0, "hangs": 0, "exceptions": 0, "slow": 0, "examples": []}
    start = 0
    t_start = time.monotonic()
    while start < n:
        current, done = ctx.Value("q", start), ctx.Value("q", start)
        errors = ctx.Queue()
        proc = ctx.Process(target=_child, args=(checker, seed, start, n, current, done, errors), daemon=True)
        proc.start()
        last_i, last_t, finished = -1, time.monotonic(), False
        while True:
            while True:  # drain reports
                try:
                    item = errors.get(timeout=0.05)
                except Exception:
                    break
                if item is None:
                    finished = True
                    break
                i, msg, text, tb = item
                if msg.startswith("SLOW"):
                    stats["slow"] += 1
                else:
                    stats["exceptions"] += 1
                if len(stats["examples"]) < 20:
                    stats["examples"].append((i, msg, text, tb))
            if finished:
                break
            i = current.value
            if i != last_i:
                last_i, last_t = i, time.monotonic()
            elif done.value <= i and time.monotonic() - last_t > hang_s:  # stuck on input i
                stats["hangs"] += 1
                text, _ = input_for(checker, seed, i)
                stats["examples"].append((i, f"HANG > {hang_s:g}s", text[:200], ""))
                proc.kill()
                break
            if not proc.is_alive() and not finished:
                try:  # a last report may still be in the queue
                    item = errors.get(timeout=1.0)
                    if item is None:
                        finished = True
                        break
                    errors.put(item)
                    continue
                except Exception:
                    pass
                stats["exceptions"] += 1  # the child died (a crash that is not a Python exception)
                stats["examples"].append((done.value, f"CHILD DIED (exit {proc.exitcode})", "", ""))
                last_i = done.value
                break
        proc.join(5)
        start = n if finished else last_i + 1
    stats["inputs"] = n
    stats["wall_s"] = time.monotonic() - t_start
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="inputs per checker (default 10000)")
    ap.add_argument("--checkers", default=",".join(CHECKERS), help="comma-separated subset of " + ",".join(CHECKERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=10.0, help="per-input wall-clock watchdog (seconds)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.checkers.split(",") if c.strip()]
    bad = [c for c in names if c not in CHECKERS]
    if bad:
        ap.error(f"unknown checker(s) {bad}; valid: {', '.join(CHECKERS)}")
    total = {"inputs": 0, "hangs": 0, "exceptions": 0, "slow": 0}
    print(f"{'checker':<12} {'inputs':>7} {'hangs':>6} {'exceptions':>10} {'slow>1s':>8} {'wall_s':>8}", flush=True)
    for name in names:
        s = run_checker(name, args.examples, args.seed, args.hang_s)
        for k in total:
            total[k] += s[k]
        print(f"{name:<12} {s['inputs']:>7} {s['hangs']:>6} {s['exceptions']:>10} {s['slow']:>8} {s['wall_s']:>8.1f}",
              flush=True)
        shown = sorted(s["examples"], key=lambda e: e[1].startswith("SLOW"))[:5]  # hangs and exceptions first
        for i, msg, text, tb in shown:
            print(f"    #{i}: {msg} | input {text[:120]!r}", flush=True)
            if tb and os.environ.get("FUZZ_TRACEBACKS"):
                print("      " + tb.replace("\n", "\n      "), flush=True)
    print(f"{'TOTAL':<12} {total['inputs']:>7} {total['hangs']:>6} {total['exceptions']:>10} {total['slow']:>8}",
          flush=True)
    return 1 if total["hangs"] or total["exceptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
