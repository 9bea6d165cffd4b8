"""The ``hf`` backend: any transformers causal LM (hub id, checkpoint directory or GGUF file).

Generation goes through the project's own sampling engine (:mod:`deliberate.models.engine`), so
an HF model gets the same seeding contract, stop strings, log-probs and token counts as the tiny
model. This file only loads the model, adapts its tokenizer to the engine's small tokenizer
protocol, and applies the chat template when asked.

    deliberate eval --backend hf --model smollm2 --chat ...        # built-in SmolLM2-135M-Instruct
    deliberate eval --backend hf --model /path/to/checkpoint ...   # any local checkpoint / .gguf
    deliberate eval --backend hf --model Qwen/Qwen2.5-Math-1.5B-Instruct --backend-arg revision=main ...

A hub id (``org/name``, optionally ``revision=`` a branch, tag or commit) comes through the normal
Hugging Face cache (:mod:`deliberate.hub`: fetched once, ``HF_HUB_OFFLINE=1`` honoured) and
loads from its snapshot directory; a local directory or ``.gguf`` loads as it is. ``trust_remote_code``
(default off) lets a checkpoint run its own modelling code; ``device_map`` (e.g. ``auto``) hands the
placement to accelerate, for a model larger than one device (the engine then feeds the first one).

Device and dtype (``--backend-arg device=cuda --backend-arg dtype=bfloat16``): ``device`` is
``auto`` (default: ``cuda`` when CUDA is available, else ``cpu``), ``cpu``, ``cuda`` or ``cuda:N``;
``dtype`` is ``auto`` (default: bfloat16 on an Ampere-or-newer GPU, else float32), ``float32``,
``bfloat16`` or ``float16``. The model is loaded in that dtype and moved there, and the engine runs
there. ``max_batch_size`` defaults to 32 rows on CPU and 256 on CUDA.

BOS and EOS, the two places instruct models go wrong:
* Plain prompts get a BOS only if the HF tokenizer itself would add one (Llama does, SmolLM2 and
  Qwen do not). Chat prompts get none from us: the chat template writes its own special tokens
  (SmolLM2's BOS *is* ``<|im_start|>``, which the template already starts with).
* Generation stops at the tokenizer's EOS, the EOS ids in ``generation_config.json``, and with
  ``chat`` also at ``<|im_end|>`` when the vocabulary has it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.models import smollm2  # the module, not its names: tests replace its loaders
from deliberate.models.base import Backend, register_backend
from deliberate.models.engine import Engine, default_max_batch_size, resolve_device, resolve_dtype
from deliberate.hub import is_hub_id, snapshot
from deliberate.models.sampling import SamplingParams
from deliberate.models.thinking import thinking_decoder
from deliberate.types import Completion

ALIASES = {"smollm2": "SmolLM2-135M-Instruct"}
DTYPES = ("float32", "bfloat16", "float16")
#: rows per forward when no max_batch_size is given, by device type
MAX_BATCH = {"cpu": 32, "cuda": 256}
CHAT_END = "<|im_end|>"


class ChatText(str):
    """A prompt already rendered with the chat template; a chat backend does not wrap it again.

    :meth:`HFBackend.chat_prompt` returns one, so ``backend.generate([backend.chat_prompt(msgs)])``
    is right whether or not the backend was built with ``chat=True`` (the server relies on this).
    """


class HFTokenizer:
    """Adapter from a Hugging Face tokenizer to the engine's tokenizer protocol.

    ``encode`` adds no special tokens; ``bos_token_id`` is the BOS the engine prepends (``None`` when
    the HF tokenizer adds none, and always ``None`` with ``chat``); ``eos_token_ids`` are all ids
    that end a completion. ``decode(encode(s)) == s`` for ordinary text (special tokens are kept in
    the text, spaces are not "cleaned up").
    """

    def __init__(self, tokenizer: Any, *, chat: bool = False, extra_eos: Iterable[int] = ()):
        self.hf = tokenizer
        self.chat = chat
        self.bos_token_id: int | None = None if chat else added_bos(tokenizer)
        eos: list[int] = []
        if tokenizer.eos_token_id is not None:
            eos.append(int(tokenizer.eos_token_id))
        eos += [int(i) for i in extra_eos]
        if chat:
            end = tokenizer.get_vocab().get(CHAT_END)
            if end is not None:
                eos.append(int(end))
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        self.eos_token_id: int | None = self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        ids = list(self.hf.encode(text, add_special_tokens=False))
        # A prompt that already starts with the BOS token (e.g. a Llama-2 chat template rendered
        # as text) must not get a second one when the engine prepends ours.
        if self.bos_token_id is not None and ids and ids[0] == self.bos_token_id:
            ids = ids[1:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def added_bos(tokenizer: Any) -> int | None:
    """The BOS id the HF tokenizer adds to a plain text by itself, or ``None`` if it adds none."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    probe = "Hello"
    plain = list(tokenizer.encode(probe, add_special_tokens=False))
    full = list(tokenizer.encode(probe, add_special_tokens=True))
    return int(bos) if full[:1] == [bos] and full[1:1 + len(plain)] == plain else None


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: [{"type": "text", "text": ...}, ...]
        parts = []
        for p in content:
            if isinstance(p, Mapping) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
            else:
                raise DeliberateError(f"chat message content parts must be text (got {p!r})")
        return "".join(parts)
    if content is None:
        return ""
    raise DeliberateError(f"chat message content must be a string (got {type(content).__name__})")


def snapshot_name(path: Path) -> str | None:
    """``org/name@commit`` for a snapshot directory of the HF cache (``models--org--name/snapshots/<commit>``),
    so a hub model keeps its readable name after it has been resolved to a path; else ``None``."""
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    return repo[len("models--"):].replace("--", "/") + "@" + path.name[:12]


def resolve_path(path: str | Path, cache_dir: str | Path | None = None, revision: str | None = None
                 ) -> tuple[Path, str]:
    """``path`` option -> (checkpoint dir or .gguf file, readable name); raises for anything else.

    A hub id resolves to its snapshot directory in the HF cache at ``revision`` (see
    :func:`deliberate.hub.snapshot`); ``revision`` is refused for anything but a hub id."""
    key = str(path).strip()
    if revision is not None and not is_hub_id(key):
        raise DeliberateError(f"revision={revision!r} applies to a hub id (org/name), not to {key!r}")
    if key.lower() in ALIASES:
        return smollm2.smollm2_checkpoint(cache_dir), ALIASES[key.lower()]
    p = Path(key).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p, p.stem
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DeliberateError(f"{p} is not a transformers checkpoint directory (no config.json)")
        return p, snapshot_name(p) or p.name
    if is_hub_id(key):
        where = snapshot(key, revision=revision)
        if not (where / "config.json").is_file():
            raise DeliberateError(f"hub model {key} has no config.json: not a transformers checkpoint")
        return where, key
    what = "file is not a .gguf" if p.is_file() else "no such file or directory"
    raise DeliberateError(
        f"hf backend: cannot load {key!r} ({what}); give a checkpoint directory with config.json, "
        f"a .gguf file, a hub id (org/name), or one of the built-in names: {', '.join(ALIASES)}"
    )


def _torch_dtype(dtype: Any, device: str):
    return resolve_dtype(dtype, device, what="hf backend")


def _check_device(device: Any) -> str:
    return str(resolve_device(device, what="hf backend"))


def load_hf(path: Path, *, dtype, device: str, trust_remote_code: bool = False, device_map: Any = None):
    """Load (model, HF tokenizer) from a checkpoint dir or a .gguf file, offline, in eval mode: in
    ``dtype`` directly (no float32 copy first), then moved to ``device`` unless ``device_map`` places it."""
    # lazy: transformers (seconds to import); every backend lookup imports this module, only loading needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.suffix.lower() == ".gguf":
        if device_map is not None:
            raise DeliberateError("hf backend: device_map does not apply to a .gguf file")
        model, tokenizer = smollm2.load_gguf(path)
        model = model.to(dtype)
    else:
        kw = {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map, **kw)
        except (OSError, ValueError, KeyError) as e:
            raise DeliberateError(f"hf backend: could not load checkpoint {path}: {e}") from e
    if device_map is not None:
        return model.eval(), tokenizer
    return model.to(device).eval(), tokenizer


def generation_eos(model) -> list[int]:
    """The EOS ids in ``model.generation_config`` (where the engine also stops)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


@register_backend("hf")
class HFBackend(Backend):
    """A local transformers causal LM behind the sampling engine.

    ``path``: hub id (``revision``: branch, tag or commit), checkpoint directory, ``.gguf`` file, or
    ``smollm2`` (converted once and cached, see :mod:`deliberate.models.smollm2`; ``cache_dir`` overrides
    where). ``trust_remote_code``, ``device_map``: as ``from_pretrained`` takes them (module docstring).
    ``system_prompt``: with ``chat``, a system message before each prompt's user message (the ``openai``
    backend's option of the same name renders the same text). ``chat``: render each prompt
    as one user message with the tokenizer's chat template. ``model``/``tokenizer``: use an
    already-built transformers model and tokenizer instead of loading ``path`` (it is moved and cast
    in place). ``device``/``dtype``: see the module docstring; ``max_batch_size``: rows per forward
    (default :data:`MAX_BATCH` for the device). ``think``/``think_temperature``: think-then-predict decoding
    with the checkpoint's Quiet-STaR head (:mod:`deliberate.models.thinking`).
    """

    name = "hf"

    def __init__(self, path: str | Path | None = None, *, chat: bool = False, dtype: str | None = "auto",
                 device: str = "auto", max_batch_size: int | None = None, cache_dir: str | Path | None = None,
                 model: Any = None, tokenizer: Any = None, revision: str | None = None,
                 trust_remote_code: bool = False, device_map: Any = None, system_prompt: str | None = None,
                 think: int | bool = 0, think_temperature: float = 1.0):
        if not isinstance(trust_remote_code, bool):
            raise DeliberateError(f"hf backend: trust_remote_code must be true or false (got {trust_remote_code!r})")
        if system_prompt is not None and (not chat or not isinstance(system_prompt, str)):
            raise DeliberateError("hf backend: system_prompt must be a string and needs chat=True")
        self.system_prompt = system_prompt or None
        device = _check_device(device)
        torch_dtype = _torch_dtype(dtype, device)
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(device, MAX_BATCH)
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise DeliberateError(f"hf backend: max_batch_size must be an integer >= 1 (got {max_batch_size!r})")
        t0 = time.perf_counter()
        if model is None:
            if path is None:
                raise DeliberateError(
                    "--backend hf needs --model: a hub id, a checkpoint directory, a .gguf file, or 'smollm2'"
                )
            where, self._name = resolve_path(path, cache_dir, revision)
            model, tokenizer = load_hf(where, dtype=torch_dtype, device=device,
                                       trust_remote_code=trust_remote_code, device_map=device_map)
            if device_map is not None:  # accelerate placed it: inputs go where the embeddings are
                device = str(model.get_input_embeddings().weight.device)
        else:
            if tokenizer is None:
                raise DeliberateError("HFBackend(model=...) also needs tokenizer=")
            self._name = str(path) if path is not None else type(model).__name__
            model = model.to(device=device, dtype=torch_dtype).eval()
        self.load_s = time.perf_counter() - t0
        self.path = str(path) if path is not None else None
        self.chat = bool(chat)
        self.device = device
        self.dtype = torch_dtype
        self.model, self.hf_tokenizer = model, tokenizer
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise DeliberateError(f"hf backend: chat=True but the tokenizer of {self._name} has no chat template")
        self.tokenizer = HFTokenizer(tokenizer, chat=self.chat, extra_eos=generation_eos(model))
        self.engine = Engine(model, self.tokenizer, device=device, max_batch_size=max_batch_size,
                             eos_token_ids=self.tokenizer.eos_token_ids)
        if think:
            where = resolve_path(path, cache_dir, revision)[0] if path is not None else None
            self.engine = thinking_decoder(where, model, self.tokenizer, think, think_temperature, max_batch_size,
                                           self.tokenizer.eos_token_ids)

    @property
    def model_name(self) -> str:
        return f"hf:{self._name}" + (":chat" if self.chat else "")

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> ChatText:
        """Render chat ``messages`` ([{"role", "content"}, ...]) with the chat template, ready for the
        assistant's reply (``add_generation_prompt=True``)."""
        if not getattr(self.hf_tokenizer, "chat_template", None):
            raise DeliberateError(f"hf backend: the tokenizer of {self._name} has no chat template")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise DeliberateError("chat messages must be a non-empty list of {'role', 'content'} objects")
        clean = []
        for m in messages:
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise DeliberateError(f"each chat message must be an object with a 'role' (got {m!r})")
            clean.append({"role": m["role"], "content": _message_text(m.get("content"))})
        try:
            text = self.hf_tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja errors, e.g. a template that rejects a role
            raise DeliberateError(f"hf backend: chat template failed: {e}") from e
        return ChatText(text)

    def render(self, prompt: str) -> str:
        """The text the engine continues for ``prompt``: as is, or (``chat``) as the user's message after the
        system prompt, ready for the assistant's reply; a :class:`ChatText` is already rendered."""
        if not self.chat or isinstance(prompt, ChatText):
            return prompt
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return self.chat_prompt([*system, {"role": "user", "content": prompt}])

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate([self.render(p) for p in prompts], params)

    def continue_many(self, requests: Sequence[tuple[str, str]], params: SamplingParams) -> list[list[Completion]]:
        """With ``chat`` each prefix continues the assistant's reply to its prompt."""
        return self.engine.generate([self.render(p) + pre for p, pre in requests], params)

    def continue_from(self, prompt: str, prefixes: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """With ``chat`` the prefix continues the assistant's reply, not the user's message."""
        head = self.render(prompt)
        return self.engine.generate([head + p for p in prefixes], params)
