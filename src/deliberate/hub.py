"""Hugging Face hub ids -> directories in the normal HF cache, for models, verifiers and data sets.

Why: ``--model Qwen/Qwen2.5-Math-1.5B-Instruct`` (or ``--task dataset:HuggingFaceH4/MATH-500``) should
work the way it works in every other tool: downloaded once into the ordinary hub cache
(``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), then reused; with
``HF_HUB_OFFLINE=1`` nothing is fetched and a repository that is not cached is refused in one line.
A ``revision`` (branch, tag or commit) pins what is used.

A hub id resolves to its *snapshot directory* (``models--org--name/snapshots/<commit>``), which is an
ordinary checkpoint directory: ``from_pretrained`` loads it, and everything that needs a path (the
weights fingerprint of a run, fine-tuning, Ray workers) sees the exact commit that was loaded.
Only the files a model needs are fetched (configs, tokenizer files, safetensors weights, and the
``.bin`` weights only when a repository has no safetensors), as vLLM does.

    snapshot("HuggingFaceTB/SmolLM2-135M-Instruct")                 # -> Path(.../snapshots/<commit>)
    snapshot("HuggingFaceH4/MATH-500", repo_type="dataset")
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from deliberate.errors import DeliberateError

#: a hub repository id: ``name`` or ``org/name``
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TRUTHY = ("1", "true", "yes", "on")
#: what a model snapshot needs (weights chosen separately): configs, tokenizer files, chat templates,
#: and the modelling code that ``trust_remote_code`` runs
MODEL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (the hub client reads it once at import; read it again here so a
    caller that sets it later is honoured too)."""
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUTHY


def is_hub_id(key: str) -> bool:
    """Whether ``key`` reads as a hub id rather than a local path (it does not exist here, does not start
    like a path, and has the ``org/name`` shape)."""
    return (not Path(key).expanduser().exists() and not key.startswith((".", "/", "~"))
            and bool(HUB_ID.match(key)) and "/" in key)


def weight_patterns(repo_id: str, revision: str | None) -> list[str]:
    """The weight files to fetch: safetensors when the repository has them, else the PyTorch ``.bin``."""
    try:
        files = huggingface_hub.list_repo_files(repo_id, revision=revision)
    except HfHubHTTPError:
        return ["*.safetensors"]  # snapshot_download then reports what is wrong with the repository
    if any(f.endswith(".safetensors") for f in files):
        return ["*.safetensors"]
    return ["*.bin", "*.pt"]


def snapshot(repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> Path:
    """The cached snapshot directory of ``repo_id`` at ``revision`` (default: ``main``), fetched first
    unless the hub is offline (``HF_HUB_OFFLINE``). Raises :class:`DeliberateError` in one line when it
    cannot be had."""
    offline = hub_offline()
    at = f"@{revision}" if revision else ""
    patterns = None
    if repo_type == "model" and not offline:
        patterns = [*MODEL_FILES, *weight_patterns(repo_id, revision)]
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                                                 local_files_only=offline, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise DeliberateError(f"{repo_id}{at} is no local path, and {repo_type} {repo_id} is not in the Hugging Face "
                              f"cache ({huggingface_hub.constants.HF_HUB_CACHE}) and {why}; fetch it once online "
                              f"(`hf download {repo_id}{' --repo-type dataset' if repo_type == 'dataset' else ''}`)"
                              ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeliberateError(f"{repo_id}{at} is no local path, and the hub does not give {repo_type} {repo_id} "
                              f"({first})") from None
    return Path(path)
