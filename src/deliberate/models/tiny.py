"""The built-in tiny reasoner: a character-level HF ``LlamaForCausalLM`` trained from scratch.

Why an HF Llama built from a config rather than our own module: the same weights then work with
transformers (``generate``, saving/loading), TRL trainers and accelerate unchanged, and our engine
runs it through the same fast Llama path it uses for SmolLM2 and other Llama-family checkpoints.
Why characters: the synthetic tasks are digits, operators and a few template words; a ~100-symbol
vocabulary keeps the model tiny and makes every digit a separate decision (arithmetic slips are
what sampling and verifiers then fix).

``deliberate train sft`` makes a checkpoint; ``--backend tiny --model DIR`` loads it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend, register_backend
from deliberate.models.engine import Engine, default_max_batch_size, resolve_device, resolve_dtype
from deliberate.models.sampling import SamplingParams
from deliberate.models.thinking import thinking_decoder
from deliberate.types import Completion

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_CHARS = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")


class CharTokenizer:
    """One token per character; unknown characters map to ``<unk>``."""

    def __init__(self, chars: str = DEFAULT_CHARS):
        if len(set(chars)) != len(chars):
            raise DeliberateError("CharTokenizer: duplicate characters in vocabulary")
        self.chars = chars
        self.itos = list(SPECIALS) + list(chars)
        self.stoi = {c: i + len(SPECIALS) for i, c in enumerate(chars)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = range(4)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        unk = self.unk_token_id
        return [self.stoi.get(c, unk) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        n = len(SPECIALS)
        return "".join(self.itos[i] for i in ids if i >= n)

    def save(self, directory: str | Path) -> None:
        Path(directory, "char_tokenizer.json").write_text(json.dumps({"chars": self.chars}))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        f = Path(directory, "char_tokenizer.json")
        if not f.exists():
            raise DeliberateError(f"{directory} is not a tiny-model checkpoint (no char_tokenizer.json)")
        return cls(json.loads(f.read_text())["chars"])


@dataclass(frozen=True)
class TinyConfig:
    """Size of the tiny Llama. Defaults: ~0.8M parameters, fast on 2 CPU cores."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    mlp_ratio: float = 2.75
    max_len: int = 512
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise DeliberateError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise DeliberateError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if min(self.d_model, self.n_layers, self.n_heads, self.max_len) < 1:
            raise DeliberateError("TinyConfig sizes must be positive")


def build_tiny_model(config: TinyConfig, tokenizer: CharTokenizer, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` for ``config`` (deterministic under ``seed``)."""
    # lazy: transformers (seconds to import); every backend lookup imports this module, only a model needs it
    from transformers import LlamaConfig, LlamaForCausalLM

    inter = round(config.d_model * config.mlp_ratio / 16) * 16
    hf = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=config.d_model, intermediate_size=inter,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.max_len,
        rope_theta=config.rope_theta, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(hf)
    model.config.deliberate_tiny = asdict(config)
    return model


def save_tiny(model, tokenizer: CharTokenizer, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save(directory)


def load_tiny(directory: str | Path):
    from transformers import LlamaForCausalLM  # lazy: transformers, as in build_tiny_model

    directory = Path(directory)
    if not directory.is_dir():
        raise DeliberateError(f"tiny model checkpoint {str(directory)!r} not found "
                              "(train one with `deliberate train sft --out DIR`)")
    tok = CharTokenizer.load(directory)
    model = LlamaForCausalLM.from_pretrained(directory, local_files_only=True)
    return model.eval(), tok


def load_or_init_tiny(path: str | Path | None, seed: int = 0):
    """``load_tiny(path)``, or a freshly initialised default-size tiny model when ``path`` is None
    (benchmarks: speed does not depend on the weights)."""
    if path:
        return load_tiny(path)
    tok = CharTokenizer()
    return build_tiny_model(TinyConfig(), tok, seed=seed).eval(), tok


#: rows per forward when no max_batch_size is given, by device type
MAX_BATCH = {"cpu": 256, "cuda": 1024}


@register_backend("tiny")
class TinyBackend(Backend):
    """A trained tiny checkpoint behind the sampling engine.

    ``device``: ``auto`` (default: ``cuda`` when CUDA is available, else ``cpu``), ``cpu``, ``cuda`` or
    ``cuda:N``; ``dtype``: ``auto`` (default: bfloat16 on an Ampere-or-newer GPU, else float32),
    ``float32``, ``bfloat16`` or ``float16`` -- e.g. ``--backend-arg device=cuda --backend-arg
    dtype=bfloat16``. A ``model=`` given directly is moved and cast in place. ``max_batch_size``: rows
    per forward (default :data:`MAX_BATCH` for the device: 256 on CPU, 1024 on CUDA). ``think``: decode
    think-then-predict with the checkpoint's Quiet-STaR head (:mod:`deliberate.models.thinking`; ``true`` or
    tokens per thought), thoughts sampled at ``think_temperature``.
    """

    name = "tiny"

    def __init__(self, path: str | Path | None = None, model=None, tokenizer: CharTokenizer | None = None,
                 max_batch_size: int | None = None, threads: int | None = None, device: str = "auto",
                 dtype: str = "auto", think: int | bool = 0, think_temperature: float = 1.0):
        dev = resolve_device(device, what="tiny backend")
        torch_dtype = resolve_dtype(dtype, dev, what="tiny backend")
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(dev, MAX_BATCH)
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise DeliberateError(f"tiny backend: max_batch_size must be an integer >= 1 (got {max_batch_size!r})")
        if model is None:
            if path is None:
                raise DeliberateError("--backend tiny needs --model DIR (a checkpoint from `deliberate train sft`)")
            model, tokenizer = load_tiny(path)
        if tokenizer is None:
            raise DeliberateError("TinyBackend(model=...) also needs tokenizer=")
        if threads:
            torch.set_num_threads(threads)
        self.path = str(path) if path is not None else None
        self.device, self.dtype = dev, torch_dtype
        self.model, self.tokenizer = model.to(device=dev, dtype=torch_dtype).eval(), tokenizer
        self.engine = Engine(self.model, tokenizer, device=dev, max_batch_size=max_batch_size)
        if think:
            self.engine = thinking_decoder(path, self.model, tokenizer, think, think_temperature, max_batch_size)

    @property
    def model_name(self) -> str:
        return f"tiny:{self.path}" if self.path else "tiny"

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(list(prompts), params)
