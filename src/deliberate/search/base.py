"""What every search strategy shares: settings, the search tree, compute accounting, batching.

A strategy is a :class:`Strategy` registered by name; its ``run(problems, ctx)`` works on *all*
problems at once, so each round of generation is one batched backend call and each round of scoring
one batched verifier call — that is what makes search affordable on a local engine and keeps a remote
server's batch full. One that only chooses among full samples also has ``select``, which a sweep
calls on its one shared pool of samples.

A step is generated with ``step_delimiter`` (a newline by default) as its stop string from ``prompt +
prefix``, the prefix being the steps so far, each followed by the delimiter; the steps of any text, for
a verifier or a candidate, come from one splitter (:meth:`SearchContext.split_steps`). A step cut by
its token limit is no step: a dead end, neither expanded nor a finished solution. The local engine
reuses the KV cache of a prefix it has computed (automatic prefix caching), as vLLM/SGLang servers do,
so continuing a partial solution costs only its new tokens.

Every result carries its compute: generated tokens, prompt tokens sent (before any prefix caching),
backend calls, verifier sequences (the step prefixes scored, each counted once: :func:`new_prefixes`);
:class:`SearchContext` also keeps run totals. What the local engine actually ran after prefix caching
is in ``backend.engine.stats`` (the sweep records it).
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams
from deliberate.registry import Registry
from deliberate.rewards.base import AGGREGATIONS, Verifier, aggregate
from deliberate.tasks.base import Task
from deliberate.types import Completion, Problem

REFLECTION_CUE = "Wait! Maybe I made some mistakes! I need to rethink from scratch."


@dataclass(frozen=True)
class SearchSettings:
    """Knobs shared by the strategies (each strategy reads the ones it needs).

    ``n`` is the budget: candidate solutions for best-of-N / majority / weighted, beams for beam
    search, N/expansions subtrees for DVTS, iterations for MCTS, states per level for ToT, attempts
    for reflection.
    """

    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # per whole solution; None -> the task's default
    step_tokens: int = 48  # per step, step-level strategies
    max_steps: int = 12
    expansions: int = 4  # samples per expanded node (beam, DVTS, MCTS, ToT)
    aggregation: str = "min"  # how per-step verifier scores become one solution score
    final: str = "best"  # beam/DVTS/ToT final pick among finished solutions: best | weighted
    seed: int = 0
    prompt_style: str = "plain"
    mcts_c: float = 1.0  # exploration constant
    mcts_rule: str = "puct"  # puct | uct
    mcts_value: str = "prm"  # prm (verifier on the prefix) | rollout (verifier on a rollout) | confidence
    tot_mode: str = "bfs"  # bfs | dfs
    tot_eval: str = "value"  # value (verifier) | vote (self-consistency of rollouts)
    tot_threshold: float = 0.3  # DFS prunes states whose value is below this
    vote_rollouts: int = 2
    reflection_cue: str = REFLECTION_CUE
    reflection_final: str = "last"  # last | majority
    # what ends a step: a line by default; "\n\n" (paragraphs) suits chat models that put blank lines
    # between lines of reasoning (an empty step ends the solution)
    step_delimiter: str = "\n"

    def __post_init__(self) -> None:
        bad = []
        for name in ("n", "step_tokens", "max_steps", "expansions", "vote_rollouts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad.append(f"{name} must be an integer >= 1 (got {v!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if self.aggregation not in AGGREGATIONS:
            bad.append(f"aggregation must be one of {', '.join(AGGREGATIONS)} (got {self.aggregation!r})")
        for name, valid in (("final", ("best", "weighted")), ("mcts_rule", ("puct", "uct")),
                            ("mcts_value", ("prm", "rollout", "confidence")), ("tot_mode", ("bfs", "dfs")),
                            ("tot_eval", ("value", "vote")), ("reflection_final", ("last", "majority"))):
            if getattr(self, name) not in valid:
                bad.append(f"{name} must be one of {', '.join(valid)} (got {getattr(self, name)!r})")
        if not isinstance(self.step_delimiter, str) or not self.step_delimiter:
            bad.append(f"step_delimiter must be a non-empty string (got {self.step_delimiter!r})")
        if not self.mcts_c >= 0:
            bad.append(f"mcts_c must be >= 0 (got {self.mcts_c!r})")
        if bad:
            raise DeliberateError("invalid search settings: " + "; ".join(bad))
        # SamplingParams validates temperature / top_p / seed
        SamplingParams(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Node:
    """One node of a search tree: a step appended to its parent's partial solution."""

    id: int
    parent: int | None
    step: str  # the step's text ("" for the root)
    depth: int
    score: float | None = None  # verifier score of the prefix ending here (aggregated)
    visits: int = 0
    value_sum: float = 0.0
    confidence: float | None = None  # mean chosen-token probability of the step, when log-probs were asked for
    terminal: bool = False  # never expanded: it finished the solution, or it is a cut step
    cut: bool = False  # the step hit the step's token limit: a dead end, not a finished step
    answer: str | None = None
    tokens: int = 0  # tokens generated for this step
    children: list[int] = field(default_factory=list)
    chosen: bool = False
    correct: bool | None = None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def finished(self) -> bool:
        """Whether the path to this node is a finished solution (a cut step never is)."""
        return self.terminal and not self.cut


class Tree:
    """A search tree for one problem; node 0 is the root (the question)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.nodes: list[Node] = [Node(0, None, "", 0)]

    def add(self, parent: int, step: str, tokens: int) -> Node:
        p = self.nodes[parent]
        node = Node(len(self.nodes), parent, step, p.depth + 1, tokens=tokens)
        self.nodes.append(node)
        p.children.append(node.id)
        return node

    def steps(self, nid: int) -> list[str]:
        out = []
        while nid:
            node = self.nodes[nid]
            out.append(node.step)
            nid = node.parent  # type: ignore[assignment]
        return out[::-1]

    def path(self, nid: int) -> list[int]:
        out = [nid]
        while self.nodes[out[-1]].parent is not None:
            out.append(self.nodes[out[-1]].parent)  # type: ignore[arg-type]
        return out[::-1]

    def mark_chosen(self, nid: int) -> None:
        for i in self.path(nid):
            self.nodes[i].chosen = True

    def to_json(self, task: Task) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes:
            correct = None
            if n.finished:
                correct = bool(task.is_correct(n.answer, self.problem))
            out.append({"id": n.id, "parent": n.parent, "text": n.step, "score": n.score,
                        "visits": n.visits or None, "value": round(n.value, 6) if n.visits else None,
                        "chosen": n.chosen, "terminal": n.finished, "correct": correct})
        return out


@dataclass(frozen=True)
class Candidate:
    """A finished (or abandoned) solution a strategy considered."""

    text: str
    steps: tuple[str, ...]
    answer: str | None
    score: float | None = None


@dataclass
class SearchResult:
    """The outcome of searching one problem."""

    problem_id: str
    answer: str | None
    text: str
    candidates: list[Candidate]
    generated_tokens: int = 0
    prompt_tokens: int = 0  # prompt+prefix tokens sent to the backend (before prefix caching)
    model_calls: int = 0  # backend requests that included this problem
    verifier_sequences: int = 0
    wall_s: float = 0.0  # this problem's share of the batched wall time
    tree: list[dict[str, Any]] | None = None


class SearchContext:
    """Backend + task + verifier + settings, with batched generation/scoring and compute counters."""

    def __init__(self, backend: Backend, task: Task, settings: SearchSettings, verifier: Verifier | None = None):
        self.backend, self.task, self.settings, self.verifier = backend, task, settings, verifier
        self.max_tokens = settings.max_tokens or task.max_tokens
        self.generated = self.prompt_sent = self.calls = 0
        self.per_problem: dict[str, dict[str, int]] = {}
        self.scored: dict[str, set[tuple[str, ...]]] = {}  # per problem, the step prefixes scored so far
        self._round = 0

    # --- prompts ---------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return self.task.prompt(problem, self.settings.prompt_style)

    def prefix(self, steps: Sequence[str]) -> str:
        d = self.settings.step_delimiter
        return "".join(s + d for s in steps)

    def split_steps(self, text: str) -> tuple[str, ...]:
        """The steps of ``text`` as every strategy and verifier call sees them (the sweep's pool too)."""
        return self.task.split_steps(text, self.settings.step_delimiter)

    def path_steps(self, tree: Tree, nid: int) -> tuple[str, ...]:
        """The steps of the solution ending at node ``nid``: its text through :meth:`split_steps`, so a
        tree path and a full sample with the same text give a verifier the same steps."""
        return self.split_steps(self.settings.step_delimiter.join(tree.steps(nid)))

    def _count(self, pid: str, key: str, v: int) -> None:
        d = self.per_problem.setdefault(pid, {"generated_tokens": 0, "prompt_tokens": 0, "model_calls": 0,
                                              "verifier_sequences": 0})
        d[key] += v

    def next_seed(self, *salt: Any) -> int:
        """A fresh sampling seed per generation round: identical prefixes in different rounds must
        not get identical samples (the engine's streams depend only on seed, prompt and index)."""
        self._round += 1
        h = hashlib.blake2b(f"{self.settings.seed}\0{self._round}\0{salt}".encode(), digest_size=4).digest()
        return int.from_bytes(h, "little")

    # --- generation --------------------------------------------------------------------------
    def generate(self, requests: Sequence[tuple[Problem, str]], n: int, *, step: bool,
                 temperature: float | None = None, max_tokens: int | None = None,
                 logprobs: bool = False) -> list[list[Completion]]:
        """One batched backend call: ``n`` continuations of each ``prompt(problem) + prefix``.

        ``step=True`` stops at the end of the line (one reasoning step)."""
        if not requests:
            return []
        s = self.settings
        stop = (s.step_delimiter,) if step else tuple(self.task.stop)
        mt = max_tokens or (s.step_tokens if step else self.max_tokens)
        params = SamplingParams(n=n, temperature=s.temperature if temperature is None else temperature,
                                top_p=s.top_p, max_tokens=mt, stop=stop, seed=self.next_seed(step, n),
                                logprobs=logprobs)
        outs = self.backend.continue_many([(self.prompt(p), pre) for p, pre in requests], params)
        if len(outs) != len(requests) or any(len(o) != n for o in outs):
            raise DeliberateError(f"backend returned {[len(o) for o in outs]} completions for "
                                  f"{len(requests)} prompts x n={n}")
        self.calls += 1
        seen = set()
        for (p, _), comps in zip(requests, outs):
            gen = sum(c.completion_tokens for c in comps)
            sent = comps[0].prompt_tokens if comps else 0  # n samples of one prompt share one prefill
            self.generated += gen
            self.prompt_sent += sent
            self._count(p.id, "generated_tokens", gen)
            self._count(p.id, "prompt_tokens", sent)
            if p.id not in seen:
                self._count(p.id, "model_calls", 1)
                seen.add(p.id)
        return outs

    # --- scoring -----------------------------------------------------------------------------
    def score(self, items: Sequence[tuple[Problem, Sequence[str]]]) -> list[float]:
        """Aggregated verifier score of each (problem, steps); needs a verifier."""
        if self.verifier is None:
            raise DeliberateError("this strategy needs a verifier (--verifier prm:DIR, orm:DIR, oracle ...)")
        if not items:
            return []
        for p, steps in items:
            self._count(p.id, "verifier_sequences", new_prefixes(self.scored.setdefault(p.id, set()), steps))
        per_step = self.verifier.score_batch([(p, list(s)) for p, s in items])
        return [aggregate(sc, self.settings.aggregation) for sc in per_step]

    # --- parsing ------------------------------------------------------------------------------
    def is_terminal(self, step: str, completion: Completion, depth: int) -> tuple[bool, str | None]:
        """A (complete) step ends the solution when it states an answer, is empty (the model ended),
        or the depth limit is reached. A step cut by its token limit is handled by :func:`expand`."""
        ans = self.task.extract_answer(step) if step else None
        if ans is not None:
            return True, ans
        if not step.strip():
            return True, None
        return depth >= self.settings.max_steps, None

    def result(self, problem: Problem, answer: str | None, text: str, candidates: list[Candidate],
               tree: Tree | None, wall_share: float) -> SearchResult:
        d = self.per_problem.get(problem.id, {})
        return SearchResult(problem_id=problem.id, answer=answer, text=text, candidates=candidates,
                            generated_tokens=d.get("generated_tokens", 0), prompt_tokens=d.get("prompt_tokens", 0),
                            model_calls=d.get("model_calls", 0), verifier_sequences=d.get("verifier_sequences", 0),
                            wall_s=wall_share, tree=tree.to_json(self.task) if tree is not None else None)



def new_prefixes(seen: set[tuple[str, ...]], steps: Sequence[str]) -> int:
    """How many step prefixes of ``steps`` are not in ``seen`` (added to it): a solution's verifier cost.

    A verifier scores every prefix of the steps it is given; one already scored (a tree node's ancestors,
    a step shared by two samples) costs nothing new. So a beam's child counts 1 and a full sample of 5
    steps 5; a sweep's ``verifier_sequences`` is this count, per problem.

    >>> seen = set(); new_prefixes(seen, ["a", "b"]), new_prefixes(seen, ["a", "c"]), new_prefixes(seen, ["a"])
    (2, 1, 0)
    """
    fresh = {tuple(steps[:i]) for i in range(1, len(steps) + 1)} - seen
    seen |= fresh
    return len(fresh)


# --------------------------------------------------------------------------------------------
# selection rules shared by several strategies
# --------------------------------------------------------------------------------------------

def vote(task: Task, answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """Answer with the largest (weighted) count; ties go to the answer seen first. None never wins."""
    tally: dict[str, float] = {}
    first: dict[str, int] = {}
    rep: dict[str, str] = {}
    for i, a in enumerate(answers):
        key = task.normalize(a)
        if key is None:
            continue
        tally[key] = tally.get(key, 0.0) + (1.0 if weights is None else float(weights[i]))
        first.setdefault(key, i)
        rep.setdefault(key, a)  # type: ignore[arg-type]
    if not tally:
        return None
    best = max(tally, key=lambda k: (tally[k], -first[k]))
    return rep[best]


def pick(task: Task, candidates: Sequence[Candidate], rule: str) -> Candidate | None:
    """``best``: highest score (ties: first); ``weighted``: the candidate of the weighted-majority answer
    with the highest score."""
    if not candidates:
        return None
    if rule == "best":
        return max(candidates, key=lambda c: (c.score if c.score is not None else float("-inf")))
    ans = vote(task, [c.answer for c in candidates], [max(c.score or 0.0, 0.0) for c in candidates])
    if ans is None:
        return pick(task, candidates, "best")
    key = task.normalize(ans)
    same = [c for c in candidates if task.normalize(c.answer) == key]
    return pick(task, same, "best")


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

#: the settings every strategy's sampling reads
SAMPLING = ("temperature", "top_p", "seed", "prompt_style")
#: the settings of step-level search (the tree strategies)
STEPWISE = SAMPLING + ("n", "expansions", "max_steps", "step_tokens", "step_delimiter", "aggregation")


class Strategy(ABC):
    """One test-time search strategy, in its own file, registered with ``@register_strategy(name)``.

    ``uses`` names the :class:`SearchSettings` fields it reads; :meth:`needs_verifier` says whether it
    scores with a verifier under given settings; :meth:`run` searches. A strategy that only chooses
    among independent full samples also overrides :meth:`select`: a sweep then draws one pool of
    samples for every budget and calls ``select`` on it rather than ``run``.
    """

    uses: tuple[str, ...] = ()

    def needs_verifier(self, settings: SearchSettings) -> bool:
        return False

    @abstractmethod
    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        """Search every problem at once; one result per problem, in order."""

    def select(self, task: Task, problem: Problem, candidates: Sequence[Candidate]) -> Candidate | None:
        """The candidate to answer with, among full samples already drawn (scored when
        :meth:`needs_verifier`); None when there are none."""
        raise DeliberateError(f"{type(self).__name__} searches; it does not select from a pool of samples")

    @property
    def selects_from_pool(self) -> bool:
        return type(self).select is not Strategy.select


class FunctionStrategy(Strategy):
    """A plain ``run(problems, ctx)`` function registered as a strategy (how plug-ins could always write
    one). It cannot say whether it needs a verifier: ``ctx.score`` fails clearly if it does."""

    uses = tuple(SearchSettings.__dataclass_fields__)  # it may read any of them

    def __init__(self, fn: Callable[[Sequence[Problem], SearchContext], list[SearchResult]]):
        self.fn = fn

    def run(self, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
        return self.fn(problems, ctx)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

Registered = TypeVar("Registered")  # a Strategy subclass, or a plain run(problems, ctx) function
#: the strategy registry: its entries are Strategy subclasses or plain ``run(problems, ctx)`` functions
STRATEGIES = Registry("search strategy", "search strategies", positional=2,
                      builtins=[f"deliberate.search.{m}" for m in
                                ("majority", "best_of_n", "weighted", "beam", "dvts", "mcts", "tot", "reflection")])


def register_strategy(name: str, *, override: bool = False) -> Callable[[Registered], Registered]:
    """Register a :class:`Strategy` subclass (or a plain ``run(problems, ctx)`` function) under ``name``
    (see :mod:`deliberate.registry`)."""
    return STRATEGIES.register(name, override=override)


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    return as_strategy(STRATEGIES.get(name))


def as_strategy(registered: Any) -> Strategy:
    """A :class:`Strategy` instance from what ``register_strategy`` decorated (a class or a function)."""
    if isinstance(registered, type) and issubclass(registered, Strategy):
        return registered()
    return FunctionStrategy(registered)


def run_search(name: str, problems: Sequence[Problem], ctx: SearchContext) -> list[SearchResult]:
    """Run strategy ``name`` on ``problems``; wall time is shared equally among the problems."""
    strategy = get_strategy(name)
    if strategy.needs_verifier(ctx.settings) and ctx.verifier is None:
        raise DeliberateError(f"strategy {name!r} needs a verifier (--verifier prm:DIR, orm:DIR, oracle ...)")
    t0 = time.perf_counter()
    results = strategy.run(problems, ctx)
    dt = time.perf_counter() - t0
    for r in results:
        r.wall_s = dt / max(1, len(results))
    return results
