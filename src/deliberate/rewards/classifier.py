"""Classification-head verifiers: TRL PRMTrainer token classifiers and sequence-classification ORMs.

``hf-prm:PATH`` — a PRM trained with TRL's ``PRMTrainer`` (``AutoModelForTokenClassification``). It
reads the text the way the trainer wrote it: ``[bos] + prompt + (step + separator)`` per step, the
prompt and each step and separator tokenized on their own without special tokens, and labels the
last token of each ``step + separator``. The score of step ``i`` is the head at that token:
``softmax(logits)[positive_label]`` for a 2-label head (TRL: label 1 = correct), ``sigmoid(logit)``
for a 1-logit head. One forward pass scores every step.

``hf-orm:PATH`` — an outcome reward model with a sequence-classification head (Skywork-Reward
style: ``AutoModelForSequenceClassification``, one logit read at the last token). Each step prefix
is one sequence; its score is ``sigmoid(logit)`` (1 logit; Skywork's raw reward is the logit) or
``softmax(logits)[positive_label]``. ``layout=chat`` renders the model's chat template with the
question as the user turn and the steps (joined by ``separator``) as the assistant turn, as the
Skywork card does, tokenized without adding a second BOS; ``layout=plain`` is
``[bos] + prompt + step + separator ...``; ``auto`` (default): ``chat`` when the tokenizer has a chat
template. Read it with ``--setting aggregation=last``.

Options: ``separator`` (default ``"\\n"``), ``positive_label`` (1), ``prompt_style`` (``plain``: the
text before the steps is the task's prompt in that style), ``layout`` (hf-orm), and the loading
options of ``checkpoint.py`` (``batch_size``, ``device``, ``dtype``, ``revision``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deliberate.errors import DeliberateError
from deliberate.rewards.base import problem_prompt, register_verifier
from deliberate.rewards.checkpoint import CHECKPOINT_OPTIONS, StepCheckpointVerifier, factory
from deliberate.rewards.models import encode_steps, head_probability, keep_tail, pad_right
from deliberate.types import Problem

LAYOUTS = ("auto", "chat", "plain")


class NoSpecialTokens:
    """An HF tokenizer's ``encode`` without special tokens (BOS is added once, by :func:`encode_steps`)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


class ClassifierVerifier(StepCheckpointVerifier):
    """What both heads share: the reading options, and the text a problem's steps follow."""

    def __init__(self, path, task=None, separator: str = "\n", positive_label: int = 1, prompt_style: str = "plain",
                 batch_size: int = 64, **kw):
        if not isinstance(separator, str) or not separator:
            raise DeliberateError("separator must be a non-empty string")
        self.separator, self.positive_label, self.prompt_style = separator, positive_label, prompt_style
        super().__init__(path, task=task, batch_size=batch_size, **kw)
        n_labels = int(self.model.config.num_labels)
        if n_labels >= 2 and not 0 <= positive_label < n_labels:
            raise DeliberateError(f"{self.kind}: positive_label {positive_label} is not a label of a "
                                  f"{n_labels}-label head")
        self.bos = self.tokenizer.bos_token_id

    def prompt(self, problem: Problem) -> str:
        return problem_prompt(self.task, problem, self.prompt_style)

    def describe(self):
        return {**super().describe(), "separator": self.separator, "positive_label": self.positive_label,
                "num_labels": int(self.model.config.num_labels)}


class TokenClassifierPRM(ClassifierVerifier):
    """``hf-prm``: a TRL PRMTrainer checkpoint, read at the last token of each step + separator."""

    kind = "hf-prm"

    def load_model(self):
        return self.from_pretrained("AutoModelForTokenClassification")

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        tok = NoSpecialTokens(self.tokenizer)
        ids = ([self.bos] if self.bos is not None else []) + tok.encode(self.prompt(problem))
        sep = tok.encode(self.separator)
        ends = []
        for s in steps:
            ids.extend(tok.encode(s) + sep)
            ends.append(len(ids) - 1)
        return ids, ends

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits  # [B, L, num_labels]: small, read whole

    def read(self, states: torch.Tensor) -> torch.Tensor:
        return head_probability(states, self.positive_label)


class SequenceClassifierORM(ClassifierVerifier):
    """``hf-orm``: one sequence per step prefix; the head pools each sequence's last real token."""

    kind = "hf-orm"

    def __init__(self, path, task=None, layout: str = "auto", **kw):
        if layout not in LAYOUTS:
            raise DeliberateError(f"hf-orm: layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
        super().__init__(path, task=task, **kw)
        self.layout = layout if layout != "auto" else ("chat" if self.tokenizer.chat_template else "plain")
        if getattr(self.model.config, "pad_token_id", None) is None:
            # the head finds each row's last real token through the pad id; without one, batch size 1
            if self.tokenizer.pad_token_id is not None or self.tokenizer.eos_token_id is not None:
                self.model.config.pad_token_id = self.pad_id
            else:
                self.batch_size = 1
        else:
            self.pad_id = int(self.model.config.pad_token_id)

    def load_model(self):
        return self.from_pretrained("AutoModelForSequenceClassification")

    def prefixes(self, problem: Problem, steps: Sequence[str]) -> list[list[int]]:
        """Token ids of the text up to the end of each step."""
        if self.layout == "plain":
            ids, ends = encode_steps(NoSpecialTokens(self.tokenizer), self.prompt(problem), steps, self.separator,
                                     self.bos)
            ids, ends = keep_tail(ids, ends, self.max_len)
            return [ids[: e + 1] for e in ends]
        out = []
        for k in range(1, len(steps) + 1):
            chat = [{"role": "user", "content": problem.question},
                    {"role": "assistant", "content": self.separator.join(steps[:k])}]
            text = self.tokenizer.apply_chat_template(chat, tokenize=False)
            out.append(self.tokenizer.encode(text, add_special_tokens=False)[-self.max_len:])
        return out

    @torch.inference_mode()
    def score_batch(self, items):
        out: list[list[float]] = [[0.0] * len(s) for _, s in items]
        seqs = []  # (item, step index, ids of the text up to that step's end)
        for i, (p, s) in enumerate(items):
            seqs.extend((i, j, ids) for j, ids in enumerate(self.prefixes(p, list(s))))
        seqs.sort(key=lambda e: len(e[2]))
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            ids, mask = pad_right([e[2] for e in chunk], self.pad_id, self.device)
            self.stats.calls += 1
            self.stats.sequences += len(chunk)
            self.stats.tokens += int(mask.sum())
            probs = head_probability(self.model(input_ids=ids, attention_mask=mask).logits, self.positive_label)
            for row, (i, j, _) in enumerate(chunk):
                out[i][j] = float(probs[row])
        return out

    def describe(self):
        return {**super().describe(), "layout": self.layout}


CLASSIFIER_OPTIONS = ("separator", "positive_label", "prompt_style", *CHECKPOINT_OPTIONS)
register_verifier("hf-prm", options=CLASSIFIER_OPTIONS)(factory(TokenClassifierPRM))
register_verifier("hf-orm", options=(*CLASSIFIER_OPTIONS, "layout"))(factory(SequenceClassifierORM))
