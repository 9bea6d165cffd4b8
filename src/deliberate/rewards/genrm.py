"""GenRM: the language model itself as the verifier.

``genrm:DIR`` loads a causal LM (a tiny checkpoint, e.g. from ``deliberate train genrm``, or a
Hugging Face causal LM with its tokenizer) and scores step ``i`` of a candidate as::

    P("Yes") / (P("Yes") + P("No"))     of the next token after  prompt + steps[:i] + cue

Why the ratio rather than P("Yes") alone: an LM spreads some mass over other tokens, and the ratio
is the model's preference between the two answers, in [0, 1] whatever else it would say
(Zhang et al. 2024, "Generative Verifiers"). Each step prefix is its own sequence (the cue follows
it), so a candidate of ``n`` steps costs ``n`` sequences; they are batched.

Cues: the tiny char model uses :data:`TINY_CUE` and answers ``Yes``/``No`` (first tokens ``Y``/``N``),
which is what ``deliberate train genrm`` teaches it. HF models default to :data:`HF_CUE` with answers
`` Yes``/`` No``; both are configurable (``cue=``, ``answers=`` keywords of ``get_verifier``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import resolve_device, resolve_dtype
from deliberate.models.hf import ALIASES, resolve_path
from deliberate.models.tiny import load_tiny
from deliberate.rewards.base import Verifier, problem_prompt, register_verifier
from deliberate.types import Problem

TINY_CUE = "Is this correct? "
TINY_ANSWERS = ("Yes", "No")
HF_CUE = "\nIs this solution correct so far? Answer Yes or No.\nAnswer:"
HF_ANSWERS = (" Yes", " No")


def answer_token(encode, cue: str, answer: str) -> int:
    """The first token the model would emit for ``answer`` right after ``cue``.

    Found as the first token where ``encode(cue + answer)`` departs from ``encode(cue)``, so merges
    across the boundary (BPE) are handled; falls back to ``encode(answer)[0]``."""
    a, b = encode(cue), encode(cue + answer)
    if b[: len(a)] == a and len(b) > len(a):
        return b[len(a)]
    ids = encode(answer)
    if not ids:
        raise DeliberateError(f"genrm: answer {answer!r} encodes to no tokens")
    return ids[0]


class GenerativeVerifier(Verifier):
    """P(Yes) / (P(Yes) + P(No)) after a verification cue, per step prefix."""

    def __init__(self, model, encode, bos: int | None, pad_id: int, task=None, cue: str = TINY_CUE,
                 answers: tuple[str, str] = TINY_ANSWERS, prompt_style: str = "plain", batch_size: int = 128,
                 path: str | None = None):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DeliberateError(f"batch_size must be a positive integer (got {batch_size!r})")
        if len(answers) != 2 or answers[0] == answers[1]:
            raise DeliberateError(f"genrm: answers must be two different strings (got {answers!r})")
        self.model, self.encode, self.bos, self.pad_id = model.eval(), encode, bos, pad_id
        self.device = next(model.parameters()).device
        self.task, self.cue, self.prompt_style, self.batch_size, self.path = task, cue, prompt_style, batch_size, path
        self.yes = answer_token(encode, cue, answers[0])
        self.no = answer_token(encode, cue, answers[1])
        if self.yes == self.no:
            raise DeliberateError(f"genrm: answers {answers!r} start with the same token; choose others")
        self.max_len = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.name = f"genrm:{path}" if path else "genrm"

    def _prompt(self, problem: Problem) -> str:
        return problem_prompt(self.task, problem, self.prompt_style)

    def query_ids(self, problem: Problem, steps: Sequence[str], i: int) -> list[int]:
        """Tokens of the verification query after the first ``i`` steps (left-cut to the context)."""
        text = self._prompt(problem) + "".join(s + "\n" for s in steps[:i]) + self.cue
        ids = ([self.bos] if self.bos is not None else []) + list(self.encode(text))
        return ids[-self.max_len:]

    @torch.inference_mode()
    def score_batch(self, items):
        """Each step prefix is one query; queries already answered (a search re-asks about a node's
        earlier steps every round) come from a memo. Queries are left-padded with explicit positions
        and only the last position's logits are computed (an LM head over a large vocabulary at every
        position would dominate the cost)."""
        if not hasattr(self, "_memo"):
            self._memo: dict[tuple[int, ...], float] = {}
        out: list[list[float]] = [[0.0] * len(s) for _, s in items]
        queries = []
        for i, (p, s) in enumerate(items):
            for j in range(len(s)):
                q = tuple(self.query_ids(p, list(s), j + 1))
                if q in self._memo:
                    out[i][j] = self._memo[q]
                else:
                    queries.append((i, j, q))
        queries.sort(key=lambda q: len(q[2]))
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start:start + self.batch_size]
            L = max(len(q[2]) for q in chunk)
            ids = torch.full((len(chunk), L), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, (_, _, q) in enumerate(chunk):
                ids[r, L - len(q):] = torch.tensor(q)
                mask[r, L - len(q):] = 1
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
            try:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            except TypeError:  # a model without logits_to_keep
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            two = torch.softmax(logits[:, -1].float()[:, [self.yes, self.no]], dim=-1)[:, 0]
            self.stats.calls += 1
            self.stats.sequences += len(chunk)
            self.stats.tokens += int(mask.sum())
            if len(self._memo) > 500_000:
                self._memo.clear()
            for r, (i, j, q) in enumerate(chunk):
                out[i][j] = self._memo[q] = float(two[r])
        return out

    def describe(self):
        return {"name": self.name, "cue": self.cue, "path": self.path}


def load_genrm(path: str | Path, task=None, device: str = "auto", dtype: str = "auto", **kw: Any) -> GenerativeVerifier:
    """A tiny checkpoint (has ``char_tokenizer.json``), an HF causal LM directory, or ``smollm2`` (the built-in
    SmolLM2-135M-Instruct, converted once and cached as for ``--model smollm2``), on ``device`` (``auto``: a
    CUDA GPU when there is one, else the CPU); ``dtype`` ``auto`` is float32 for a tiny checkpoint and, for an HF
    one, bfloat16 on Ampere+ GPUs, else float32."""
    dev = resolve_device(device, what="genrm")
    d = Path(path)
    if not d.is_dir() and str(path).strip().lower() in ALIASES:  # genrm:smollm2, as --model smollm2
        d = resolve_path(path)[0]
    if not d.is_dir():
        raise DeliberateError(f"genrm: checkpoint {str(d)!r} not found (train one with `deliberate train genrm`, "
                              "or use genrm:smollm2 for the built-in SmolLM2-135M-Instruct)")
    own = ("char_tokenizer.json", "tokenizer.json", "tokenizer_config.json")
    if not any((d / f).exists() for f in own) and (d / "model" / "config.json").exists():
        d = d / "model"  # a `train genrm` output directory (its config.json is the training config)
    opts = {k: v for k, v in kw.items() if k in ("cue", "answers", "prompt_style", "batch_size")}
    if (d / "char_tokenizer.json").exists():
        model, tok = load_tiny(d)
        model = model.to(device=dev, dtype=torch.float32 if dtype == "auto" else resolve_dtype(dtype, dev, what="genrm"))
        return GenerativeVerifier(model, tok.encode, tok.bos_token_id, tok.pad_token_id, task=task,
                                  path=str(path), **opts)
    import transformers  # lazy: transformers (seconds); every verifier lookup imports this module, only HF needs it

    if not (d / "config.json").exists():
        raise DeliberateError(f"genrm: {str(d)!r} is neither a tiny checkpoint nor an HF model directory")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DeliberateError(f"genrm: cannot load {str(d)!r} as a causal LM: {e}") from None
    model = model.to(device=dev, dtype=resolve_dtype(dtype, dev, what="genrm"))
    opts.setdefault("cue", HF_CUE)
    opts.setdefault("answers", HF_ANSWERS)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return GenerativeVerifier(model, lambda t: tok.encode(t, add_special_tokens=False), tok.bos_token_id, pad,
                              task=task, path=str(path), **opts)


@register_verifier("genrm", options=("cue", "answers", "prompt_style", "batch_size", "device", "dtype"))
def _genrm(arg, task=None, **kw):
    if not arg:
        raise DeliberateError("the genrm verifier needs a causal LM checkpoint: genrm:DIR")
    return load_genrm(arg, task=task, **kw)
