"""How a prompt, a system prompt and a partial solution reach a served chat model, so that the partial
solution is continued as the *assistant's* reply, never glued onto the user's message.

Why: step search (beam, DVTS, MCTS ...) asks for continuations of partial solutions. With a chat model
the partial solution belongs in the assistant's turn; OpenAI-compatible servers offer two ways to say
so, and the ``openai`` backend uses one of them:

* **client-side template** (``tokenizer=`` the served model's hub id or directory): the chat template
  is applied here, exactly as the in-process ``hf`` backend applies it (``[system,] user`` with the
  generation prompt, then the partial solution verbatim), and the text goes to ``/v1/completions``.
  Works with every server (vLLM, SGLang, llama.cpp, ``deliberate serve``) and keeps the partial
  solution byte for byte. A BOS that the template writes is dropped when the tokenizer adds one
  itself, since the server adds it on ``/v1/completions`` (no double BOS);
* **server-side template** (no ``tokenizer``): ``/v1/chat/completions`` with the partial solution as a
  final assistant message and ``continue_final_message: true, add_generation_prompt: false`` (vLLM's
  and SGLang's fields). Note that ``transformers`` (and so those servers) strips the final message's
  trailing whitespace when it continues it, so a partial solution ending in the step delimiter
  (``"\\n\\n"``) is continued from before it; use ``tokenizer=`` where that matters.
"""

from __future__ import annotations

from typing import Any

from deliberate.errors import DeliberateError
from deliberate.models.hf import added_bos, resolve_path

#: the request fields that make vLLM / SGLang continue the final (assistant) message
CONTINUE_FIELDS = {"continue_final_message": True, "add_generation_prompt": False}


def chat_messages(prompt: str, system_prompt: str | None = None, prefix: str = "") -> list[dict[str, str]]:
    """``[system,] user[, assistant(prefix)]``: the messages of one request (no assistant turn when the
    partial solution is empty)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    if prefix:
        messages.append({"role": "assistant", "content": prefix})
    return messages


class ClientTemplate:
    """The served model's chat template, applied on the client: ``render(prompt, system, prefix)`` is the
    text to send to ``/v1/completions``."""

    def __init__(self, tokenizer: str, revision: str | None = None, trust_remote_code: bool = False):
        from transformers import AutoTokenizer  # lazy: transformers (seconds); only this mode needs it

        path, self.name = resolve_path(tokenizer, revision=revision)
        try:
            if path.suffix.lower() == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
            else:
                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                    trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise DeliberateError(f"openai backend: cannot load the tokenizer {tokenizer!r}: {e}") from None
        if not getattr(tok, "chat_template", None):
            raise DeliberateError(f"openai backend: the tokenizer {tokenizer!r} has no chat template")
        self.tokenizer = tok
        # the server adds the BOS on /v1/completions when the tokenizer adds one: the template's must go
        self.bos = tok.bos_token if added_bos(tok) is not None else None

    def render(self, prompt: str, system_prompt: str | None = None, prefix: str = "") -> str:
        try:
            text = self.tokenizer.apply_chat_template(chat_messages(prompt, system_prompt), tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as e:  # jinja errors, e.g. a template that refuses a system message
            raise DeliberateError(f"openai backend: the chat template of {self.name} failed: {e}") from e
        if self.bos and text.startswith(self.bos):
            text = text[len(self.bos):]
        return text + prefix


def request_fields(prompt: str, prefix: str, *, chat: bool, template: ClientTemplate | None,
                   system_prompt: str | None) -> tuple[str, dict[str, Any]]:
    """(endpoint path, the request fields that carry the text) for one prompt and partial solution."""
    if template is not None:
        return "/completions", {"prompt": template.render(prompt, system_prompt, prefix)}
    if chat:
        fields: dict[str, Any] = {"messages": chat_messages(prompt, system_prompt, prefix)}
        if prefix:
            fields.update(CONTINUE_FIELDS)
        return "/chat/completions", fields
    return "/completions", {"prompt": prompt + prefix}
