"""Model presets: named bundles of search settings that fit a kind of generator, so a sweep on an
instruct model is ``--preset instruct`` (or ``preset: instruct`` in its config file), not six flags.

The defaults of :class:`~deliberate.search.base.SearchSettings` fit the tiny model (a step per line,
48 tokens a step, 12 steps). ``instruct`` fits chat/instruct models such as Qwen2.5-Math-Instruct, as
search-and-learn runs them: steps are paragraphs (``"\\n\\n"``), up to 512 tokens each and 40 of them,
2048 tokens a solution, the task's instruction prompt. A preset's ``aggregation`` is the one the
verifier's model card scores with (:data:`CARD_AGGREGATION`): ``last`` for outcome verifiers and
RLHFlow's PRMs (search-and-learn's setting), ``min`` for the step PRMs (Math-Shepherd, Qwen2.5-Math-PRM,
TRL token-classification PRMs, ours). Settings given explicitly (``--setting``) override the preset's.
"""

from __future__ import annotations

from typing import Any

from deliberate.errors import DeliberateError

#: the settings of each preset ("tiny": the SearchSettings defaults, named)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"step_delimiter": "\n", "step_tokens": 48, "max_steps": 12, "prompt_style": "plain"},
    "instruct": {"step_delimiter": "\n\n", "step_tokens": 512, "max_steps": 40, "max_tokens": 2048,
                 "prompt_style": "instruct"},
}
#: how each verifier kind's scores become a solution's score, as its model card (or training) reads them
CARD_AGGREGATION: dict[str, str] = {
    "rlhflow-prm": "last", "hf-orm": "last", "orm": "last", "lorm": "last", "genrm": "last", "outcome": "last",
    "math-shepherd": "min", "qwen-prm": "min", "hf-prm": "min", "prm": "min", "lprm": "min", "dpo": "min",
}


def preset_settings(name: str, verifier: str | None = None) -> dict[str, Any]:
    """The search settings of preset ``name`` for verifier spec ``verifier`` (``KIND[:ARG]``).

    >>> preset_settings("instruct", "rlhflow-prm:RLHFlow/Llama3.1-8B-PRM-Deepseek-Data")["aggregation"]
    'last'
    """
    if name not in PRESETS:
        raise DeliberateError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    kind = (verifier or "").split(":", 1)[0]
    return {**PRESETS[name], **({"aggregation": CARD_AGGREGATION[kind]} if kind in CARD_AGGREGATION else {})}
