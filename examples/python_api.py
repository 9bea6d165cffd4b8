"""The Python API in one page: a task, a backend, sampling, a verifier, search, metrics.

    python examples/python_api.py runs/quickstart/sft/model      # the quickstart's tiny model
    python examples/python_api.py smollm2 --backend hf            # or any HF checkpoint / .gguf

Every CLI command is built from these pieces; a notebook can use them directly.
"""

import argparse

from deliberate.eval.metrics import bootstrap_ci, maj_at_k, pass_at_k
from deliberate.models.base import get_backend
from deliberate.models.sampling import SamplingParams
from deliberate.rewards.base import get_verifier
from deliberate.search.base import SearchContext, SearchSettings, run_search
from deliberate.tasks.base import get_task


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="runs/quickstart/sft/model")
    ap.add_argument("--backend", default="tiny")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)

    # 1. a task: seeded problems, prompt format, answer extraction, checker (and a step checker)
    task = get_task("arith", min_ops=1, max_ops=3, max_operand=15)
    problems = task.problems("test", args.problems, seed=0)

    # 2. a backend: "tiny" (our checkpoints), "hf" (any transformers checkpoint), "openai" (any server)
    #    (openai: get_backend("openai", base_url="http://127.0.0.1:8000/v1", model=...))
    backend = get_backend(args.backend, path=args.model)

    # 3. sampling: n completions per prompt, seeded per (seed, prompt, sample), exact token counts
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=task.max_tokens, stop=task.stop, seed=0)
    completions = backend.generate([task.prompt(p) for p in problems], params)
    answers = [[task.normalize(task.extract_answer(c.text)) for c in row] for row in completions]
    correct = [[task.is_correct(a, p) for a in row] for row, p in zip(answers, problems)]
    tokens = sum(c.completion_tokens for row in completions for c in row)
    n = args.n
    pass_n = [pass_at_k(n, sum(row), n) for row in correct]
    maj_n = [maj_at_k(a, c, n) for a, c in zip(answers, correct)]
    print(f"sampling: pass@{n} {sum(pass_n) / len(pass_n):.3f}  maj@{n} {sum(maj_n) / len(maj_n):.3f}  "
          f"({tokens} generated tokens)")

    # 4. a verifier: per-step scores in [0, 1]; "oracle" is the task's own step checker
    #    (learned ones: "prm:DIR", "lprm:DIR", "hf-prm:DIR", "dpo:DIR", ...)
    verifier = get_verifier("oracle", task=task)
    steps = task.split_steps(completions[0][0].text)
    print(f"oracle step scores of one sample: {verifier.score(problems[0], steps)}")

    # 5. search: any registered strategy over the same backend, task and verifier, compute counted
    for strategy in ("best_of_n", "beam"):
        ctx = SearchContext(backend, task, SearchSettings(n=n, seed=0), verifier)
        results = run_search(strategy, problems, ctx)
        acc = [float(task.is_correct(r.answer, p)) for r, p in zip(results, problems)]
        lo, hi = bootstrap_ci(acc)
        print(f"{strategy}@{n}: {sum(acc) / len(acc):.3f} [{lo:.3f}, {hi:.3f}]  "
              f"({sum(r.generated_tokens for r in results)} generated tokens)")
    backend.close()


if __name__ == "__main__":
    main()
