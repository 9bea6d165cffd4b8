"""HTML building blocks of the report pages: escaped cells, key/value tables, the page template.

Shared by the one-run report (:mod:`deliberate.eval.report`) and the comparison page
(:mod:`deliberate.eval.compare`). The page skeleton, its CSS and the tree viewer's JS are package
data files in ``templates/`` (read with :mod:`importlib.resources`, so an installed wheel carries
them); :func:`fill_page` inlines them, because the page must open anywhere with no external URL.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from deliberate.eval.run_dir import number_or_none


@functools.cache
def template(name: str) -> str:
    """The text of ``templates/<name>``, read once per process."""
    return (resources.files("deliberate.eval") / "templates" / name).read_text(encoding="utf-8")


def fill(text: str, fills: Mapping[str, str]) -> str:
    """``text`` with every ``%%NAME%%`` replaced by ``fills[NAME]``."""
    # one pass, so a placeholder-looking string inside the data is never substituted itself
    return re.sub(r"%%([A-Z_]+)%%", lambda m: fills[m.group(1)], text)


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, because ``JSON.parse`` rejects Python's ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def escape(v: Any) -> str:
    return html.escape(str(v), quote=True)


def format_cell(v: Any, kind: str = "auto") -> str:
    """A cell's text: counts with thousands separators, fractions to 3 decimals, seconds with a unit."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if kind == "frac":
            return f"{v:.3f}"
        if kind == "count":
            return f"{v:,.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:.2f}"
        if kind == "seconds":
            return f"{v:,.1f} s" if v >= 1 else f"{v * 1000:.0f} ms"
        if isinstance(v, int):
            return f"{v:,}" if abs(v) >= 10_000 else str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def table_cell(v: Any, kind: str = "auto") -> str:
    numeric = (isinstance(v, (int, float)) and not isinstance(v, bool)) or (v is None and kind != "auto")
    return f'<td class="{"num" if numeric else "txt"}">{escape(format_cell(v, kind))}</td>'


def accuracy_cell(row: Mapping[str, Any]) -> str:
    """Accuracy as a number plus a small bar with the CI as a whisker: the scaling pattern at a glance."""
    acc = number_or_none(row.get("accuracy"))
    ci = row.get("ci", row.get("accuracy_ci"))  # self-correct's entries name it accuracy_ci
    lo = hi = None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(number_or_none(x) is not None for x in ci):
        lo, hi = float(ci[0]), float(ci[1])
    if acc is None:
        return '<td class="num">—</td><td></td>'
    bar = ""
    if 0 <= acc <= 1:
        whisker = ""
        if lo is not None and hi is not None:
            a, b = max(0.0, min(lo, 1.0)), max(0.0, min(hi, 1.0))
            whisker = f'<span class="ci" style="left:{a * 100:.1f}%;width:{max(b - a, 0) * 100:.1f}%"></span>'
        bar = f'<span class="bar"><span class="fill" style="width:{acc * 100:.1f}%"></span>{whisker}</span>'
    ci_text = f' <span class="ci-text">[{lo:.3f}, {hi:.3f}]</span>' if lo is not None else ""
    return f'<td class="num acc"><b>{acc:.3f}</b>{ci_text}</td><td class="barcell">{bar}</td>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _kind_of(key: str) -> str:
    """Formatting by naming convention (``*_s`` seconds, ``*tokens``/``*calls`` counts), as the writers name keys."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith("_s"):
        return "seconds"
    if leaf.endswith(("tokens", "calls")):
        return "count"
    return "auto"


def kv_table(d: Mapping[str, Any]) -> str:
    """A two-column key/value table; nested dicts become dotted keys so the whole config is on one screen."""
    items = list(_flatten(d))
    if not items:
        return '<p class="empty">(none recorded)</p>'
    body = "".join(f'<tr><th class="key">{escape(k)}</th><td class="val">{escape(format_cell(v, _kind_of(k)))}</td></tr>'
                   for k, v in items)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes, so ``</script>`` in data can't end it."""
    text = json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fill_page(*, title: str, meta_html: str, nav_html: str, generated: str, sections: Sequence[str],
              run_json: Any, trees: Sequence[Any] = (), js: str = "") -> str:
    """The page template with its parts filled in (``title`` and ``generated`` are escaped here)."""
    return fill(template("page.html"), {
        "TITLE": escape(title), "CSS": template("report.css"), "JS": js, "META": meta_html, "NAV": nav_html,
        "GENERATED": escape(generated), "SECTIONS": "\n".join(sections), "RUN_JSON": script_json(run_json),
        "TREE_JSON": script_json(list(trees))})


def write_page(path: Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically: a browser refreshing mid-write sees the old page or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
