"""The task layer: generated tasks (addition, countdown, gym), file tasks (gsm8k, math500, mawps),
the JSONL reader's errors, and the registry."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliberate.errors import DeliberateError
from deliberate.tasks import get_task, task_names
from deliberate.tasks.countdown import check_expression, children, evaluate, nearest, search, search_stream, solve
from deliberate.tasks.grading import extract_answer
from deliberate.tasks.jsonl import read_jsonl
from deliberate.types import Problem

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- registry ----------------------------------------------------------------------------------
def test_registry_lists_the_tasks_and_rejects_unknown_names():
    names = task_names()
    for n in ("addition", "countdown", "gsm8k", "math500", "mawps", "gym:<name>"):
        assert n in names
    with pytest.raises(DeliberateError, match="valid tasks: .*addition.*countdown"):
        get_task("nosuchtask")
    with pytest.raises(DeliberateError, match="bad options.*unknown option 'nosuchoption'; its options: digits"):
        get_task("addition", nosuchoption=1)
    with pytest.raises(DeliberateError, match="'max_opz' \\(did you mean 'max_ops'\\?\\)"):
        get_task("arith", max_opz=3)


def test_a_type_error_inside_a_task_constructor_is_not_called_a_bad_option(clean_registries):
    from deliberate.tasks.arith import ArithTask
    from deliberate.tasks.base import register_task

    @register_task("broken_ctor")
    class Broken(ArithTask):
        def __init__(self, max_ops: int = 3):
            len(max_ops)  # a bug: TypeError from inside the constructor, with valid option names

    with pytest.raises(TypeError, match="has no len"):
        get_task("broken_ctor", max_ops=3)


# --- generated tasks: gold verifies, wrong rejected, determinism, disjoint splits ---------------
GENERATED = [("addition", {}), ("addition", {"digits": 3}), ("countdown", {}), ("countdown", {"n_numbers": 3}),
             ("gym:chain_sum", {"test_size": 40})]


@pytest.mark.parametrize("name,opts", GENERATED)
def test_generated_task_contract(name, opts):
    task = get_task(name, **opts)
    test = task.problems("test", n=40, seed=3)
    train = task.problems("train", n=200, seed=3)
    assert len(test) == 40 and len(train) == 200
    assert [p.question for p in test] == [p.question for p in task.problems("test", n=40, seed=3)]
    assert [p.question for p in test] != [p.question for p in task.problems("test", n=40, seed=4)]
    assert not {p.question for p in test} & {p.question for p in train}
    assert len({p.question for p in train}) == 200
    assert task.problems("test", n=5, seed=3) == test[:5]  # a prefix of the same stream
    for p in test + train[:40]:
        gold = task.rationale(p)
        assert task.is_correct(task.extract_answer(gold), p), (p, gold)
        assert task.reward(gold, p) == 1.0
        assert not task.is_correct(None, p)
        assert not task.is_correct(task.extract_answer("Answer: 123456789"), p)
        assert task.prompt(p).startswith("Q: ") and task.prompt(p, "instruct")
        assert task.normalize(task.extract_answer(gold)) is not None
    assert task.max_tokens > 0
    with pytest.raises(DeliberateError, match="valid splits"):
        task.problems("dev")
    with pytest.raises(DeliberateError, match="valid styles"):
        task.prompt(test[0], "chatty")


@pytest.mark.parametrize("name", ["addition", "countdown"])
def test_gold_steps_are_correct_and_a_wrong_step_is_caught(name):
    task = get_task(name)
    for p in task.problems("test", n=30, seed=1):
        steps = list(task.split_steps(task.rationale(p)))
        assert task.step_correct(p, steps) == [True] * len(steps)
        assert task.max_tokens >= len(task.rationale(p))  # char-level budget suffices
        bad = steps.copy()
        bad[0] = bad[0].replace("=", "=1", 1)  # corrupt the first result
        marks = task.step_correct(p, bad)
        assert marks == [False] * len(bad)
        # the gold steps then a wrong answer: steps stay correct, the answer line is not
        wrong = steps[:-1] + ["Answer: 100000000"]
        assert task.step_correct(p, wrong) == [True] * (len(steps) - 1) + [False]


def test_asking_for_more_distinct_problems_than_exist_fails_fast():
    """2 numbers in 1..3 make a handful of countdown puzzles: asking for 500 is a clear error after a
    stall of draws with nothing new, not a spin through 1000 x n draws."""
    from deliberate.tasks.base import distinct_draws

    with pytest.raises(DeliberateError, match=r"only \d+ found and none new in the last 200000 draws"):
        get_task("countdown", n_numbers=2, max_number=3, min_target=1, max_target=9).problems("train", n=500)
    draws = iter(range(10**9))
    with pytest.raises(DeliberateError, match="only 3 found and none new in the last 100 draws"):
        distinct_draws("train", 5, lambda: (f"q{min(next(draws), 2)}", None), what="t", max_tries=10**6, stall=100)


def test_addition_format_and_options():
    task = get_task("addition", digits="2-3")
    p = Problem("x", "97+45", "142", {"steps": None})
    from deliberate.tasks.addition import scratchpad

    assert scratchpad(97, 45) == ["7+5+0=12, 2", "9+4+1=14, 142"]
    assert scratchpad(5, 0) == ["5+0+0=5, 5"]
    assert task.prompt(p) == "Q: 97+45\nA:\n"
    assert task.stop == ("\n\n",)
    for q in task.problems("train", n=100):
        a, b = q.question.split("+")
        assert 2 <= len(a) == len(b) <= 3 and int(q.answer) == int(a) + int(b)
    assert task.extract_answer("7+5+0=12, 2\nAnswer: 0142") == "142"
    assert task.normalize("1,000") == task.normalize("1000")
    for bad in ("0", "5-2", "a-b", "1-2-3", 31):
        with pytest.raises(DeliberateError, match="digits"):
            get_task("addition", digits=bad)
    with pytest.raises(DeliberateError, match="only 100 questions"):
        get_task("addition", digits=1).problems("train", n=101)
    # extract=last_number: an answer in the model's own words is graded on its last number, an Answer:
    # line still wins, and the default (the tiny model's format) grades only the Answer: line
    loose = get_task("addition", digits="2-3", extract="last_number")
    assert loose.extract_answer("97 + 45 = 142.") == "142" and loose.is_correct("142", p)
    assert loose.extract_answer("Answer: 141\nor maybe 142") == "141"
    assert loose.extract_answer("no number") is None and task.extract_answer("97 + 45 = 142.") is None
    assert loose.problems("test", 20) == task.problems("test", 20)  # the same problems either way
    with pytest.raises(DeliberateError, match="extract must be one of"):
        get_task("addition", extract="first")


# --- countdown: solver, search, checker --------------------------------------------------------
def test_countdown_solver_and_search():
    steps = solve([3, 7, 25, 50], 82)
    assert steps is not None and steps[-1].endswith("=82")
    assert solve([1, 1, 1, 1], 1000) is None
    for strategy in ("dfs", "bfs"):
        visited = list(search([2, 3, 5], 25, strategy))
        assert visited[0].depth == 0 and visited[0].numbers == (2, 3, 5)
        assert visited[-1].solved(25) and not any(s.solved(25) for s in visited[:-1])
        expr = visited[-1].expression(25)
        assert check_expression(expr, [2, 3, 5], 25), expr
    depths = [s.depth for s in search([2, 3, 5], 25, "bfs")]
    assert depths == sorted(depths)  # BFS visits by depth
    dfs = list(search([2, 3, 5], 25, "dfs"))
    assert any(b.depth <= a.depth for a, b in itertools.pairwise(dfs))  # DFS backtracks (dead ends in the stream)
    h = lambda s, t: min(abs(v - t) for v in s.numbers)
    guided = list(search([2, 3, 5], 25, "dfs", heuristic=h))
    assert h(guided[1], 25) == min(h(c, 25) for c in children(guided[0]))  # best child first
    assert guided[-1].solved(25)
    with pytest.raises(DeliberateError, match="dfs, bfs"):
        next(search([1, 2], 3, "astar"))


def test_countdown_search_stream():
    """The Stream-of-Search text: one line per visited state, dead ends and backtracks visible, and
    the optimal path is the stream's own solution branch; both end in a correct Answer line."""
    task = get_task("countdown", n_numbers=3, max_number=20)
    backtracked = 0
    for p in task.problems("train", 60, seed=4):
        nums, target = p.metadata["numbers"], p.metadata["target"]
        made = search_stream(nums, target)
        assert made is not None
        stream, path = made
        visited = [s for s in search(nums, target, "dfs", heuristic=nearest)][1:]
        lines = stream.split("\n")
        assert len(lines) == len(visited) + 1 and lines[-1] == path.split("\n")[-1]
        for line, state in zip(lines, visited):
            indent = len(line) - len(line.lstrip(" "))
            assert indent == state.depth - 1 and line.strip().startswith(state.steps[-1])
        assert lines[-2].endswith(" !") and all(not ln.endswith("!") for ln in lines[:-2])
        assert all(ln.endswith((" x", ")")) for ln in lines[:-2])
        # the path is the solved state's operations, a subsequence of the stream's lines
        assert path.split("\n")[:-1] == list(visited[-1].steps)
        assert task.is_correct(task.extract_answer(stream), p) and task.is_correct(task.extract_answer(path), p)
        backtracked += any(b.depth <= a.depth for a, b in itertools.pairwise(visited))
    assert backtracked > 5  # some searches hit dead ends and back up
    assert search_stream([2, 3, 5], 25, max_states=1) is None  # over the state budget
    assert search_stream([1, 1], 1000) is None  # unsolvable
    assert search_stream([2, 3, 5], 25, "bfs", heuristic=None)[0].split("\n")[-2].endswith("!")
    with pytest.raises(DeliberateError, match="dfs, bfs"):
        search_stream([1, 2], 3, "astar")


def test_countdown_checker():
    nums = [3, 7, 25, 50]
    assert check_expression("(50+25)+7", nums, 82)
    assert check_expression("50 + 25 + 7 = 82", nums, 82)
    assert check_expression("50*3/25+7", nums, 13)
    assert not check_expression("50+25+7=83", nums, 82)  # wrong stated result
    assert not check_expression("50+25+7+7-7", nums, 82)  # 7 used three times
    assert not check_expression("82", nums, 82)  # the target is not a given number
    assert not check_expression("7/3*25", [3, 7, 25], 58)  # non-integer intermediate
    assert not check_expression("__import__('os').system('x')", nums, 82)
    assert not check_expression("-3+85", nums, 82)
    assert evaluate("(2+3)*4") == (20, [2, 3, 4]) and evaluate("1/0") is None and evaluate("2.5*2") is None
    task = get_task("countdown")
    p = task.problems("test", n=1)[0]
    assert task.extract_answer("a\nAnswer: 1 + 2\n") == "1+2"
    assert task.extract_answer("so \\boxed{3*4}") == "3*4"
    assert not task.is_correct(p.answer, p)  # the bare target is not a solution


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_countdown_parsing_never_raises(text):
    task = get_task("countdown")
    p = Problem("c", "1 2 3 -> 6", "6", {"numbers": [1, 2, 3], "target": 6})
    task.is_correct(task.extract_answer(text), p)
    task.is_correct(text, p)
    task.step_correct(p, task.split_steps(text))


# --- gym ---------------------------------------------------------------------------------------
def test_gym_task():
    task = get_task("gym:chain_sum", test_size=10)
    assert task.name == "gym:chain_sum"
    p = task.problems("test", n=3)[0]
    assert task.is_correct(task.extract_answer(f"working...\nAnswer: {p.answer}"), p)
    assert not task.is_correct(task.extract_answer("Answer: banana"), p)
    assert task.prompt(p, "instruct").startswith(p.question) and "Answer:" in task.prompt(p, "instruct")
    with pytest.raises(DeliberateError, match="chain_sum"):
        get_task("gym:chain_summ")
    with pytest.raises(DeliberateError, match="test_size"):
        task.problems("test", n=11)


# --- JSONL reading -----------------------------------------------------------------------------
def test_read_jsonl_errors_name_file_and_line(tmp_path):
    f = write(tmp_path / "d.jsonl", [{"question": "q", "answer": "#### 1"}, "", "{not json"])
    with pytest.raises(DeliberateError, match=r"d\.jsonl:3: malformed JSON"):
        read_jsonl(f, ("question",))
    f = write(tmp_path / "e.jsonl", [{"question": "q", "answer": "a"}, {"question": "q"}])
    with pytest.raises(DeliberateError, match=r"e\.jsonl:2: missing field\(s\) answer"):
        read_jsonl(f, ("question", "answer"))
    f = write(tmp_path / "f.jsonl", ["[1, 2]"])
    with pytest.raises(DeliberateError, match=r"f\.jsonl:1: expected a JSON object"):
        read_jsonl(f)
    rows = read_jsonl(write(tmp_path / "g.jsonl", [{"a": 1}, "", {"a": 2}]), ("a",))
    assert [(r["a"], r["_line"]) for r in rows] == [(1, 1), (2, 3)]


def test_file_tasks_report_bad_lines_and_missing_files(tmp_path, monkeypatch):
    bad = write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "x\n#### 3"}, {"question": "q"}])
    with pytest.raises(DeliberateError, match=r"bad\.jsonl:2: missing field"):
        get_task("gsm8k", path=str(bad)).problems("test")
    nofinal = write(tmp_path / "nofinal.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(DeliberateError, match=r"nofinal\.jsonl:1: .*####"):
        get_task("gsm8k", path=str(nofinal)).problems("test")
    badm = write(tmp_path / "m.jsonl", [{"problem": "p", "solution": "s", "answer": "1"}, "{oops"])
    with pytest.raises(DeliberateError, match=r"m\.jsonl:2: malformed"):
        get_task("math500", path=str(badm)).problems("test")
    badw = write(tmp_path / "w.jsonl", [{"input": "p", "target": "lots"}])
    with pytest.raises(DeliberateError, match=r"w\.jsonl:1: target"):
        get_task("mawps", subset="addsub", path=str(badw)).problems("test")
    # nothing found: the error lists every path tried and how to pass one
    monkeypatch.setenv("DELIBERATE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeliberateError, match=r"tried .*data/gsm8k/test\.jsonl.*shared/data/gsm8k/test\.jsonl.*path="):
        get_task("gsm8k").problems("test")
    with pytest.raises(DeliberateError, match="not found"):
        get_task("math500", path=str(tmp_path / "nope.jsonl")).problems("test")
    # DELIBERATE_DATA is honoured
    (tmp_path / "data" / "mawps").mkdir(parents=True)
    write(tmp_path / "data" / "mawps" / "singleop.jsonl", [{"input": "1 and 2 more?", "target": 3.0}])
    (p,) = get_task("mawps", subset="singleop").problems("test")
    assert p.answer == "3" and p.metadata["line"] == 1


def test_file_tasks_on_tiny_files(tmp_path):
    g = write(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "Half of 10 is 10/2=<<10/2=5>>5.\n#### 5"},
                                     {"question": "Q2?", "answer": "So 1,000+1=<<1000+1=1001>>1001\n#### 1,001"}])
    task = get_task("gsm8k", path=str(g), train_path=str(g))
    p1, p2 = task.problems("test")
    assert (p1.answer, p2.answer) == ("5", "1001")
    assert p1.metadata["calcs"] == [("10/2", "5")] and "<<" not in task.rationale(p1)
    assert task.rationale(p1) == "Half of 10 is 10/2=5.\nAnswer: 5"
    for text in ("The answer is 1,001.", "#### 1001", "Answer: $1001.00", "so \\boxed{1001}", "we get 1001 apples"):
        assert task.is_correct(task.extract_answer(text), p2), text
    assert not task.is_correct(task.extract_answer("The answer is 1000."), p2)
    strict = get_task("gsm8k", path=str(g), last_number_fallback=False)
    assert strict.extract_answer("we get 1001 apples") is None
    assert task.normalize("1,001") == task.normalize("1001.0")
    assert task.problems("train", n=1) == [dataclasses.replace(p1, id="gsm8k-train-1")]
    m = write(tmp_path / "m.jsonl", [{"problem": "P?", "solution": "So $\\boxed{\\dfrac{1}{2}}$.", "answer": "\\frac12",
                                      "unique_id": "test/x/1.json"}])
    mt = get_task("math500", path=str(m))
    (mp,) = mt.problems("test")
    assert mp.id == "test/x/1.json" and mt.is_correct(mt.extract_answer(mt.rationale(mp)), mp)
    assert mt.is_correct("0.5", mp) and not mt.is_correct("\\frac13", mp)
    assert "\\boxed{}" in mt.prompt(mp, "instruct")
    for name in ("math500", "mawps"):
        with pytest.raises(DeliberateError, match="only a test split"):
            get_task(name, path=str(m)).problems("train")
    with pytest.raises(DeliberateError, match="valid subsets"):
        get_task("mawps", subset="nope")


# --- real data (skipped when ../shared/data is absent) ------------------------------------------
def test_gsm8k_real_test_file():
    path = need("gsm8k", "test.jsonl")
    task = get_task("gsm8k", path=str(path))
    probs = task.problems("test")
    assert len(probs) == 1319
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r, p in zip(raw, probs):
        final = r["answer"].split("####")[-1].strip()
        assert extract_answer(r["answer"]) == final  # "#### N" is found on every row
        assert task.is_correct(task.extract_answer(r["answer"]), p)
        assert task.is_correct(task.extract_answer(task.rationale(p)), p)
    assert sum(task.is_correct(task.extract_answer(task.rationale(q)), p) for q, p in zip(probs[1:], probs)) < 50


def test_mawps_and_math500_real_files():
    need("mawps", "singleop.jsonl")
    for sub in ("singleop", "addsub", "singleeq", "multiarith"):
        path = need("mawps", f"{sub}.jsonl")
        task = get_task("mawps", subset=sub, path=str(path))
        probs = task.problems("test")
        assert len(probs) > 300
        for p in probs:
            assert task.is_correct(task.extract_answer(f"...\nThe answer is {p.answer}."), p)
    path = need("math500", "test.jsonl")
    task = get_task("math500", path=str(path))
    probs = task.problems("test")
    assert len(probs) == 500 and len(task.problems("test", n=7)) == 7
    assert sum(task.is_correct(task.extract_answer(task.rationale(p)), p) for p in probs) >= 490


def test_gym_last_number_extraction_is_opt_in():
    strict = get_task("gym:chain_sum", min_terms=2, max_terms=2)
    flex = get_task("gym:chain_sum", min_terms=2, max_terms=2, extract="last_number")
    p = strict.problems("test", 1)[0]
    text = f"Let me add.\n\nSo the sum is {p.answer}."
    assert strict.extract_answer(text) is None and not strict.is_correct(strict.extract_answer(text), p)
    assert flex.extract_answer(text) == p.answer and flex.is_correct(flex.extract_answer(text), p)
    assert flex.extract_answer(f"{p.answer} is my guess\nno idea") is None  # only the last line counts
    assert flex.extract_answer("so 7\nAnswer: 12") == "12"  # an answer statement still wins
    assert flex.extract_answer("1,081 + 2 = 1,083") == "1083" and flex.extract_answer("x = −2") == "-2"
    with pytest.raises(DeliberateError, match="extract must be one of"):
        get_task("gym:chain_sum", extract="anything")
