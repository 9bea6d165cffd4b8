"""Verifiers: aggregation, the tiny PRM/ORM (training learns a learnable labelling), Monte-Carlo labels
(resumable, soft labels are fractions of k), PRM800K round trip, HF checkpoints, GenRM, bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from deliberate.errors import DeliberateError
from deliberate.rewards import aggregate, get_verifier
from deliberate.tasks import get_task
from deliberate.types import Problem

TASK_OPTS = {"min_ops": 1, "max_ops": 3, "max_operand": 15}


@pytest.fixture(scope="module")
def task():
    return get_task("arith", **TASK_OPTS)


def _corrupt(steps: list[str], rng: random.Random) -> list[str]:
    """Gold steps with one result made wrong by appending two digits: a slip that a tiny model can learn
    to spot in a few dozen steps (the point is that training learns, not that the slip is subtle)."""
    steps = list(steps)
    i = rng.randrange(len(steps))
    steps[i] = f"{steps[i]}{rng.randint(1, 9)}{rng.randint(0, 9)}"
    return steps


def _labelled_rows(task, n: int, seed: int, answer_only: bool = False) -> list[dict]:
    """Gold and corrupted solutions labelled by the ground-truth step checker (a learnable labelling).

    ``answer_only`` corrupts the answer line instead, where an ORM (supervised at the end only)
    can see the slip at the position it is trained on."""
    rng = random.Random(seed)
    rows = []
    for p in task.problems("train", n, seed=seed):
        gold = list(p.metadata["steps"]) + [f"Answer: {p.answer}"]
        bad = (list(p.metadata["steps"]) + _corrupt([f"Answer: {p.answer}"], rng) if answer_only
               else _corrupt(p.metadata["steps"], rng) + [f"Answer: {p.answer}"])
        for steps in (gold, bad):
            ok = [float(x) for x in task.step_correct(p, steps)]
            rows.append({"problem_id": p.id, "index": len(rows), "question": p.question, "gold": p.answer,
                         "steps": steps, "soft": ok, "hard": ok, "outcome": bool(ok[-1])})
    return rows


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------

def test_aggregation():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert aggregate([], "min") == 0.0
    with pytest.raises(DeliberateError, match="unknown aggregation"):
        aggregate(s, "max")


# ---------------------------------------------------------------------------------------------
# PRM / ORM training on a trivially learnable labelling
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labels_file(tmp_path_factory, task):
    d = tmp_path_factory.mktemp("labels")
    f = d / "labels.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _labelled_rows(task, 200, seed=1)))
    return f


@pytest.fixture(scope="module")
def outcome_labels_file(tmp_path_factory, task):
    f = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _labelled_rows(task, 200, seed=1, answer_only=True)))
    return f


def _auc_on_test(verifier, task, kind: str) -> float:
    from deliberate.train.verifier import auc

    rows = _labelled_rows(task, 60, seed=7, answer_only=kind == "orm")
    probs = [Problem(r["problem_id"], r["question"], r["gold"], {}) for r in rows]
    scores = verifier.score_batch([(p, r["steps"]) for p, r in zip(probs, rows)])
    if kind == "prm":
        return auc([x for s in scores for x in s], [y > 0 for r in rows for y in r["hard"]])
    return auc([s[-1] for s in scores], [r["outcome"] for r in rows])


@pytest.mark.parametrize("kind", ["prm", "orm"])
def test_reward_model_learns_step_correctness(kind, labels_file, outcome_labels_file, tiny_ckpt, tmp_path, task):
    from deliberate.train.verifier import VerifierTrainConfig, train_verifier

    labels = labels_file if kind == "prm" else outcome_labels_file
    cfg = VerifierTrainConfig(kind=kind, labels=str(labels), task_options=TASK_OPTS, init_from=str(tiny_ckpt),
                              steps=80, batch_size=32, lr=3e-3, warmup=5, val_frac=0.0, checkpoint_every=80,
                              out=str(tmp_path / kind))
    final = train_verifier(cfg, progress=False)
    m = json.loads((tmp_path / kind / "metrics.json").read_text())
    assert m["final_loss_ema"] < m["first_loss"] - 0.03
    v = get_verifier(f"{kind}:{final}", task=task)
    assert v.describe()["kind"] == kind
    a = _auc_on_test(v, task, kind)
    assert a > 0.65, f"{kind} AUC {a}"
    # the training output directory works too, and scores are probabilities, one per step
    v2 = get_verifier(f"{kind}:{tmp_path / kind}", task=task)
    p = task.problems("test", 1)[0]
    sc = v2.score(p, list(p.metadata["steps"]) + [f"Answer: {p.answer}"])
    assert len(sc) == len(p.metadata["steps"]) + 1 and all(0 <= x <= 1 for x in sc)
    assert v2.stats.calls == 1 and v2.stats.sequences == 1 and v2.stats.tokens > 0
    assert v2.score(p, []) == []


def test_reward_model_batching_is_consistent(tiny_ckpt, task, tmp_path):
    """Scores do not depend on what else is in the batch (right padding + causal attention)."""
    from deliberate.models.tiny import CharTokenizer
    from deliberate.rewards.models import StepRewardModel, build_reward_model

    tok = CharTokenizer.load(tiny_ckpt)
    model = build_reward_model(tok, init_from=tiny_ckpt)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    v = StepRewardModel(model, tok, kind="prm", task=task, batch_size=3)
    items = [(p, list(p.metadata["steps"])) for p in task.problems("test", 7)]
    together = v._score_full(items)
    alone = [v._score_full([(p, s)])[0] for p, s in items]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5)
    assert v.stats.calls == 3 + 7 and v.stats.sequences == 14


def test_incremental_scoring_matches_full_forward(tiny_ckpt, task):
    """Search scores children of scored parents from the parent's cached KV: same numbers, fewer tokens."""
    from deliberate.models.tiny import CharTokenizer
    from deliberate.rewards.models import StepRewardModel, build_reward_model

    tok = CharTokenizer.load(tiny_ckpt)
    model = build_reward_model(tok, init_from=tiny_ckpt)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    v = StepRewardModel(model, tok, kind="prm", task=task)
    probs = task.problems("test", 6)
    chains = [(p, list(p.metadata["steps"]) + [f"Answer: {p.answer}"]) for p in probs]
    full = v._score_full(chains)
    tokens_full = v.stats.tokens
    v.stats.tokens = 0
    depth = max(len(s) for _, s in chains)
    for k in range(1, depth + 1):  # round by round, as a beam search asks
        got = v.score_batch([(p, s[:k]) for p, s in chains if len(s) >= k])
        want = [f[:k] for (p, s), f in zip(chains, full) if len(s) >= k]
        for a, b in zip(got, want):
            assert a == pytest.approx(b, abs=1e-5)
    # each token ran once, as in one full pass over the finished chains; scoring every round's prefixes
    # from scratch would have run each prompt `depth` times
    from_scratch = sum(len(v.encode(p, s[:k])[0]) for p, s in chains for k in range(1, len(s) + 1))
    assert v.stats.tokens <= tokens_full < from_scratch / 2


def test_train_resume_equals_uninterrupted(labels_file, tiny_ckpt, tmp_path, task, monkeypatch):
    import deliberate.train.verifier as tv

    base = dict(kind="prm", labels=str(labels_file), task_options=TASK_OPTS, init_from=str(tiny_ckpt), steps=8,
                batch_size=8, warmup=2, val_frac=0.1, checkpoint_every=4)
    a = tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "a")), progress=False)
    # the same run killed during step 6 (after the step-4 checkpoint), then rerun: resumes from step 4
    real, calls = tv._loss, []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(tv, "_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "b")), progress=False)
    monkeypatch.setattr(tv, "_loss", real)
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    b = tv.train_verifier(tv.VerifierTrainConfig(**base, out=str(tmp_path / "b")), progress=False)
    pa = get_verifier(f"prm:{a}", task=task)
    pb = get_verifier(f"prm:{b}", task=task)
    for x, y in zip(pa.model.state_dict().values(), pb.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6)
    with pytest.raises(DeliberateError, match="different config"):
        tv.train_verifier(tv.VerifierTrainConfig(**{**base, "lr": 0.5}, out=str(tmp_path / "b")), progress=False)


def test_train_verifier_device(labels_file, tiny_ckpt, tmp_path):
    """Verifier training runs on ``device`` (``auto``: a CUDA GPU where there is one). Without CUDA, asking
    for it fails before anything is written; the device is recorded; on a GPU (PRM, and GenRM with its SFT
    mix) the weights land within float rounding of the CPU's, and the model loads on the CPU."""
    import deliberate.train.verifier as tv
    from deliberate.models.tiny import load_tiny

    cuda = torch.cuda.is_available()
    base = dict(labels=str(labels_file), task_options=TASK_OPTS, init_from=str(tiny_ckpt), steps=6, batch_size=8,
                warmup=2, val_frac=0.1, checkpoint_every=6)
    if not cuda:
        with pytest.raises(DeliberateError, match="train prm: device 'cuda' requested but CUDA is not available"):
            tv.train_verifier(tv.VerifierTrainConfig(kind="prm", **base, out=str(tmp_path / "gpu")), progress=False,
                              device="cuda")
        assert not (tmp_path / "gpu").exists()
    init = dict(load_tiny(tiny_ckpt)[0].named_parameters())
    for kind in ("prm", "genrm") if cuda else ("prm",):
        extra = {"sft_mix": 0.25} if kind == "genrm" else {}
        flat = []
        for dev in ("cpu", "cuda") if cuda else ("cpu",):
            out = tmp_path / f"{kind}-{dev}"
            final = tv.train_verifier(tv.VerifierTrainConfig(kind=kind, **base, **extra, out=str(out)), progress=False,
                                      device=dev)
            assert json.loads((out / "metrics.json").read_text())["device"].startswith(dev)
            assert json.loads((out / "compute.json").read_text())["device"].startswith(dev)
            got = dict(get_verifier(f"{kind}:{final}", task=get_task("arith", **TASK_OPTS)).model.named_parameters())
            keys = [k for k in got if k in init and got[k].shape == init[k].shape]  # the shared backbone
            assert len(keys) > 4
            flat.append(torch.cat([got[k].detach().float().cpu().flatten() for k in keys]))
        if cuda:  # the backbone moved, and the GPU run moved it as the CPU run did
            moved = (flat[0] - torch.cat([init[k].detach().flatten() for k in keys])).abs().mean()
            assert moved > 0 and (flat[1] - flat[0]).abs().mean() < 0.05 * moved


# ---------------------------------------------------------------------------------------------
# Monte-Carlo labels
# ---------------------------------------------------------------------------------------------

def _mc_cfg(tmp_path, tiny_ckpt, **kw):
    from deliberate.rewards.mc_labels import MCConfig

    return MCConfig(task="arith", task_options=TASK_OPTS, n_problems=3, samples=2, rollouts=3, max_tokens=48,
                    batch_problems=2, model=str(tiny_ckpt), out=str(tmp_path / "mc"), **kw)


def test_mc_labels_are_fractions_and_resumable(tmp_path, tiny_ckpt, task):
    from deliberate.models.tiny import TinyBackend
    from deliberate.rewards.mc_labels import label_mc, read_labels

    backend = TinyBackend(tiny_ckpt)
    meta = label_mc(_mc_cfg(tmp_path, tiny_ckpt), backend, progress=False)
    f = tmp_path / "mc" / "labels.jsonl"
    rows = read_labels(f)
    assert len(rows) == 3 * 2 and meta["rows"] == 6
    assert {(r["problem_id"], r["index"]) for r in rows} == {(p.id, j) for p in task.problems("train", 3) for j in range(2)}
    for r in rows:
        assert len(r["soft"]) == len(r["hard"]) == len(r["steps"]) and r["rollouts_k"] == 3
        assert all(round(x * 3) == pytest.approx(x * 3) for x in r["soft"][:-1])  # fractions of k
        if r["steps"]:
            assert r["soft"][-1] == float(r["outcome"])
        assert r["hard"] == [float(x > 0) for x in r["soft"]]
    comp = meta["compute"]
    assert comp["generated_tokens"] >= sum(r["generated_tokens"] for r in rows) > 0 and comp["model_calls"] >= 2
    assert json.loads((tmp_path / "mc" / "meta.json").read_text())["config"]["rollouts"] == 3

    # kill-and-rerun: drop the last two rows and tear the line before them, then rerun
    lines = f.read_bytes().split(b"\n")[:-1]
    f.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:10])
    label_mc(_mc_cfg(tmp_path, tiny_ckpt), backend, progress=False)
    again = read_labels(f)
    assert len(again) == 6 and len({(r["problem_id"], r["index"]) for r in again}) == 6
    by_key = {(r["problem_id"], r["index"]): r for r in rows}
    for r in again:  # regenerated rows are identical (seeded sampling + rollout cache)
        assert r["soft"] == by_key[(r["problem_id"], r["index"])]["soft"]
    # a third run has nothing left to do and does not duplicate rows
    label_mc(_mc_cfg(tmp_path, tiny_ckpt), backend, progress=False)
    assert len(f.read_text().splitlines()) == 6

    with pytest.raises(DeliberateError, match="different config"):
        label_mc(_mc_cfg(tmp_path, tiny_ckpt, seed=5), backend, progress=False)


def test_prm800k_round_trip(tmp_path, task):
    from deliberate.rewards.mc_labels import read_prm800k, write_prm800k

    rows = _labelled_rows(task, 5, seed=3)
    for r in rows:
        r.update(answer=r["gold"], rollouts_k=None, generated_tokens=0)
    f = tmp_path / "prm800k.jsonl"
    assert write_prm800k(rows, f) == len(rows)
    raw = json.loads(f.read_text().splitlines()[1])
    st = raw["label"]["steps"][0]
    assert st["chosen_completion"] == 0 and st["completions"][0]["rating"] in (1, -1)
    assert raw["label"]["finish_reason"] in ("solution", "found_error")
    back = read_prm800k(f)
    for a, b in zip(rows, back):
        for k in ("problem_id", "index", "question", "gold", "steps", "soft", "hard", "outcome"):
            assert a[k] == b[k], k

    # a plain PRM800K row (no deliberate extension): ratings map to labels, neutral configurable
    plain = {"question": {"problem": "1+1?", "ground_truth_answer": "2"},
             "label": {"steps": [{"completions": [{"text": "1+1=2", "rating": 0}], "chosen_completion": 0},
                                 {"completions": [{"text": "x", "rating": -1}, {"text": "Answer: 2", "rating": 1}],
                                  "chosen_completion": 1},
                                 {"completions": [], "chosen_completion": None,
                                  "human_completion": {"text": "done", "rating": None}}],
                       "finish_reason": "solution"}}
    g = tmp_path / "plain.jsonl"
    g.write_text(json.dumps(plain) + "\n")
    (r,) = read_prm800k(g, neutral=0.5)
    assert r["steps"] == ["1+1=2", "Answer: 2", "done"] and r["soft"] == [0.5, 1.0, 1.0] and r["outcome"] is True


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints on disk (random, saved to tmp: no downloads)
# ---------------------------------------------------------------------------------------------

def _hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-*/=:?.\n"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>"), len(vocab)


def _small_llama(vocab: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


@pytest.mark.parametrize("kind,labels", [("hf-prm", 1), ("hf-prm", 2), ("hf-orm", 1), ("hf-orm", 2)])
def test_hf_verifiers_load_a_saved_checkpoint(kind, labels, tmp_path, task):
    from transformers import LlamaForSequenceClassification, LlamaForTokenClassification

    tok, V = _hf_tokenizer()
    torch.manual_seed(0)
    cls = LlamaForTokenClassification if kind == "hf-prm" else LlamaForSequenceClassification
    model = cls(_small_llama(V, num_labels=labels))
    d = tmp_path / "ckpt"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    v = get_verifier(f"{kind}:{d}", task=task, batch_size=2)
    ps = task.problems("test", 3)
    items = [(p, list(p.metadata["steps"])) for p in ps] + [(ps[0], [])]
    scores = v.score_batch(items)
    assert [len(s) for s in scores] == [len(p.metadata["steps"]) for p in ps] + [0]
    assert all(0 <= x <= 1 for s in scores for x in s)
    assert len({round(x, 6) for s in scores for x in s}) > 1  # a real model, not a constant
    # batching does not change scores
    for (p, s), sc in zip(items, scores):
        assert v.score(p, s) == pytest.approx(sc, abs=1e-5)
    assert v.stats.tokens > 0
    if kind == "hf-prm":  # the PRM reads step ends of one sequence: equal to scoring each prefix
        p, s = items[0]
        assert v.score(p, s[:1])[0] == pytest.approx(scores[0][0], abs=1e-5)


def test_hf_verifier_bad_path(tmp_path):
    with pytest.raises(DeliberateError, match="not a Hugging Face checkpoint"):
        get_verifier(f"hf-prm:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# GenRM
# ---------------------------------------------------------------------------------------------

def test_genrm_smollm2_alias_resolves_like_the_hf_backend(tiny_ckpt, task, monkeypatch):
    """`genrm:smollm2` loads the converted SmolLM2 checkpoint, as `--model smollm2` does (the conversion is
    replaced here by a tiny checkpoint); an unknown name is still one clear error."""
    import deliberate.models.smollm2 as smollm2

    asked = []
    monkeypatch.setattr(smollm2, "smollm2_checkpoint", lambda cache_dir=None, **kw: asked.append(cache_dir) or
                        Path(tiny_ckpt))
    v = get_verifier("genrm:smollm2", task=task)
    p = task.problems("test", 1, seed=0)[0]
    scores = v.score_batch([(p, list(task.split_steps(task.rationale(p))))])[0]
    assert asked == [None] and scores and all(0 < x < 1 for x in scores)
    with pytest.raises(DeliberateError, match="genrm:smollm2"):
        get_verifier("genrm:no-such-model", task=task)


def test_genrm_scores_and_training(tiny_ckpt, labels_file, tmp_path, task):
    from deliberate.train.verifier import VerifierTrainConfig, train_verifier

    v = get_verifier(f"genrm:{tiny_ckpt}", task=task)
    p = task.problems("test", 2)
    sc = v.score_batch([(q, list(q.metadata["steps"]) + [f"Answer: {q.answer}"]) for q in p])
    assert all(0 <= x <= 1 for s in sc for x in s) and [len(s) for s in sc] == [q.metadata["ops"] + 1 for q in p]
    assert v.stats.sequences == sum(len(s) for s in sc)

    cfg = VerifierTrainConfig(kind="genrm", labels=str(labels_file), task_options=TASK_OPTS, init_from=str(tiny_ckpt),
                              steps=40, batch_size=16, lr=3e-3, warmup=5, sft_mix=0.25, val_frac=0.0,
                              checkpoint_every=40, out=str(tmp_path / "genrm"))
    final = train_verifier(cfg, progress=False)
    m = json.loads((tmp_path / "genrm" / "metrics.json").read_text())
    assert m["final_loss_ema"] < m["first_loss"]
    g = get_verifier(f"genrm:{tmp_path / 'genrm'}", task=task)
    s2 = g.score_batch([(q, list(q.metadata["steps"])) for q in p])
    assert all(0 <= x <= 1 for s in s2 for x in s)
    # the trained model is still a causal LM the tiny backend can sample from
    from deliberate.models.tiny import TinyBackend

    assert TinyBackend(final) is not None


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------

def test_bad_inputs(tmp_path, tiny_ckpt):
    from deliberate.rewards.mc_labels import read_labels, read_prm800k
    from deliberate.train.verifier import VerifierTrainConfig, train_verifier

    with pytest.raises(DeliberateError, match="not found"):
        read_labels(tmp_path / "nope.jsonl")
    with pytest.raises(DeliberateError, match="not found"):
        train_verifier(VerifierTrainConfig(labels=str(tmp_path / "nope"), out=str(tmp_path / "o")), progress=False)
    good = {"question": "q", "steps": ["1+1=2"], "soft": [1.0], "hard": [1.0], "outcome": True}
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DeliberateError, match=rf"{f}:2: malformed JSON"):
        read_labels(f)
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "soft": [0.5, 0.5]}) + "\n")
    with pytest.raises(DeliberateError, match=rf"{f}:2: 'soft' must be a list with one label per step"):
        read_labels(f)
    f.write_text(json.dumps({**good, "hard": [2]}) + "\n")
    with pytest.raises(DeliberateError, match=rf"{f}:1: 'hard' labels must be numbers in \[0, 1\]"):
        read_labels(f)
    f.write_text(json.dumps({"question": {"problem": "x"}, "label": {"steps": [{"completions": [],
                                                                                  "chosen_completion": 3}]}}) + "\n")
    with pytest.raises(DeliberateError, match=rf"{f}:1: .*chosen_completion"):
        read_prm800k(f)
    with pytest.raises(DeliberateError, match="needs a checkpoint"):
        get_verifier("prm")
    with pytest.raises(DeliberateError, match="not found"):
        get_verifier(f"prm:{tmp_path / 'missing'}")
    with pytest.raises(DeliberateError, match="not a PRM/ORM checkpoint"):
        get_verifier(f"prm:{tiny_ckpt}")
    with pytest.raises(DeliberateError, match="exactly one of"):
        VerifierTrainConfig(labels=None)
    with pytest.raises(DeliberateError, match="only trains an ORM"):
        VerifierTrainConfig(kind="prm", samples="x")


def test_cli_label_and_train(tmp_path, tiny_ckpt):
    from deliberate.cli import main_cli

    out = tmp_path / "lab"
    rc = main_cli(["label", "mc", "--model", str(tiny_ckpt), "--task", "arith", "--task-arg", "max_ops=2",
                   "--n-problems", "2", "--samples", "2", "--rollouts", "2", "--max-tokens", "40",
                   "--out", str(out)])
    assert rc == 0 and len((out / "labels.jsonl").read_text().splitlines()) == 4
    rc = main_cli(["train", "orm", "--labels", str(out), "--task-arg", "max_ops=2", "--init-from", str(tiny_ckpt),
                   "--steps", "3", "--batch-size", "4", "--val-frac", "0", "--out", str(tmp_path / "orm")])
    assert rc == 0 and (tmp_path / "orm" / "model" / "verifier.json").exists()
    rc = main_cli(["label", "export", str(out), "--out", str(tmp_path / "x.jsonl")])
    assert rc == 0
    rc = main_cli(["label", "import", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "y.jsonl")])
    assert rc == 0 and len((tmp_path / "y.jsonl").read_text().splitlines()) == 4
    assert main_cli(["train", "prm", "--labels", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "p")]) == 2


def test_outcome_verifier_scores_only_the_final_answer():
    from deliberate.rewards.base import get_verifier
    from deliberate.tasks import get_task

    task = get_task("arith")
    p = task.problems("test", 1)[0]
    v = get_verifier("outcome", task=task)
    right = ["1+1=3", f"Answer: {p.answer}"]  # a wrong step, right answer: outcome only
    wrong = [f"Answer: {int(p.answer) + 1}"]
    assert v.score_batch([(p, right), (p, wrong), (p, [])]) == [[0.0, 1.0], [0.0], []]


# ---------------------------------------------------------------------------------------------
# Verifier options (`--verifier-arg`): device, dtype, batch size, HF reading options
# ---------------------------------------------------------------------------------------------

def _saved_prm(tmp_path):
    """An untrained tiny PRM with a random head (scores vary), saved as `train prm` saves one."""
    from deliberate.models.tiny import CharTokenizer, TinyConfig
    from deliberate.rewards.models import build_reward_model, save_reward_model

    tok = CharTokenizer()
    model = build_reward_model(tok, model_config=TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2), seed=1)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.score.weight, std=0.5)
    save_reward_model(model, tok, tmp_path / "prm", {"kind": "prm"})
    return tmp_path / "prm"


def _hf_prm(tmp_path):
    from transformers import LlamaForTokenClassification

    tok, V = _hf_tokenizer()
    torch.manual_seed(0)
    d = tmp_path / "hf"
    LlamaForTokenClassification(_small_llama(V, num_labels=2)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _lm_verifiers(tmp_path):
    """Specs of a GenRM, a DPO verifier and a likelihood PRM / ORM built on one random tiny LM."""
    from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model, save_tiny

    tok = CharTokenizer()
    cfg = TinyConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2)
    lm, other = build_tiny_model(cfg, tok, seed=1), build_tiny_model(cfg, tok, seed=2)
    save_tiny(lm, tok, tmp_path / "lm")
    save_tiny(lm, tok, tmp_path / "dpo" / "model")
    save_tiny(other, tok, tmp_path / "dpo" / "ref")
    (tmp_path / "dpo" / "dpo.json").write_text(json.dumps({"beta": 0.5}))
    for target in ("step", "outcome"):
        save_tiny(lm, tok, tmp_path / target / "lm")
        (tmp_path / target / "calibration.json").write_text(json.dumps(
            {"mu": [0.0, 0.0, 0.0], "sd": [10.0, 10.0, 10.0], "w": [1.0, 0.5, 0.2], "b": 0.1, "target": target}))
    return [f"genrm:{tmp_path / 'lm'}", f"dpo:{tmp_path / 'dpo'}", f"lprm:{tmp_path / 'step'}",
            f"lorm:{tmp_path / 'outcome'}"]


def test_verifier_options_are_checked_and_reach_the_verifier(tmp_path, task, clean_registries):
    from deliberate.rewards.base import check_verifier_options, register_verifier

    d = _saved_prm(tmp_path)
    items = [(p, list(p.metadata["steps"])) for p in task.problems("test", 4)]
    want = get_verifier(f"prm:{d}", task=task).score_batch(items)
    v = get_verifier(f"prm:{d}", task=task, device="cpu", batch_size=2)
    assert v.batch_size == 2 and v.device.type == "cpu"
    assert v.score_batch(items) == [pytest.approx(s, abs=1e-6) for s in want] and len({round(x, 5) for s in want for x in s}) > 1
    with pytest.raises(DeliberateError, match="bad options for verifier 'prm': unknown option 'separator'; its options: batch_size, device"):
        get_verifier(f"prm:{d}", task=task, separator="\n")
    with pytest.raises(DeliberateError, match="bad options for verifier 'oracle': unknown option 'device'; its options: \\(none\\)"):
        check_verifier_options("oracle", {"device": "cpu"})
    with pytest.raises(DeliberateError, match="unknown verifier 'nope'"):
        check_verifier_options("nope:x", {})
    h = _hf_prm(tmp_path)
    base = get_verifier(f"hf-prm:{h}", task=task)
    hv = get_verifier(f"hf-prm:{h}", task=task, device="cpu", dtype="float32", positive_label=0, batch_size=3)
    assert hv.positive_label == 0 and next(hv.model.parameters()).dtype == torch.float32
    got, ref = hv.score_batch(items), base.score_batch(items)  # label 0 is the complement of label 1 (2 labels)
    assert [[a + b for a, b in zip(x, y)] for x, y in zip(got, ref)] == [[pytest.approx(1.0, abs=1e-5)] * len(x) for x in got]
    with pytest.raises(DeliberateError, match="hf-prm: dtype must be auto, float32, bfloat16 or float16"):
        get_verifier(f"hf-prm:{h}", task=task, dtype="int8")
    lms = _lm_verifiers(tmp_path / "lms")
    for spec in lms:  # the LM-based verifiers take device and batch_size too
        want = get_verifier(spec, task=task).score_batch(items)
        assert get_verifier(spec, task=task, device="cpu", batch_size=3).score_batch(items) == \
            [pytest.approx(x, abs=1e-6) for x in want]
        assert len({round(x, 5) for x in want[0]}) > 1 or len(want[0]) == 1
    if not torch.cuda.is_available():
        for spec in (f"prm:{d}", f"hf-prm:{h}", *lms):
            with pytest.raises(DeliberateError, match="device 'cuda' requested but CUDA is not available"):
                get_verifier(spec, task=task, device="cuda")

    @register_verifier("test-plugin")  # a plug-in registered without options: kwargs pass through as before
    def _plugin(arg, task=None, **kw):
        from deliberate.rewards.oracle import OracleVerifier

        v = OracleVerifier(task)
        v.kw = kw
        return v

    assert get_verifier("test-plugin", task=task, anything=1).kw == {"anything": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_verifiers_on_the_gpu_score_as_on_the_cpu(tmp_path, task):
    """``device=cuda``: the tiny PRM (float32; its incremental KV-cache path included), an HF PRM (float32
    here), GenRM, DPO and likelihood verifiers give the CPU's scores up to float rounding."""
    d, h = _saved_prm(tmp_path), _hf_prm(tmp_path)
    ps = task.problems("test", 6)
    items = [(p, list(p.metadata["steps"])) for p in ps]
    specs = [(f"prm:{d}", {}), (f"hf-prm:{h}", {"dtype": "float32"})] + [(s, {}) for s in _lm_verifiers(tmp_path)]
    for spec, kw in specs:
        cpu, gpu = (get_verifier(spec, task=task, device=dev, **kw) for dev in ("cpu", "cuda"))
        assert next(gpu.model.parameters()).device.type == "cuda"
        assert gpu.score_batch(items) == [pytest.approx(s, abs=1e-4) for s in cpu.score_batch(items)]
        if spec.startswith("prm"):  # a child step scored from the parent's cache, as a search does
            more = [(p, s + ["1+1=2"]) for p, s in items]
            assert gpu.score_batch(more) == [pytest.approx(s, abs=1e-4) for s in cpu.score_batch(more)]
