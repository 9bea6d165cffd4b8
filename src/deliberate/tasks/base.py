"""The Task base class and the task registry.

A task is one small class in one file: it makes or loads problems, formats prompts, splits a
completion into steps, extracts the final answer and verifies it. Register it with
``@register_task("name")`` (the :data:`TASKS` registry); ``get_task("name", **options)`` builds it, and
``gym:<name>`` builds a reasoning-gym task.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.registry import Registry
from deliberate.types import Completion, Problem, Sample

SPLITS = ("train", "test")
PROMPT_STYLES = ("plain", "instruct")


class Task(ABC):
    """Problems + prompt format + step splitting + answer extraction + automatic verifier.

    Subclasses implement :meth:`problems`, :meth:`extract_answer` and :meth:`is_correct`, and
    usually :meth:`instruction` and :meth:`rationale`; the rest has sensible defaults.
    """

    name: str = "task"
    #: stop strings that end a completion (the model's own EOS also ends it)
    stop: tuple[str, ...] = ()
    #: a sensible default for max generated tokens
    max_tokens: int = 256

    # --- problems -------------------------------------------------------------------------
    @abstractmethod
    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        """Problems of ``split`` ("train" or "test"); the first ``n`` of them when ``n`` is given.

        Generated tasks make them from ``seed`` (train and test never share a question); file
        tasks read them in file order.
        """

    # --- formatting -----------------------------------------------------------------------
    def prompt(self, problem: Problem, style: str = "plain") -> str:
        """The text the model continues. ``style="plain"`` is the compact ``Q: ...\nA:\n`` format the
        tiny model is trained on; ``style="instruct"`` is :meth:`instruction`, for chat/instruct models."""
        if style == "plain":
            return f"Q: {problem.question}\nA:\n"
        if style == "instruct":
            return self.instruction(problem)
        raise DeliberateError(f"unknown prompt style {style!r}; valid styles: {', '.join(PROMPT_STYLES)}")

    def instruction(self, problem: Problem) -> str:
        """Natural-language prompt for instruct models; tasks override it to ask for their answer format."""
        return f"{problem.question}\n\nThink step by step, then end your reply with a final line 'Answer: ...'."

    def rationale(self, problem: Problem) -> str | None:
        """Gold completion for supervised training: the gold ``steps`` in the problem's metadata, one per
        line, then ``Answer: <gold>``; None when the task has no gold steps."""
        steps = problem.metadata.get("steps")
        return None if steps is None else "\n".join(steps) + f"\nAnswer: {problem.answer}"

    def split_steps(self, text: str, delimiter: str = "\n") -> tuple[str, ...]:
        """Reasoning steps of a completion: its non-empty pieces between ``delimiter`` s (lines by default).

        Search passes its configured ``step_delimiter``, so every strategy and every verifier call sees
        the same steps in the same text."""
        return tuple(piece.strip() for piece in text.split(delimiter) if piece.strip())

    # --- verification ---------------------------------------------------------------------
    @abstractmethod
    def extract_answer(self, text: str) -> str | None:
        """The final answer written in a completion, normalised, or None if there is none."""

    @abstractmethod
    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        """Whether an extracted answer matches the problem's gold answer."""

    def step_correct(self, problem: Problem, steps: Sequence[str]) -> list[bool] | None:
        """Ground-truth correctness of each step prefix, when the task can check steps (else None)."""
        return None

    def steps_all_correct(self, problem: Problem, text: str) -> bool | None:
        """Whether every step of ``text`` passes :meth:`step_correct` (None when the task has no step checker).

        A right answer with this False is a *lucky* one: no process verifier should rank it first."""
        flags = self.step_correct(problem, self.split_steps(text))
        return None if flags is None else bool(flags) and all(flags)

    def normalize(self, answer: str | None) -> str | None:
        """Canonical form used to group answers for majority vote."""
        return None if answer is None else answer.strip()

    # --- conveniences built on the above ----------------------------------------------------
    def parse(self, completion: Completion) -> Sample:
        return Sample(
            text=completion.text,
            steps=self.split_steps(completion.text),
            answer=self.extract_answer(completion.text),
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            finish_reason=completion.finish_reason,
            logprobs=completion.logprobs,
        )

    def reward(self, text: str, problem: Problem) -> float:
        """1.0 if the completion's answer is correct else 0.0 (RL reward, reuses the verifier)."""
        return float(self.is_correct(self.extract_answer(text), problem))

    def describe(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else self.name


#: the task registry; ``gym:<name>`` and ``code:PATH`` pass the text after the colon to the factory
TASKS = Registry("task", builtins=[f"deliberate.tasks.{m}" for m in
                                   ("arith", "addition", "countdown", "gsm8k", "math500", "mawps", "gym", "code", "dataset")])


def register_task(name: str, *, argument: str | None = None, metavar: str | None = None,
                  override: bool = False) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Register a task factory (usually the Task subclass) under ``name`` (see :mod:`deliberate.registry`)."""
    return TASKS.register(name, argument=argument, metavar=metavar, override=override)


def task_names() -> list[str]:
    return TASKS.names()


def get_task(name: str, **options: Any) -> Task:
    """Build a task by name, e.g. ``get_task("arith", max_ops=4)`` or ``get_task("gym:chain_sum")``."""
    return TASKS.create(name, **options)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DeliberateError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def hash_split(question: str) -> str:
    """``"test"`` iff a hash of the question text falls in the lowest 10% bucket, else ``"train"``.

    Generated tasks use it so train and test never share a question, whatever the seeds or sizes.
    """
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=4).digest(), "little")
    return "test" if h % 10 == 0 else "train"


def distinct_draws(split: str, n: int, draw: Callable[[], tuple[str, Any] | None], *, what: str,
                   max_tries: int, stall: int = 200_000) -> list[tuple[str, Any]]:
    """Call ``draw()`` until ``n`` distinct questions of ``split`` (by :func:`hash_split`) are found.

    ``draw`` returns ``(question, payload)`` or None (a rejected draw); the result is the accepted
    ``(question, payload)`` pairs in draw order. Gives up with a DeliberateError after ``max_tries``,
    or sooner when ``stall`` draws in a row bring no new question (the options allow fewer distinct
    problems than asked for: without this, asking for more than exist spins through ``max_tries``).
    """
    out: list[tuple[str, Any]] = []
    seen: set[Hashable] = set()
    tries = last_new = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries or tries - last_new > stall:
            why = (f"only {len(out)} found in {max_tries} draws" if tries > max_tries else
                   f"only {len(out)} found and none new in the last {stall} draws, so these options probably "
                   f"allow fewer distinct {split} problems than that")
            raise DeliberateError(f"{what}: could not generate {n} distinct {split} problems with these options "
                                  f"({why}; ask for fewer, or widen the ranges)")
        made = draw()
        if made is None:
            continue
        q = made[0]
        if q in seen or hash_split(q) != split:
            continue
        seen.add(q)
        out.append(made)
        last_new = tries
    return out
