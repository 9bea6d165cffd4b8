"""Reading an OpenAI completions / chat-completions response body into :class:`Completion` objects:
texts, log-probs, token counts and finish reasons.

Why apart from the backend: it is a plain function of the JSON body (no HTTP), and the token-count
rules (per-choice count, else log-prob count, else ``usage`` split evenly) are easiest to test alone.
"""

from __future__ import annotations

from typing import Any

from deliberate.types import Completion


def _split_evenly(total: int, k: int) -> list[int]:
    base, rem = divmod(max(0, int(total)), k)
    return [base + (1 if i < rem else 0) for i in range(k)]


def parse_choices(body: Any, chat: bool) -> list[Completion]:
    """Turn one completions / chat-completions response body into Completions, sorted by ``index``.

    Raises ``ValueError`` when the body does not have the OpenAI shape (the caller retries those).
    """
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ValueError("response has no 'choices'")
    choices = list(body["choices"])
    if not all(isinstance(c, dict) for c in choices):
        raise ValueError("a choice is not an object")
    choices.sort(key=lambda c: c.get("index", 0) if isinstance(c.get("index", 0), int) else 0)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)

    texts, lps_all = [], []
    for c in choices:
        if chat:
            msg = c.get("message")
            if not isinstance(msg, dict):
                raise ValueError("chat choice has no 'message'")
            text = msg.get("content") or ""
            lp = c.get("logprobs")
            lps = None
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                lps = tuple(float(t["logprob"]) for t in lp["content"] if t.get("logprob") is not None)
        else:
            text = c.get("text")
            if not isinstance(text, str):
                raise ValueError("completion choice has no 'text'")
            lp = c.get("logprobs")
            lps = None
            if isinstance(lp, dict) and isinstance(lp.get("token_logprobs"), list):
                lps = tuple(float(x) for x in lp["token_logprobs"] if x is not None)
        if not isinstance(text, str):
            raise ValueError("choice text is not a string")  # noqa: TRY004 - documented ValueError
        texts.append(text)
        lps_all.append(lps)

    split = _split_evenly(int(usage.get("completion_tokens") or 0), len(choices))
    out = []
    for i, c in enumerate(choices):
        per = c.get("completion_tokens")
        if isinstance(per, int) and not isinstance(per, bool) and per >= 0:
            ntok = per  # extension sent by `deliberate serve`
        elif lps_all[i] is not None:
            ntok = len(lps_all[i])
        else:
            ntok = split[i]
        reason = "length" if c.get("finish_reason") == "length" else "stop"
        out.append(Completion(texts[i], prompt_tokens, ntok, reason, lps_all[i]))
    return out
