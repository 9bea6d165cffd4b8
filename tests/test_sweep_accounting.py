"""What a sweep and an eval report about themselves (issue 31, items 4, 6 and 7): verifier work as scored
step prefixes, compute summed over resumed invocations, an eval's samples as a sweep's pool, progress
per sample, the taste curve off unless asked, model presets, and the per-problem Parquet table."""

from __future__ import annotations

import json
import random

import pytest
import torch
from fakes import FakeBackend

from deliberate.errors import DeliberateError
from deliberate.eval import evaluate as evaluate_module
from deliberate.eval.evaluate import EvalConfig, run_eval
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.models.engine import Engine
from deliberate.models.sampling import SamplingParams
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model
from deliberate.progress import SampleTicks, sample_done
from deliberate.search.presets import preset_settings
from deliberate.types import Completion

ARITH = {"min_ops": 2, "max_ops": 3, "max_operand": 10}


def solver(prompt: str, rng: random.Random) -> str:
    """Two or three lines of working, then an answer that is right about half the time."""
    steps = [f"{rng.randint(1, 9)}+{rng.randint(1, 9)}={rng.randint(2, 18)}" for _ in range(rng.randint(2, 3))]
    return "\n".join(steps) + f"\nAnswer: {rng.randint(0, 3)}\n"


def sweep(tmp_path, name="s", **kw) -> tuple[dict, SweepConfig]:
    base = dict(task="arith", task_options=ARITH, out_dir=str(tmp_path / name), n_problems=6, budgets=(2, 4),
                seeds=(0,), strategies=("majority", "best_of_n", "weighted", "beam"), verifier="oracle",
                settings={"step_tokens": 40})
    cfg = SweepConfig(**{**base, **kw})
    return run_sweep(cfg, FakeBackend(solver), progress=False), cfg


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_verifier_count_is_the_number_of_step_prefixes_scored(tmp_path):
    summary, cfg = sweep(tmp_path)
    out = tmp_path / "s"
    scores = {(r["problem_id"], r["index"]): r["scores"] for r in map(json.loads, (out / "pool_scores.jsonl").open())}
    pool = {(r["problem_id"], r["index"]): r["text"] for r in map(json.loads, (out / "pool.jsonl").open())}
    for r in rows(out):
        if r["strategy"] == "majority":
            assert r["verifier_sequences"] == 0
        elif r["strategy"] in ("best_of_n", "weighted"):
            # each sample's step prefixes, a prefix shared by two samples counted once
            prefixes = {tuple(pool[(r["problem_id"], j)].split("\n")[:i + 1]) for j in range(r["n"])
                        for i in range(len(scores[(r["problem_id"], j)]))}
            assert r["verifier_sequences"] == len(prefixes) > r["n"]
        else:  # beam: one new prefix per scored child, never its ancestors again
            assert r["verifier_sequences"] >= r["n"]
    by = {(r["strategy"], r["n"]): r for r in summary["results"]}
    assert by[("best_of_n", 4)]["verifier_sequences"] == sum(
        r["verifier_sequences"] for r in rows(out) if (r["strategy"], r["n"]) == ("best_of_n", 4))


def test_compute_sums_over_resumed_invocations(tmp_path):
    first, cfg = sweep(tmp_path, budgets=(2,))
    second, _ = sweep(tmp_path, budgets=(2, 4))  # resumes: draws the samples 3 and 4 of every problem
    assert first["compute"]["invocations"] == 1 and second["compute"]["invocations"] == 2
    lines = [json.loads(x)["compute"] for x in (tmp_path / "s" / "invocations.jsonl").read_text().splitlines()]
    assert second["compute"]["generated_tokens"] == sum(c["generated_tokens"] for c in lines)
    assert second["compute"]["generated_tokens"] > lines[1]["generated_tokens"] > 0
    assert second["compute"]["wall_s"] == pytest.approx(sum(c["wall_s"] for c in lines))
    # eval too
    ecfg = EvalConfig(task="arith", task_options=ARITH, n_problems=4, n=2, out_dir=str(tmp_path / "e"))
    e1 = run_eval(ecfg, FakeBackend(solver), progress=False)
    e2 = run_eval(EvalConfig(**{**ecfg.to_dict(), "n": 4, "ns": None}), FakeBackend(solver), progress=False)
    assert e2["compute"]["invocations"] == 2
    assert e2["compute"]["model_calls"] == e1["compute"]["model_calls"] + 1  # greedy + sample, then sample only


def test_pool_from_an_eval_run_uses_its_samples(tmp_path):
    ecfg = EvalConfig(task="arith", task_options=ARITH, n_problems=6, n=4, seed=0, out_dir=str(tmp_path / "e"))
    ev = run_eval(ecfg, FakeBackend(solver), progress=False)
    backend = FakeBackend(solver)
    cfg = SweepConfig(task="arith", task_options=ARITH, out_dir=str(tmp_path / "s"), n_problems=6, budgets=(4,),
                      strategies=("majority",), pool_from=str(tmp_path / "e"))
    sw = run_sweep(cfg, backend, progress=False)
    assert backend.calls == 0  # every sample came from the eval
    recs = {(r["problem_id"], r["index"]): r["text"] for r in map(json.loads, (tmp_path / "e" / "records.jsonl").open())
            if r["strategy"] == "sample"}
    pool = {(r["problem_id"], r["index"]): r["text"] for r in map(json.loads, (tmp_path / "s" / "pool.jsonl").open())}
    assert pool == recs
    # one tie rule: the eval's maj@4 over its 4 samples is the sweep's majority at N = 4 on the same samples
    acc = {(r["strategy"], r["n"]): r["accuracy"] for r in ev["results"]}
    assert acc[("maj@k", 4)] == next(r["accuracy"] for r in sw["results"] if r["strategy"] == "majority")
    with pytest.raises(DeliberateError, match="drawn differently.*temperature"):
        run_sweep(SweepConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "t"), "settings": {"temperature": 0.5}}),
                  FakeBackend(solver), progress=False)
    with pytest.raises(DeliberateError, match="seed 0.*--seeds"):
        run_sweep(SweepConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "u"), "seeds": (1,)}),
                  FakeBackend(solver), progress=False)


class TickingBackend(FakeBackend):
    """A fake whose samples finish one by one inside the call, reporting each (as the engine does)."""

    def __init__(self, seen: list[int], bar_ref: dict):
        super().__init__(solver)
        self.seen, self.bar_ref = seen, bar_ref

    def generate(self, prompts, params) -> list[list[Completion]]:
        out = super().generate(prompts, params)
        for _ in range(len(prompts) * params.n):
            sample_done(1)
            self.seen.append(self.bar_ref["bar"].n)  # the bar, mid-call
        return out


def test_progress_advances_per_sample_within_one_backend_call(tmp_path, monkeypatch):
    bar_ref, seen = {}, []
    real = evaluate_module.progress_bar

    def recording_bar(total, desc, unit, progress):
        bar_ref["bar"] = real(total, desc, unit, True)
        return bar_ref["bar"]

    monkeypatch.setattr(evaluate_module, "progress_bar", recording_bar)
    cfg = EvalConfig(task="arith", task_options=ARITH, n_problems=4, n=4, greedy=False, batch_size=16,
                     out_dir=str(tmp_path / "e"))
    run_eval(cfg, TickingBackend(seen, bar_ref), progress=False)
    assert seen == list(range(1, 17))  # one call of 16 samples: the bar moved with each
    assert bar_ref["bar"].n == 16


def test_the_engine_reports_each_finished_sample():
    tok = CharTokenizer()
    model = build_tiny_model(TinyConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2), tok, seed=3).eval()
    ticks: list[int] = []

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
            ticks.append(k)

    with torch.no_grad(), SampleTicks(Bar()).during(100):
        Engine(model, tok).generate(["1+1=", "2+3="], SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=0))
    assert sum(ticks) == 6


def test_taste_is_off_unless_asked(tmp_path):
    summary, _ = sweep(tmp_path, strategies=("beam",))
    assert not (tmp_path / "s" / "pool.jsonl").exists()  # a beam-only sweep samples no pool
    summary, _ = sweep(tmp_path, name="m", strategies=("majority",))
    assert "taste" not in summary["extra"] and not (tmp_path / "m" / "taste.png").exists()
    summary, _ = sweep(tmp_path, name="t", strategies=("beam",), taste_sigmas=(0.0, 1.0))
    assert (tmp_path / "t" / "pool.jsonl").exists() and summary["extra"]["taste"]


def test_presets_set_search_settings_and_the_cards_aggregation():
    assert preset_settings("instruct", "rlhflow-prm:x")["aggregation"] == "last"
    assert preset_settings("instruct", "math-shepherd:x")["aggregation"] == "min"
    cfg = SweepConfig(task="arith", out_dir="x", preset="instruct", verifier="orm:DIR",
                      settings={"step_tokens": 100})
    s = cfg.search_settings()
    assert s["step_delimiter"] == "\n\n" and s["aggregation"] == "last" and s["step_tokens"] == 100
    with pytest.raises(DeliberateError, match="unknown preset 'chat'; valid: tiny, instruct"):
        SweepConfig(task="arith", out_dir="x", preset="chat")


def test_a_preset_steers_the_sweep_and_its_step_splitter(tmp_path):
    from deliberate.tasks.arith import ArithTask

    class ParagraphArith(ArithTask):
        stop = ()  # arith ends a completion at a blank line; an instruct model's paragraphs do not

    def paragraphs(prompt, rng):
        return "3+4=7\nso far\n\n7*2=14\n\n" + "and so on " * 20 + "\n\nAnswer: 14"

    cfg = SweepConfig(task="arith", task_options=ARITH, out_dir=str(tmp_path / "p"), n_problems=2, budgets=(2,),
                      strategies=("best_of_n",), verifier="oracle", preset="instruct",
                      settings={"prompt_style": "plain"})
    run_sweep(cfg, FakeBackend(paragraphs), task=ParagraphArith(**ARITH), progress=False)
    scores = [json.loads(x)["scores"] for x in (tmp_path / "p" / "pool_scores.jsonl").read_text().splitlines()]
    assert all(len(s) == 4 for s in scores)  # four paragraphs, not six lines
    pool = [json.loads(x) for x in (tmp_path / "p" / "pool.jsonl").read_text().splitlines()]
    assert all(r["text"].endswith("Answer: 14") for r in pool)  # 2048 tokens a solution, not arith's 96
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["preset"] == "instruct" and saved["search_settings"]["step_delimiter"] == "\n\n"


def test_the_per_problem_table_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    summary, cfg = sweep(tmp_path)
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "s" / "table.parquet"), split="train",
                                  cache_dir=str(tmp_path / "hf-cache"))
    assert len(table) == 6
    row = table[0]
    for col in ("problem", "answer", "completions", "scores", "agg_scores", "preds", "pred_maj@2", "pred_weighted@4",
                "pred_naive@4", "pred_beam@2"):
        assert col in table.column_names, col
    assert len(row["completions"]) == 4 and len(row["scores"]) == 4
    assert all(len(s) == len([x for x in c.split("\n") if x.strip()]) for s, c in zip(row["scores"], row["completions"]))
    # the table's predictions are the sweep's selections, as search-and-learn writes them
    results = {(r["problem_id"], r["strategy"], r["n"]): r for r in rows(tmp_path / "s")}
    for r in table:
        for key, strategy in (("maj", "majority"), ("naive", "best_of_n"), ("weighted", "weighted"), ("beam", "beam")):
            for n in (2, 4):
                ans = results[(r["problem_id"], strategy, n)]["answer"]
                assert r[f"pred_{key}@{n}"] == (None if ans is None else "\\boxed{" + ans + "}")
    assert table.to_pandas().shape[0] == 6


def test_a_preset_is_named_in_a_config_file(tmp_path, tiny_ckpt):
    from deliberate.cli import main_cli

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("task: arith\ntask_arg: [max_ops=2]\npreset: instruct\nverifier: oracle\nn_problems: 2\n"
                   "budgets: [2]\nstrategies: [best_of_n]\nsetting: [prompt_style=plain, max_tokens=48]\n")
    out = tmp_path / "run"
    assert main_cli(["sweep", "--config", str(cfg), "--model", str(tiny_ckpt), "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "instruct"
    assert saved["search_settings"] == {**preset_settings("instruct", "oracle"), "prompt_style": "plain",
                                        "max_tokens": 48}
    assert "preset: instruct" in (out / "config.yaml").read_text()  # the rerun recipe keeps it
