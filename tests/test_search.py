"""Search strategies and sweeps on a scripted policy whose per-step error rate is known.

The fake policy writes the gold arith chain but gets each step's result wrong with probability 0.3
(a wrong value is the gold value + 1, and stays off by one from then on), then writes ``Answer: <last value>``. With the ground-truth
verifier (``oracle``) the selection rules have exactly known behaviour, so these tests check the
search logic itself, independent of any learned model.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from fakes import FakeBackend, step_prefixes

from deliberate.errors import DeliberateError
from deliberate.cli.sweep import parse_verifier_args
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.rewards import get_verifier
from deliberate.search import SearchContext, SearchSettings, run_search, strategy_names
from deliberate.tasks import get_task

TASK = get_task("arith", min_ops=2, max_ops=3, max_operand=10)
PROBLEMS = TASK.problems("test", 12, seed=0)
BY_Q = {p.question: p for p in PROBLEMS}


def noisy_solver(prompt: str, rng: random.Random, p_wrong: float = 0.3) -> str:
    """Continue an arith prompt ``Q: ...\\nA:\\n<prefix>``: remaining gold steps, each wrong w.p. p_wrong."""
    m = re.match(r"Q: (.*)\nA:\n", prompt, re.DOTALL)
    prob = BY_Q[m.group(1)]
    written = [ln for ln in prompt[m.end():].split("\n") if ln.strip()]
    gold = prob.metadata["steps"]
    lines = []
    last = written[-1].rsplit("=", 1)[1] if written and "=" in written[-1] else None
    # once a step is wrong every later value is off too, so the answer is right iff every step is
    off = int(any(w.rsplit("=", 1)[-1] != g.rsplit("=", 1)[1] for w, g in zip(written, gold)))
    for k in range(len(written), len(gold)):
        lhs, c = gold[k].rsplit("=", 1)
        off = max(off, int(rng.random() < p_wrong))
        val = int(c) + off
        lines.append(f"{lhs}={val}")
        last = str(val)
    lines.append(f"Answer: {last}")
    return "\n".join(lines) + "\n\n"


@pytest.fixture()
def ctx_factory():
    backend = FakeBackend(noisy_solver)
    oracle = get_verifier("oracle", task=TASK)

    def make(**kw):
        kw.setdefault("max_tokens", 80)
        return SearchContext(backend, TASK, SearchSettings(**kw), verifier=oracle)

    return make


def _acc(results):
    return sum(TASK.is_correct(r.answer, p) for r, p in zip(results, PROBLEMS)) / len(PROBLEMS)


def test_best_of_n_with_a_perfect_verifier_reaches_pass_at_n(ctx_factory):
    res = run_search("best_of_n", PROBLEMS, ctx_factory(n=8))
    for r, p in zip(res, PROBLEMS):
        assert len(r.candidates) == 8
        any_ok = any(TASK.is_correct(c.answer, p) for c in r.candidates)
        assert TASK.is_correct(r.answer, p) == any_ok
        assert r.generated_tokens == sum(len(c.text) + 2 for c in r.candidates)  # "\n\n" stop counted
        assert r.verifier_sequences == step_prefixes(c.steps for c in r.candidates) and r.model_calls == 1


def test_majority_and_weighted_follow_their_rules(ctx_factory):
    maj = run_search("majority", PROBLEMS, ctx_factory(n=8))
    for r in maj:
        counts = {}
        for c in r.candidates:
            counts[c.answer] = counts.get(c.answer, 0) + 1
        assert counts[r.answer] == max(counts.values())
    w = run_search("weighted", PROBLEMS, ctx_factory(n=8))
    # with 0/1 oracle scores the weighted vote is any correct answer present
    for r, p in zip(w, PROBLEMS):
        assert TASK.is_correct(r.answer, p) == any(TASK.is_correct(c.answer, p) for c in r.candidates)


def test_step_level_search_with_a_perfect_prm_beats_majority(ctx_factory):
    maj = _acc(run_search("majority", PROBLEMS, ctx_factory(n=8)))
    for name in ("beam", "dvts"):
        acc = _acc(run_search(name, PROBLEMS, ctx_factory(n=8, expansions=4)))
        assert acc >= 0.9, (name, acc)
        assert acc > maj
    mcts = _acc(run_search("mcts", PROBLEMS, ctx_factory(n=8, expansions=3)))
    assert mcts >= 0.75


@pytest.mark.parametrize("name,extra", [(n, {}) for n in ("beam", "dvts", "tot")] + [
    ("mcts", {"mcts_value": "prm"}), ("mcts", {"mcts_value": "rollout"}),
    ("mcts", {"mcts_value": "confidence", "mcts_rule": "uct"}), ("tot", {"tot_mode": "dfs", "tot_eval": "vote"})])
def test_trees_are_consistent_and_the_chosen_path_is_connected(ctx_factory, name, extra):
    res = run_search(name, PROBLEMS[:4], ctx_factory(n=4, expansions=2, **extra))
    for r in res:
        nodes = {n["id"]: n for n in r.tree}
        assert nodes[0]["parent"] is None
        for n in r.tree[1:]:
            assert n["parent"] in nodes and n["parent"] < n["id"]
        chosen = [n for n in r.tree if n["chosen"]]
        assert chosen and chosen[0]["id"] == 0
        for n in chosen[1:]:
            assert nodes[n["parent"]]["chosen"]
        # exactly one chosen child per chosen node: a path, not a subtree
        for n in chosen:
            assert sum(1 for k in r.tree if k["parent"] == n["id"] and k["chosen"]) <= 1
        assert r.generated_tokens > 0 and r.model_calls >= 1


def test_mcts_backpropagates_every_iteration(ctx_factory):
    res = run_search("mcts", PROBLEMS[:3], ctx_factory(n=6, expansions=2))
    for r in res:
        root = r.tree[0]
        assert root["visits"] >= 6
        kids = [n for n in r.tree if n["parent"] == 0]
        assert sum(k["visits"] or 0 for k in kids) == root["visits"]


def test_reflection_appends_the_cue_and_rereads_the_answer(ctx_factory):
    def script(prompt, rng):
        return "Answer: 7\n\n" if "Wait!" in prompt else noisy_solver(prompt, rng)

    backend = FakeBackend(script)
    ctx = SearchContext(backend, TASK, SearchSettings(n=3, max_tokens=80), verifier=None)
    res = run_search("reflection", PROBLEMS[:2], ctx)
    for r in res:
        assert len(r.candidates) == 3
        assert r.answer == "7"  # the last attempt's answer
        assert r.text.count("Wait! Maybe I made some mistakes!") == 2


def test_same_seed_same_search_and_seed_changes_it(ctx_factory):
    a = run_search("beam", PROBLEMS[:4], ctx_factory(n=4, seed=3))
    b = run_search("beam", PROBLEMS[:4], ctx_factory(n=4, seed=3))
    c = run_search("beam", PROBLEMS[:4], ctx_factory(n=4, seed=4))
    assert [r.tree for r in a] == [r.tree for r in b]
    assert [r.tree for r in a] != [r.tree for r in c]


def test_bad_strategy_settings_and_missing_verifier_are_clear_errors():
    with pytest.raises(DeliberateError, match="unknown search strategy 'nope'; valid search strategies: beam"):
        run_search("nope", PROBLEMS, SearchContext(FakeBackend(noisy_solver), TASK, SearchSettings()))
    with pytest.raises(DeliberateError, match="needs a verifier"):
        run_search("beam", PROBLEMS, SearchContext(FakeBackend(noisy_solver), TASK, SearchSettings()))
    with pytest.raises(DeliberateError, match="expansions"):
        SearchSettings(expansions=0)
    with pytest.raises(DeliberateError, match="aggregation"):
        SearchSettings(aggregation="max")
    assert set(strategy_names()) >= {"majority", "best_of_n", "weighted", "beam", "dvts", "mcts", "tot", "reflection"}


def test_sweep_resumes_with_one_row_per_key_and_reports_the_ceiling(tmp_path):
    out = tmp_path / "sweep"
    cfg = SweepConfig(task="arith", task_options={"min_ops": 2, "max_ops": 3, "max_operand": 10}, out_dir=str(out),
                      strategies=("majority", "best_of_n", "beam"), budgets=(2, 4), seeds=(0, 1), n_problems=6,
                      verifier="oracle", settings={"max_tokens": 80, "expansions": 2}, taste_sigmas=(0.0, 1.0))
    s1 = run_sweep(cfg, FakeBackend(noisy_solver), progress=False)
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 2 * 2 * 6
    # simulate a kill: drop the last rows and leave a torn line
    (out / "results.jsonl").write_text("\n".join(rows[:-7]) + "\n" + rows[-7][:15])
    s2 = run_sweep(cfg, FakeBackend(noisy_solver), progress=False)
    keys = [tuple(json.loads(x)[k] for k in ("problem_id", "strategy", "n", "seed"))
            for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 72
    acc = lambda s: {(r["strategy"], r["n"]): r["accuracy"] for r in s["results"]}
    assert acc(s1) == acc(s2)
    bon4 = next(r for r in s2["results"] if r["strategy"] == "best_of_n" and r["n"] == 4)
    assert bon4["accuracy"] == pytest.approx(bon4["own_ceiling"])  # a perfect verifier finds any correct one
    assert bon4["fraction_of_ceiling"] == pytest.approx(bon4["accuracy"] / bon4["pass_at_n"])
    # the perfect verifier (sigma 0) reaches pass@N on the taste curve
    taste = s2["extra"]["taste"]
    for n in (1, 2, 4):
        perfect = next(t["accuracy"] for t in taste if t["sigma"] == 0.0 and t["n"] == n)
        ceiling = next(t["accuracy"] for t in taste if t["sigma"] == "pass@n" and t["n"] == n)
        assert perfect == pytest.approx(ceiling)
    for f in ("summary.json", "accuracy.png", "token_buckets.png", "taste.png", "trees.jsonl"):
        assert (out / f).exists()
    # a different config in the same directory is refused
    with pytest.raises(DeliberateError, match="different config"):
        run_sweep(SweepConfig(**{**cfg.to_dict(), "verifier": "noisy:0.5"}), FakeBackend(noisy_solver),
                  progress=False)



def test_sweep_verifier_args_reach_the_verifier_and_only_scoring_ones_pin_a_resume(tmp_path, monkeypatch):
    import deliberate.eval.sweep as sw
    from deliberate.models.tiny import CharTokenizer, TinyConfig
    from deliberate.rewards.models import build_reward_model, save_reward_model

    tok = CharTokenizer()
    save_reward_model(build_reward_model(tok, model_config=TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2)),
                      tok, tmp_path / "prm", {"kind": "prm"})
    seen = []
    real = sw.get_verifier
    monkeypatch.setattr(sw, "get_verifier", lambda spec, **kw: (seen.append(kw), real(spec, **kw))[1])
    out = tmp_path / "sweep"
    base = dict(task="arith", task_options={"min_ops": 2, "max_ops": 3, "max_operand": 10}, out_dir=str(out),
                strategies=("best_of_n",), budgets=(2,), n_problems=3, verifier=f"prm:{tmp_path / 'prm'}",
                settings={"max_tokens": 60}, taste_sigmas=())
    cfg = SweepConfig(**base, verifier_args={"device": "cpu", "batch_size": 8})
    run_sweep(cfg, FakeBackend(noisy_solver), progress=False)
    assert seen[-1]["device"] == "cpu" and seen[-1]["batch_size"] == 8
    assert json.loads((out / "config.json").read_text())["verifier_args"] == {"device": "cpu", "batch_size": 8}
    # where and how fast the verifier runs may change on resume; so may a config written before the field
    run_sweep(SweepConfig(**base, verifier_args={"batch_size": 2}), FakeBackend(noisy_solver), progress=False)
    old = json.loads((out / "config.json").read_text())
    del old["verifier_args"]
    (out / "config.json").write_text(json.dumps(old))
    run_sweep(SweepConfig(**base), FakeBackend(noisy_solver), progress=False)
    # an option that changes the scores pins the directory (compared as JSON stores it: tuples are lists there)
    sw.check_resume(out, {**old, "verifier_args": {}, "task_options": dict(old["task_options"])})
    (out / "config.json").write_text(json.dumps({**old, "verifier_args": {"answers": ["Y", "N"]}}))
    sw.check_resume(out, {**old, "verifier_args": {"answers": ("Y", "N"), "device": "cuda"}})
    (out / "config.json").write_text(json.dumps(old))
    meta = {**old, "verifier_args": {"positive_label": 0}}
    with pytest.raises(DeliberateError, match="verifier_args: \\{\\} on disk vs \\{'positive_label': 0\\} now"):
        sw.check_resume(out, meta)
    with pytest.raises(DeliberateError, match="bad options for verifier 'oracle': unknown option 'device'"):
        SweepConfig(**{**base, "verifier": "oracle"}, verifier_args={"device": "cpu"})
    with pytest.raises(DeliberateError, match="--verifier-arg needs --verifier"):
        SweepConfig(**{**base, "verifier": None}, verifier_args={"device": "cpu"})
    assert parse_verifier_args(["separator=\\n\\n", "positive_label=1", "device=cuda", "answers=Yes,No", "cue=ok?\\n"]) == \
        {"separator": "\n\n", "positive_label": 1, "device": "cuda", "answers": ("Yes", "No"), "cue": "ok?\n"}


def test_mcts_with_a_budget_too_small_to_reach_an_answer_completes_its_path(ctx_factory):
    """One iteration cannot reach depth 3: the chosen path is finished by a rollout, so every problem
    still gets an answer (and that rollout's tokens are counted)."""
    res = run_search("mcts", PROBLEMS[:4], ctx_factory(n=1, expansions=2))
    for r in res:
        assert r.answer is not None
        assert r.text.strip().splitlines()[-1].startswith("Answer:")
        assert r.model_calls == 2


def test_pool_from_reuses_samples_and_refuses_a_different_sampling(tmp_path):
    base = dict(task="arith", task_options={"min_ops": 2, "max_ops": 3, "max_operand": 10},
                strategies=("majority", "best_of_n"), budgets=(2, 4), seeds=(0,), n_problems=4,
                settings={"max_tokens": 80}, taste_sigmas=())
    first = SweepConfig(out_dir=str(tmp_path / "a"), verifier="oracle", **base)
    s1 = run_sweep(first, FakeBackend(noisy_solver), progress=False)
    backend = FakeBackend(noisy_solver)
    s2 = run_sweep(SweepConfig(out_dir=str(tmp_path / "b"), verifier="noisy:0.5", pool_from=str(tmp_path / "a"),
                               **base), backend, progress=False)
    assert backend.calls == 0 and s2["compute"]["generated_tokens"] == 0  # no sampling: same samples
    maj = lambda s: [r["accuracy"] for r in s["results"] if r["strategy"] == "majority"]
    assert maj(s1) == maj(s2)
    other = {**base, "settings": {"max_tokens": 80, "temperature": 0.5}}
    with pytest.raises(DeliberateError, match="drawn differently.*temperature"):
        run_sweep(SweepConfig(out_dir=str(tmp_path / "c"), verifier="oracle", pool_from=str(tmp_path / "a"),
                              **other), FakeBackend(noisy_solver), progress=False)


def test_step_delimiter_sets_the_step_stop_and_the_prefix_join(ctx_factory):
    seen = []

    class Spy(FakeBackend):
        def generate(self, prompts, params):
            seen.append((prompts, params.stop))
            return super().generate(prompts, params)

    ctx = SearchContext(Spy(noisy_solver), TASK, SearchSettings(n=2, expansions=2, max_tokens=80,
                                                                step_delimiter="\n"), verifier=None)
    assert ctx.prefix(["a", "b"]) == "a\nb\n"
    para = SearchContext(Spy(noisy_solver), TASK, SearchSettings(step_delimiter="\n\n"))
    assert para.prefix(["a", "b"]) == "a\n\nb\n\n"
    para.generate([(PROBLEMS[0], "")], 1, step=True)
    assert seen[-1][1] == ("\n\n",)
    with pytest.raises(DeliberateError, match="step_delimiter"):
        SearchSettings(step_delimiter="")
