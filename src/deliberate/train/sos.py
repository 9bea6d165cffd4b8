"""Stream of Search on ``countdown``: train on whole searches (dead ends, backtracking) vs optimal paths.

    deliberate train sos --out runs/sos
    deliberate train sos --model smollm2 --n-train 512 --tokens 60000 --lr 1e-5 --batch-size 8 --warmup 0 \
        --weight-decay 0 --max-tokens 256 --eval-problems 50 --eval-n 4 --out runs/sos-smollm2

Gandhi et al., 2024, "Stream of Search (SoS): Learning to Search in Language". The symbolic solver
(:func:`deliberate.tasks.countdown.search_stream`) searches each training problem (DFS by default,
children ordered by the ``nearest`` heuristic) and writes two texts from the *same* search:

* **stream** — every state it visits, in order, with dead ends marked ``x`` and the solution ``!``
  (indentation gives the depth, so a line back at a shallower indent is a backtrack), then the
  ``Answer:`` line;
* **path** — the solution's operations and the ``Answer:`` line only (what SFT on gold solutions uses).

Two models of the same size are trained, one per condition, through the
:class:`~deliberate.policy.Policy` (:meth:`~deliberate.policy.Policy.finetune`), on the same problems and
the **same number of training tokens** (prompt + completion tokens, counted like every recipe's
``tokens_trained``): the path model, whose examples are shorter, sees more of them. By default both
start from one tiny model initialised **from scratch** (the paper's setting; ``--model-*`` set its
shape); ``--model`` (a tiny or HF checkpoint directory, or ``smollm2``; a raw ``.gguf`` cannot be
fine-tuned) starts both from that model instead, prompts through its chat template when it has one
(``--no-chat`` turns it off). Problems whose stream does not fit the model's context (counted in the
model's own tokens, chat template included) or needs more than ``max_states`` states are left out of
*both* conditions. Both are evaluated through the policy's sampler on the same held-out problems with the
task's exact checker: greedy, pass@n and maj@n (votes by expression), and the generated tokens each
spends (a stream model spends more test-time compute by design; the table says how much).
``max_tokens`` caps the generation (default: what the context leaves after the longest test prompt,
which for a pretrained model's long context is far more than a stream needs).

``pretrain_tokens`` > 0 first trains the shared initialisation on **arithmetic facts** (lines
``a op b=c``: every operation the search can take from the root of a puzzle or from a state one
operation below it, on puzzles drawn apart from the training ones, ``facts_per_example`` lines per
example), so both conditions start from a model that can do the arithmetic of a search step; the
comparison then isolates what streams vs paths teach. The facts favour neither condition: they are
all legal operations, not the ones a search or a solution picks. Their tokens are counted once
(``pretrain`` in the summary), apart from the equal per-condition budget. The facts go through the same
:meth:`~deliberate.policy.Policy.finetune` as the conditions, so they apply to any ``--model`` too (an
empty prompt, the fact lines as the completion; with a chat template the prompt is an empty user turn).

``OUT/{stream,path}/`` hold each model, its fine-tune record and evaluation; ``OUT/summary.json`` the
comparison. Rerunning the command skips finished parts (a model is written atomically at the end of
its training; a run killed during training redoes that training, with the same result).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.models.hf import ChatText
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.policy import FinetuneSettings, Policy, TinyPolicy, load_policy
from deliberate.policy.tiny import save_model
from deliberate.records import write_json_atomic
from deliberate.tasks import get_task
from deliberate.tasks.countdown import STREAM_STRATEGIES, State, children, nearest, search_stream
from deliberate.train.selfimprove import Stopwatch, acc_cell, evaluate_policy, start_run

CONDITIONS = ("stream", "path")


@dataclass(frozen=True)
class SoSConfig:
    init: str | None = None  # --model: both conditions start from this policy (None: a tiny model from scratch)
    chat: bool | None = None  # chat template: None = when the model's tokenizer has one
    task_options: dict[str, Any] = field(default_factory=lambda: {"n_numbers": 3, "min_number": 1, "max_number": 20,
                                                                  "min_target": 10, "max_target": 100})
    strategy: str = "dfs"
    heuristic: bool = True  # order children by distance to the target (the paper's heuristic-guided search)
    max_states: int = 24  # ~90% of 3-number puzzles; longer searches are left out (and bound the padding)
    n_train: int = 20000
    pretrain_tokens: int = 0  # arithmetic-facts pre-training of the shared init (0: from scratch, the paper's setting)
    facts_per_example: int = 8
    model: TinyConfig = field(default_factory=TinyConfig)
    # training of each model from scratch; ``tokens`` is the per-condition budget (prompt + completion)
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(lr=3e-3, warmup=50,
                                                                              tokens=2_500_000))
    eval_problems: int = 200
    eval_n: int = 8
    max_tokens: int | None = None  # generation cap at evaluation (None: what the context leaves)
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/sos"

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_states", "n_train", "eval_problems", "eval_n", "facts_per_example"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if self.strategy not in STREAM_STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STREAM_STRATEGIES)} (got {self.strategy!r})")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", TinyConfig(**self.model))
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneSettings(**self.finetune))
        if not isinstance(self.finetune.tokens, int) or self.finetune.tokens < 1:
            problems.append(f"tokens (the per-condition training budget) must be an integer >= 1 "
                            f"(got {self.finetune.tokens!r})")
        if not isinstance(self.pretrain_tokens, int) or self.pretrain_tokens < 0:
            problems.append(f"pretrain_tokens must be an integer >= 0 (got {self.pretrain_tokens!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if self.init is None and self.chat:
            problems.append("chat needs --model (the from-scratch tiny model has no chat template)")
        if self.init is not None and self.model != TinyConfig():
            problems.append("the --model-* flags shape the from-scratch tiny model; a --model brings its own")
        if problems:
            raise DeliberateError("sos: " + "; ".join(problems))


def as_given(prompt: str) -> str:
    """The prompt of a model without a chat template: the task's text itself."""
    return prompt


@dataclass(frozen=True)
class ModelContext:
    """How a model sees text, for the context-fit filter: its tokenizer (no special tokens), whether its
    sampler prepends a BOS, its positions, and the text it is given for a task prompt (the chat template
    applied for chat models). An example costs BOS + prompt + completion + EOS positions."""

    encode: Callable[[str], list[int]]
    bos: int  # 1 when a BOS is prepended, else 0
    max_len: int
    prompt: Callable[[str], str] = as_given

    @classmethod
    def of(cls, policy: Policy) -> ModelContext:
        """The context of ``policy``, read off a backend on its checkpoint (the sampler's tokenizer and the
        model's ``max_position_embeddings``)."""
        backend = policy.backend()
        try:
            tok, max_len = backend.engine.tokenizer, backend.engine.max_positions
        finally:
            backend.close()
        if not max_len:
            raise DeliberateError(f"sos: {policy.path} does not say its context length (max_position_embeddings)")
        return cls(tok.encode, int(getattr(tok, "bos_token_id", None) is not None), int(max_len),
                   policy.training_prompt)

    def example_tokens(self, prompt: str, completion: str) -> int:
        return len(self.encode(prompt + completion)) + self.bos + 1

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.encode(prompt)) + self.bos


def build_pairs(cfg: SoSConfig, ctx: ModelContext) -> tuple[dict[str, list[tuple[str, str]]], dict[str, Any]]:
    """(prompt, completion) pairs per condition, over the same problems, and dataset statistics; the prompts
    are the texts the model is trained on (``ctx.prompt``)."""
    task = get_task("countdown", **cfg.task_options)
    problems = task.problems("train", cfg.n_train, seed=cfg.seed)
    pairs: dict[str, list[tuple[str, str]]] = {c: [] for c in CONDITIONS}
    dropped = 0
    for p in problems:
        made = search_stream(p.metadata["numbers"], p.metadata["target"], cfg.strategy,
                             nearest if cfg.heuristic else None, cfg.max_states)
        prompt = ctx.prompt(task.prompt(p))
        if made is None or ctx.example_tokens(prompt, made[0]) > ctx.max_len:
            dropped += 1
            continue
        pairs["stream"].append((prompt, made[0]))
        pairs["path"].append((prompt, made[1]))
    if not pairs["stream"]:
        raise DeliberateError(f"sos: no training stream fits the model's context ({ctx.max_len} positions); raise "
                              "--model-max-len (the from-scratch model) or --max-states, or make the puzzles smaller")
    stats = {"problems": len(problems), "kept": len(pairs["stream"]), "dropped": dropped}
    for c in CONDITIONS:
        lens = sorted(ctx.example_tokens(q, a) for q, a in pairs[c])
        stats[f"{c}_mean_tokens"] = round(sum(lens) / len(lens), 1)
        stats[f"{c}_max_tokens"] = lens[-1]
    return pairs, stats


#: the facts come from puzzles of another seed stream than the training problems
FACTS_SEED_OFFSET = 1_000_003


def arithmetic_facts(cfg: SoSConfig, n_examples: int, offset: int = FACTS_SEED_OFFSET) -> list[tuple[str, str]]:
    """``n_examples`` (empty prompt, ``facts_per_example`` lines ``a op b=c``) pairs: each line an
    operation the search can take from a puzzle's root or from one of its depth-1 states, drawn
    uniformly from all of them, on puzzles of the task's distribution (seeded apart from training)."""
    task = get_task("countdown", **cfg.task_options)
    rng = random.Random(cfg.seed * 7919 + offset)
    puzzles = task.problems("train", max(1, n_examples // 4), seed=cfg.seed + offset)
    legal = []  # per puzzle: every operation from its root or from a depth-1 state
    for p in puzzles:
        first = children(State(tuple(p.metadata["numbers"]), tuple(map(str, p.metadata["numbers"])), ()))
        legal.append([c.steps[-1] for c in first] + [g.steps[-1] for c in first for g in children(c)])
    return [("", "\n".join(rng.choice(legal[k % len(legal)]) for _ in range(cfg.facts_per_example)))
            for k in range(n_examples)]


def fact_accuracy(policy: Policy, cfg: SoSConfig, n: int = 400) -> dict[str, Any]:
    """Greedy accuracy of ``policy`` on ``n`` fact lines of the pre-training distribution (drawn with another
    seed; the fact space is finite, so some may also be training lines): prompt ``a op b=`` after the text the
    facts were trained behind (nothing for a plain model, an empty user turn for a chat model), the answer
    must be ``c``. Overall and per operator."""
    lines = [ln for _, text in arithmetic_facts(cfg, -(-n // cfg.facts_per_example), offset=FACTS_SEED_OFFSET + 1)
             for ln in text.split("\n")][:n]
    head = policy.training_prompt("")
    # a chat model's head is already rendered: ChatText keeps its backend from wrapping the line again
    prompts = [ChatText(head + q) if head else q for q in (ln.split("=")[0] + "=" for ln in lines)]
    backend = policy.backend()
    try:
        outs = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8, stop=["\n"]))
    finally:
        backend.close()
    by_op: dict[str, list[int]] = {}
    for ln, o in zip(lines, outs):
        got = o[0].text.strip()
        op = re.search(r"[+\-*/]", ln)[0]
        c = by_op.setdefault(op, [0, 0])
        c[0] += got == ln.split("=")[1]
        c[1] += 1
    return {"facts": len(lines), "accuracy": sum(c[0] for c in by_op.values()) / max(1, len(lines)),
            "by_op": {k: c[0] / c[1] for k, c in sorted(by_op.items())}}


def run_sos(cfg: SoSConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) both conditions from ``cfg.init`` (or a from-scratch tiny model) and compare them."""
    out, cfg_dict = start_run(cfg)
    if cfg.init is None:
        tok = CharTokenizer()
        init = out / "init"
        if not (init / "config.json").exists():  # the shared from-scratch initialisation of both models
            save_model(build_tiny_model(cfg.model, tok, seed=cfg.seed), tok, init)
        base: Policy = TinyPolicy(init)
    else:
        base = load_policy(cfg.init, chat=cfg.chat)
    try:
        return compare(cfg, base, out, cfg_dict, progress)
    finally:
        base.close()


def compare(cfg: SoSConfig, base: Policy, out: Path, cfg_dict: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Pre-train ``base`` on facts (when asked), train one copy per condition, evaluate both, write the summary."""
    n_params = base.n_params
    ctx = ModelContext.of(base)
    start = base
    pretrain: dict[str, Any] | None = None
    if cfg.pretrain_tokens:
        clock = Stopwatch()
        facts = arithmetic_facts(cfg, max(1000, cfg.pretrain_tokens // (cfg.facts_per_example * 8)))
        settings = FinetuneSettings(lr=cfg.finetune.lr, warmup=cfg.finetune.warmup, batch_size=cfg.finetune.batch_size,
                                    tokens=cfg.pretrain_tokens, bf16=cfg.finetune.bf16)
        res = base.finetune([(ctx.prompt(q), a) for q, a in facts], out / "pretrain", settings, seed=cfg.seed,
                            progress=progress, desc="pre-train on arithmetic facts")
        start = base.with_checkpoint(res.model_dir)
        pretrain = {"model": str(res.model_dir), "examples": len(facts), "tokens_trained": res.tokens_trained,
                    "train_flops": 6.0 * n_params * res.tokens_trained, "train_wall_s": clock(),
                    "fact_accuracy": fact_accuracy(start, cfg)}
    try:
        pairs, stats = build_pairs(cfg, ctx)
        # generation room at test time: whatever the context leaves after the longest test prompt
        task = get_task("countdown", **cfg.task_options)
        longest = max(ctx.prompt_tokens(ctx.prompt(task.prompt(p)))
                      for p in task.problems("test", cfg.eval_problems, seed=cfg.eval_seed))
        max_tokens = ctx.max_len - longest if cfg.max_tokens is None else cfg.max_tokens
        results: dict[str, Any] = {}
        for cond in CONDITIONS:
            d = out / cond
            clock = Stopwatch()
            res = start.finetune(pairs[cond], d, cfg.finetune, seed=cfg.seed, progress=progress,
                                 desc=f"train on {cond}s")
            t_train = clock()
            with start.with_checkpoint(res.model_dir) as trained:
                ev = evaluate_policy(trained, "countdown", cfg.task_options, n_problems=cfg.eval_problems,
                                     n=cfg.eval_n, seed=cfg.eval_seed, out_dir=d / "eval", progress=progress,
                                     max_tokens=max_tokens)
            full = json.loads((d / "eval" / "summary.json").read_text())
            gen = {r["strategy"] if r["strategy"] == "greedy" else f"{r['strategy'].replace('@k', '')}@{r['n']}":
                   r.get("generated_tokens") for r in full["results"]}
            results[cond] = {"model": str(res.model_dir), "init": str(start.path), "tokens_trained": res.tokens_trained,
                             "train_flops": 6.0 * n_params * res.tokens_trained, "train_wall_s": t_train, "eval": ev,
                             "eval_generated_tokens": {k: gen.get(k) for k in ev},
                             "diagnosis": diagnose(d / "eval" / "records.jsonl")}
    finally:
        if start is not base:
            start.close()
    summary = {"recipe": "sos", "config": cfg_dict, "data": stats, "n_params": n_params, "pretrain": pretrain,
               "eval_max_tokens": max_tokens, "results": results}
    write_json_atomic(out / "summary.json", summary)
    return summary


_OP_LINE = re.compile(r"^\s*(\d{1,6})([+\-*/])(\d{1,6})=(\d{1,7})\s*(.*)$")


def diagnose(records: str | Path) -> dict[str, Any]:
    """Why completions fail, from an eval ``records.jsonl`` of countdown (streams or paths).

    Every ``a op b = c`` line is checked: the share of such lines whose arithmetic is wrong (per
    operator too), and each completion's first failure among: arithmetic error anywhere, a line that
    reaches the target but is marked ``x`` (missed target), a ``!`` on a value that is not the target
    (false goal), no finish (length), or other (e.g. an illegal expression)."""
    ops: dict[str, list[int]] = {}
    outcomes: dict[str, int] = {}
    n = 0
    for line in Path(records).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        n += 1
        target = int(r["gold"])
        arith = missed = false_goal = False
        for ln in r["text"].split("\n"):
            m = _OP_LINE.match(ln)
            if not m:
                continue
            a, op, b, v, mark = int(m[1]), m[2], int(m[3]), int(m[4]), m[5].strip()
            true = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            wrong = true != v
            o = ops.setdefault(op, [0, 0])
            o[0] += 1
            o[1] += wrong
            arith |= wrong
            missed |= mark == "x" and v == target
            false_goal |= mark == "!" and v != target
        kind = ("correct" if r["correct"] else "length" if r.get("finish_reason") == "length" else
                "arithmetic error" if arith else "missed target" if missed else
                "false goal" if false_goal else "other")
        outcomes[kind] = outcomes.get(kind, 0) + 1
    lines = sum(o[0] for o in ops.values())
    return {"completions": n, "outcomes": {k: v / max(1, n) for k, v in sorted(outcomes.items())},
            "op_lines": lines, "op_error_rate": sum(o[1] for o in ops.values()) / max(1, lines),
            "op_error_rate_by_op": {k: o[1] / o[0] for k, o in sorted(ops.items())}}


def format_summary(summary: dict[str, Any]) -> str:
    n = summary["config"]["eval_n"]
    keys = ("greedy", f"pass@{n}", f"maj@{n}")
    lines = [f"{'trained on':>10} " + " ".join(f"{k:>18}" for k in keys)
             + f" {'tokens trained':>15} {'greedy gen tok':>14}"]
    for cond, r in summary["results"].items():
        cells = [acc_cell(r["eval"].get(k)) for k in keys]
        lines.append(f"{cond:>10} " + " ".join(f"{c:>18}" for c in cells)
                     + f" {r['tokens_trained']:>15} {r['eval_generated_tokens'].get('greedy') or 0:>14}")
    d = summary["data"]
    lines.append(f"data: {d['kept']} of {d['problems']} training problems (stream mean {d['stream_mean_tokens']} "
                 f"tokens, path mean {d['path_mean_tokens']})")
    if summary.get("pretrain"):
        pre = summary["pretrain"]
        lines.append(f"shared init pre-trained on arithmetic facts: {pre['tokens_trained']} tokens, greedy fact "
                     f"accuracy {pre['fact_accuracy']['accuracy']:.3f}")
    return "\n".join(lines)


HELP = {
    "init": "start both conditions from this model: a tiny or HF checkpoint directory or smollm2 (default: a tiny "
            "model from scratch, shaped by --model-*)",
    "max_tokens": "new tokens per evaluation sample at most (default: what the context leaves)",
    "strategy": "search that writes the streams",
    "heuristic": "order each node's children by distance to the target",
    "max_states": "leave out problems whose search visits more states than this",
    "n_train": "training problems (the same ones for both conditions)",
    "tokens": "training tokens for each condition (prompt + completion; sos: required, the equal-token budget)",
    "pretrain_tokens": "pre-train the shared initialisation on this many tokens of arithmetic facts (0: from scratch)",
    "facts_per_example": "arithmetic-fact lines per pre-training example",
    # the --model-* flags shape the tiny model built from scratch when no --model is given
    **{f"model_{k}": f"from-scratch tiny model (no --model): {what}" for k, what in (
        ("d_model", "width"), ("n_layers", "layers"), ("n_heads", "attention heads"), ("n_kv_heads", "key/value heads"),
        ("mlp_ratio", "MLP width / width"), ("max_len", "context length (characters)"),
        ("rope_theta", "RoPE base"))},
}
