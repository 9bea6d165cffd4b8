"""Loading a published Hugging Face verifier checkpoint, shared by every published verifier family.

Each family (``classifier.py``, ``math_shepherd.py``, ``rlhflow.py``, ``qwen_prm.py``) only says how it
lays a problem and its steps out as tokens and how it reads a score off the model; this module does
the rest once:

- **where from**: a local directory, or a hub id (``org/name``) through ``from_pretrained`` and the
  normal HF cache (``revision=`` picks a branch, tag or commit). ``local_files_only`` is set only for a
  local directory or when ``HF_HUB_OFFLINE`` is set, so a hub id downloads once and is then cached.
  ``trust_remote_code=true`` lets a checkpoint whose config names its own modelling code run it (off by
  default: the built-in families need none, ``qwen-prm`` builds its head here);
- **in what precision**: the weights load in their target dtype (``dtype=`` at ``from_pretrained``, no
  float32 copy first: a 7B verifier in bfloat16 needs ~15 GB of host memory, not ~30 GB), then move to
  ``device``;
- **nothing random**: a checkpoint whose weights do not cover the class it is loaded as (a head that
  would be initialised randomly, a shape that does not fit) is refused with one line naming the
  missing weights, instead of silently scoring ~0.5;
- **batched step scoring**: :class:`StepCheckpointVerifier` encodes every candidate to (token ids,
  positions whose output scores each step), sorts by length, runs right-padded batches and reads only
  the scored positions.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.models.engine import resolve_device, resolve_dtype
from deliberate.hub import HUB_ID, hub_offline
from deliberate.rewards.base import Verifier
from deliberate.rewards.models import keep_tail, pad_right
from deliberate.types import Problem

#: options every published-checkpoint verifier takes (runtime ones plus where the weights come from)
CHECKPOINT_OPTIONS = ("batch_size", "device", "dtype", "revision", "trust_remote_code")


def resolve_source(path: str | None, kind: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local directory) for ``kind:PATH``."""
    if not path:
        raise DeliberateError(f"the {kind} verifier needs a checkpoint: {kind}:DIR or {kind}:ORG/NAME (a hub id)")
    d = Path(path).expanduser()
    if d.is_dir():
        if not (d / "config.json").exists():
            raise DeliberateError(f"{kind}: {str(d)!r} is not a Hugging Face checkpoint directory (no config.json)")
        return str(d), True
    if d.exists() or path.startswith((".", "/", "~")) or not HUB_ID.match(path):
        raise DeliberateError(f"{kind}: {path!r} is neither a checkpoint directory nor a hub id (ORG/NAME)")
    return path, False


def refuse_random_weights(info: dict[str, Any], source: str, kind: str, class_name: str, hint: str = "") -> None:
    """One clear error when ``from_pretrained``'s loading info says some weights were initialised randomly."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ())
    if not missing and not mismatched:
        return
    what = []
    if missing:
        what.append(f"no weights for {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if mismatched:
        what.append(f"weights of the wrong shape for {', '.join(mismatched[:6])}")
    raise DeliberateError(f"{kind}: {source} has {'; '.join(what)} as {class_name}: they would be initialised "
                          f"randomly and every score would be noise{hint}")


def architecture_hint(config, kind: str, source: str) -> str:
    """A pointer to the right verifier when the checkpoint's own architecture names a known published format."""
    arch = " ".join(getattr(config, "architectures", None) or ())
    if "ProcessRewardModel" in arch and kind != "qwen-prm":
        return f" (its architecture is {arch}: use qwen-prm:{source})"
    if "ForCausalLM" in arch and kind in ("hf-prm", "hf-orm"):
        return f" (its architecture is {arch}, a language model: a step-tag PRM is math-shepherd:{source} or " \
               f"rlhflow-prm:{source})"
    return ""


class StepCheckpointVerifier(Verifier):
    """A published PRM: loads tokenizer and model, scores every step of a candidate in one forward pass.

    Subclasses set ``kind`` and implement :meth:`load_model` (the model, loaded through
    :meth:`from_pretrained`), :meth:`encode` (token ids + the position whose output scores each step)
    and :meth:`read` (``[k, hidden]`` states at those positions -> ``k`` probabilities). :meth:`hidden`
    returns the backbone's last hidden states: a head applied only at the scored positions keeps a
    large-vocabulary LM from materialising ``batch x length x vocab`` logits."""

    kind = "hf"

    def __init__(self, path: str | None, task=None, batch_size: int = 8, device: str = "auto", dtype: str = "auto",
                 revision: str | None = None, trust_remote_code: bool = False):
        super().__init__()
        import transformers  # lazy: transformers (seconds); every verifier lookup imports this module

        if not isinstance(batch_size, int) or batch_size < 1:
            raise DeliberateError(f"batch_size must be a positive integer (got {batch_size!r})")
        if not isinstance(trust_remote_code, bool):
            raise DeliberateError(f"{self.kind}: trust_remote_code must be true or false (got {trust_remote_code!r})")
        self.source, local = resolve_source(path, self.kind)
        self.device = resolve_device(device, what=self.kind)
        self.dtype = resolve_dtype(dtype, self.device, what=self.kind)
        self.load_kw = {"revision": revision, "local_files_only": local or hub_offline(),
                        "trust_remote_code": trust_remote_code}
        self.task, self.batch_size, self.revision = task, batch_size, revision
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.source, **self.load_kw)
        except (OSError, ValueError, KeyError) as e:
            raise DeliberateError(f"{self.kind}: cannot load the tokenizer of {self.source!r}: {e}") from None
        self.model = self.load_model().to(self.device).eval()  # already in self.dtype: moved, not cast
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.path = self.source
        self.name = f"{self.kind}:{self.source}"

    def from_pretrained(self, auto_class: str, **kw: Any):
        """``transformers.<auto_class>.from_pretrained`` in the target dtype, refusing random weights."""
        import transformers  # lazy: transformers, as in __init__

        cls = getattr(transformers, auto_class)
        try:
            model, info = cls.from_pretrained(self.source, dtype=self.dtype, output_loading_info=True,
                                              **self.load_kw, **kw)
        except (OSError, ValueError, KeyError) as e:
            raise DeliberateError(f"{self.kind}: cannot load {self.source!r} as {auto_class}: {e}") from None
        refuse_random_weights(info, self.source, self.kind, type(model).__name__,
                              architecture_hint(model.config, self.kind, self.source))
        return model

    @abstractmethod
    def load_model(self):
        """The scoring model, through :meth:`from_pretrained` (so in ``self.dtype``, random heads refused)."""

    def encode(self, problem: Problem, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """(token ids of the problem and its steps, the position whose output scores each step): a hook of
        :meth:`score_batch`; a verifier that overrides ``score_batch`` itself (the sequence-classification
        ORM scores one sequence per prefix) has no use for it."""
        raise TypeError(f"{type(self).__name__} scores through its own score_batch, not encode/read")

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    def read(self, states: torch.Tensor) -> torch.Tensor:
        """``[k, hidden]`` states at the scored positions -> ``k`` step probabilities (the other hook of
        :meth:`score_batch`, see :meth:`encode`)."""
        raise TypeError(f"{type(self).__name__} scores through its own score_batch, not encode/read")

    def fit(self, ids: list[int], ends: list[int]) -> tuple[list[int], list[int]]:
        return keep_tail(ids, ends, self.max_len)

    def tag_positions(self, ids: list[int], tag_id: int, n: int, what: str) -> list[int]:
        """The positions of the last ``n`` occurrences of ``tag_id`` (one per step) in ``ids``."""
        pos = [i for i, t in enumerate(ids) if t == tag_id]
        if len(pos) < n:
            raise DeliberateError(f"{self.kind}: found {len(pos)} {what} tokens for {n} steps: the tokenizer of "
                                  f"{self.source} does not keep {what} as one token")
        return pos[len(pos) - n:]

    @torch.inference_mode()
    def score_batch(self, items):
        out: list[list[float]] = [[] for _ in items]
        enc = sorted(((i, *self.fit(*self.encode(p, list(s)))) for i, (p, s) in enumerate(items) if len(s)),
                     key=lambda e: len(e[1]))
        for start in range(0, len(enc), self.batch_size):
            chunk = enc[start:start + self.batch_size]
            ids, mask = pad_right([e[1] for e in chunk], self.pad_id, self.device)
            states = self.hidden(ids, mask)
            self.stats.calls += 1
            self.stats.sequences += len(chunk)
            self.stats.tokens += int(mask.sum())
            rows = torch.cat([states[r, torch.tensor(pos, device=states.device)]
                              for r, (_, _, pos) in enumerate(chunk)])
            probs = self.read(rows).float().tolist()
            k = 0
            for i, _, pos in chunk:
                out[i] = probs[k:k + len(pos)]
                k += len(pos)
        return out

    def describe(self):
        return {"name": self.name, "kind": self.kind, "path": self.source, "revision": self.revision}


def token_pair_probability(states: torch.Tensor, lm_head: torch.nn.Module, good: int, bad: int) -> torch.Tensor:
    """``softmax([logit(good), logit(bad)])[0]`` from hidden states, with ``lm_head``'s two rows only."""
    w = lm_head.weight[[good, bad]]
    logits = states.to(w.dtype) @ w.T
    if getattr(lm_head, "bias", None) is not None:
        logits = logits + lm_head.bias[[good, bad]]
    return torch.softmax(logits.float(), dim=-1)[..., 0]


def single_token(tokenizer, text: str, kind: str, source: str) -> int:
    """The id of ``text`` when the tokenizer writes it as one token (after dropping special tokens)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise DeliberateError(f"{kind}: the tokenizer of {source} writes {text!r} as {len(ids)} tokens, not one")
    return int(ids[0])


def factory(cls):
    """A registry factory for ``cls`` (a sweep passes ``seed``; these verifiers are deterministic)."""
    def make(arg, task=None, **kw):
        return cls(arg, task=task, **{k: v for k, v in kw.items() if k != "seed"})

    return make
