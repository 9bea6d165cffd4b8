"""LoRA (low-rank adapters through PEFT) for the HF policy's TRL fine-tunes and preference updates.

``lora_r`` > 0 in :class:`~deliberate.policy.base.FinetuneSettings` or
:class:`~deliberate.policy.preference.PreferenceSettings` (``--lora-r``, ``--dpo-lora-r``) trains
rank-``lora_r`` adapters on ``lora_targets`` instead of every weight: TRL's trainers take the
:func:`lora_config` built here as ``peft_config``, as a TRL user would pass it. When training ends the
adapters are merged into the weights (:func:`merged`), so the checkpoint written is a plain Hugging
Face model that sampling, evaluation and the next fine-tune load like any other. ``lora_r = 0`` (the
default) is a full fine-tune and never touches peft.

peft is an optional dependency (``pip install peft``, or the ``lora`` extra), imported only when a
LoRA run starts. The tiny model's loops and policy-gradient training have no LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from deliberate.errors import DeliberateError

#: ``lora_targets`` value for every linear layer but the output head (PEFT's own shorthand)
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraFields:
    """The LoRA fields a settings dataclass inherits (fine-tune and preference update), checked once."""

    #: what a refusal names (the subclass's own word)
    WHAT: ClassVar[str] = "settings"

    lora_r: int = 0  # LoRA rank (HF models, needs peft); 0 = full fine-tune
    lora_alpha: int = 16  # LoRA scaling numerator (the update is scaled by alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_targets: str = ALL_LINEAR  # modules that get adapters: a comma list of names, or all-linear

    def __post_init__(self) -> None:
        problems = lora_problems(self)
        if problems:
            raise DeliberateError(f"{self.WHAT}: " + "; ".join(problems))


def lora_problems(settings: Any) -> list[str]:
    """What is wrong with ``settings``' ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``
    (empty when nothing is): for a settings dataclass's ``__post_init__``."""
    problems = []
    r = settings.lora_r
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        problems.append(f"lora_r must be an integer >= 0 (0: full fine-tune; got {r!r})")
    if not settings.lora_alpha > 0:
        problems.append(f"lora_alpha must be > 0 (got {settings.lora_alpha!r})")
    if not 0 <= settings.lora_dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1) (got {settings.lora_dropout!r})")
    if not target_modules(settings.lora_targets):
        problems.append("lora_targets must name modules (a comma list, or all-linear)")
    return problems


def target_modules(targets: str) -> str | list[str]:
    """``lora_targets`` as PEFT reads it: ``all-linear``, or the list of module names in a comma list."""
    if targets.strip() == ALL_LINEAR:
        return ALL_LINEAR
    return [t.strip() for t in targets.split(",") if t.strip()]


def lora_config(settings: Any):
    """The ``peft.LoraConfig`` for a causal LM that ``settings`` asks for, or None when ``lora_r`` is 0."""
    if not settings.lora_r:
        return None
    try:
        # lazy: peft: an optional dependency, needed only for LoRA
        from peft import LoraConfig
    except ImportError as e:
        raise DeliberateError(f"lora_r = {settings.lora_r} needs peft: pip install peft ({e})") from e
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=target_modules(settings.lora_targets), bias="none", task_type="CAUSAL_LM")


def parameter_counts(model) -> dict[str, int]:
    """``trainable_params`` and ``params`` of ``model`` (with adapters: the adapters' and the whole's)."""
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters())}


def merged(model):
    """``model`` with its LoRA adapters folded into the weights and the PEFT wrapper removed: a plain
    transformers model (``model`` itself when it has no adapters)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
