"""``load_policy``: a ``--model`` value -> the :class:`~deliberate.policy.base.Policy` that runs it.

    load_policy("runs/quickstart/sft/model")   # a tiny checkpoint (has char_tokenizer.json)
    load_policy("path/to/hf-checkpoint")        # any transformers causal LM directory
    load_policy("Qwen/Qwen2.5-Math-1.5B-Instruct", revision="main")   # a hub id, through the HF cache
    load_policy("model.gguf") / load_policy("smollm2")
"""

from __future__ import annotations

from pathlib import Path

from deliberate.errors import DeliberateError
from deliberate.models.hf import ALIASES, resolve_path
from deliberate.hub import is_hub_id
from deliberate.policy.base import Policy
from deliberate.policy.hf import HFPolicy
from deliberate.policy.tiny import TinyPolicy, is_tiny_checkpoint


def has_chat_template(path: Path, trust_remote_code: bool = False) -> bool:
    """Whether the tokenizer of the HF checkpoint (directory or ``.gguf``) at ``path`` has a chat template."""
    from transformers import AutoTokenizer  # heavy; only HF policies need it

    if path.suffix.lower() == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    return bool(getattr(tok, "chat_template", None))


def load_policy(model: str | Path, *, chat: bool | None = None, device: str = "auto", **options) -> Policy:
    """The policy for ``model``: a tiny checkpoint directory, an HF checkpoint directory, a hub id
    (``org/name``; ``revision=`` pins a branch, tag or commit), a ``.gguf`` file or a built-in name
    (``smollm2``). ``chat``: render prompts with the chat template; ``None`` — when the tokenizer has one
    (HF instruct models), never for the tiny model. ``options``: HF backend options (``dtype``,
    ``device_map``, ``trust_remote_code``, ``max_batch_size`` ...).

    A hub id is resolved here, once, to its snapshot directory in the HF cache, so the policy (its
    fine-tuned checkpoints, its Ray workers, the run's weights fingerprint) works on that exact commit."""
    key = str(model).strip()
    if key.lower() not in ALIASES and not Path(key).expanduser().exists() and not is_hub_id(key):
        raise DeliberateError(f"--model {key} does not exist (a tiny or HF checkpoint directory, a hub id "
                              f"org/name, a .gguf file, or {', '.join(ALIASES)}; train a tiny seed model with "
                              "`deliberate quickstart`)")
    if is_tiny_checkpoint(Path(key).expanduser()):
        if chat:
            raise DeliberateError(f"--model {key} is a tiny checkpoint: it has no chat template (drop --chat)")
        if options:
            raise DeliberateError(f"tiny policy: unknown options {', '.join(sorted(options))}")
        return TinyPolicy(Path(key).expanduser(), device=device)
    path, _ = resolve_path(key, revision=options.pop("revision", None))
    if chat is None:
        chat = has_chat_template(path, bool(options.get("trust_remote_code", False)))
    return HFPolicy(path, chat=chat, device=device, **options)
