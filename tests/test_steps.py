"""Steps in search: one splitter for every strategy and verifier call, and a step cut by the step's
token limit is never a step.

Scripted policies on the fake backend write arith solutions; the checks are on what the verifier
was asked to score and on the search trees, not on accuracy.
"""

from __future__ import annotations

import copy
import random
import re

import pytest
from fakes import FakeBackend

from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.rewards import get_verifier
from deliberate.rewards.base import Verifier
from deliberate.search import SearchContext, SearchSettings, run_search
from deliberate.tasks import get_task

TASK = get_task("arith", min_ops=2, max_ops=3, max_operand=10)
PROBLEMS = TASK.problems("test", 6, seed=0)
BY_Q = {p.question: p for p in PROBLEMS}
LONG = 40  # characters of the over-long lines, > step_tokens below
STEP_TOKENS = 16  # every gold line and answer line fits (one token per character on the fake)


def _problem(prompt: str) -> tuple[object, str]:
    m = re.match(r"Q: (.*)\nA:\n", prompt, re.DOTALL)
    return BY_Q[m.group(1)], prompt[m.end():]


def rambling_solver(prompt: str, rng: random.Random) -> str:
    """The gold chain, but each line is, by chance, an over-long line instead: filler, or an
    ``Answer:`` whose number runs on (cut at the step limit it would read as a short wrong answer)."""
    prob, written = _problem(prompt)
    gold = prob.metadata["steps"]
    lines = []
    for k in range(len([ln for ln in written.split("\n") if ln.strip()]), len(gold)):
        r = rng.random()
        lines.append("z" * LONG if r < 0.25 else "Answer: " + "7" * (LONG - 8) if r < 0.4 else gold[k])
    return "\n".join(lines + [f"Answer: {prob.answer}"]) + "\n\n"


def _is_cut(text: str) -> bool:
    return text in ("z" * STEP_TOKENS, "Answer: " + "7" * (STEP_TOKENS - 8))


@pytest.mark.parametrize("name,extra", [("beam", {}), ("dvts", {}), ("tot", {}), ("tot", {"tot_mode": "dfs"}),
                                        ("tot", {"tot_eval": "vote"}), ("mcts", {"mcts_value": "prm"}),
                                        ("mcts", {"mcts_value": "rollout"}), ("mcts", {"mcts_value": "confidence"})])
def test_a_step_cut_at_the_token_limit_is_neither_a_step_nor_a_finished_solution(name, extra):
    ctx = SearchContext(FakeBackend(rambling_solver), TASK,
                        SearchSettings(n=4, expansions=3, max_tokens=200, step_tokens=STEP_TOKENS, **extra),
                        verifier=get_verifier("oracle", task=TASK))
    results = run_search(name, PROBLEMS, ctx)
    cut_seen = 0
    for r in results:
        nodes = {n["id"]: n for n in r.tree}
        for n in r.tree[1:]:
            if _is_cut(n["text"]):
                cut_seen += 1
                assert not n["terminal"] and n["correct"] is None  # not a finished solution
                assert n["score"] is None  # no verifier call, no evaluation: it is no step
            assert not _is_cut(nodes[n["parent"]]["text"])  # never continued as if it were complete
        # a truncated "Answer: 7777..." is never an answer, whatever else the strategy considered
        assert all(c.answer is None or not set(c.answer) <= {"7"} or len(c.answer) == LONG - 8 for c in r.candidates)
        assert r.answer is None or not set(r.answer) <= {"7"}
    assert cut_seen >= len(PROBLEMS)  # the script did ramble: the checks above had cut steps to look at


def paragraph_solver(prompt: str, rng: random.Random) -> str:
    """Paragraph steps, each two lines (``step k:`` then the equation), separated by blank lines."""
    prob, written = _problem(prompt)
    gold = prob.metadata["steps"]
    done = len([p for p in written.split("\n\n") if p.strip()])
    paras = [f"step {k + 1}:\n{gold[k]}" for k in range(done, len(gold))] + [f"Answer: {prob.answer}"]
    return "\n\n".join(paras) + "\n\n\n"


class Spy(Verifier):
    """Records every (problem, steps) it is asked to score; scores each step 0.5."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, tuple[str, ...]]] = []

    def score_batch(self, items):
        self.seen += [(p.id, tuple(steps)) for p, steps in items]
        return [[0.5] * len(steps) for _, steps in items]


def test_best_of_n_on_the_sweep_pool_and_beam_give_the_verifier_the_same_steps(tmp_path):
    task = copy.copy(TASK)
    task.stop = ("\n\n\n",)  # a paragraph-style task: a blank line does not end the solution
    spy = Spy()
    cfg = SweepConfig(task="arith", out_dir=str(tmp_path / "sweep"), strategies=("best_of_n", "beam"), budgets=(2,),
                      n_problems=len(PROBLEMS), task_options={"min_ops": 2, "max_ops": 3, "max_operand": 10},
                      settings={"max_tokens": 120, "step_delimiter": "\n\n", "expansions": 2}, taste_sigmas=())
    run_sweep(cfg, FakeBackend(paragraph_solver), task=task, verifier=spy, progress=False)
    for p in PROBLEMS:
        text = paragraph_solver(task.prompt(p), random.Random(0)).rstrip("\n")
        steps = tuple(para.strip() for para in text.split("\n\n"))
        assert len(steps) == len(p.metadata["steps"]) + 1 and all("\n" in s for s in steps[:-1])
        scored = [s for pid, s in spy.seen if pid == p.id]
        # the pool's two samples (best-of-N), and beam's finished paths, are this very text
        assert scored.count(steps) >= 2 + 1, scored
        # nothing was scored with line steps: every scored step is a whole paragraph
        assert all(s.startswith(("step ", "Answer:")) for st in scored for s in st)
