"""The README and the docs/ pages stay true: the README is short enough to read (size, line lengths),
every link and image resolves inside the repository (heading anchors included), every repository path
they name in backticks exists, every `deliberate ...` command they show parses with the real CLI, and
the README's config-file example parses to the sweep it describes and runs (on the tiny model).

    python -m pytest -q tests/test_readme.py
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from deliberate.cli import build_parser, main_cli
from deliberate.cli import sweep as sweep_cli
from deliberate.cli.common import backend_spec_from_args
from deliberate.cli.config_file import apply_config_file, relax_required
from deliberate.cli.main import check_recipe_name
from deliberate.tasks.base import get_task

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_CHARS = 10_000
MAX_LINE = 200
#: the only places outside the repository a page may link to: papers and the projects we build on
EXTERNAL_HOSTS = {"arxiv.org", "github.com", "huggingface.co", "doi.org", "openreview.net", "aclanthology.org",
                  "proceedings.neurips.cc", "proceedings.mlr.press", "pytorch.org", "docs.vllm.ai", "docs.ray.io"}
#: top-level folders whose files the pages name in backticks (`examples/python_api.py`)
REPO_DIRS = ("src/", "examples/", "scripts/", "benchmarks/", "configs/", "tests/", "docs/", ".ci/")

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
COMMAND_LINE = re.compile(r"^\s*([A-Z_][A-Z0-9_]*=\S*\s+)*deliberate\s")


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    """(prose lines as (number, text), code blocks as (info string, body)) of a markdown page."""
    prose, blocks, block, info = [], [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block, info = [], line.strip().lstrip("`~").strip()
            else:
                blocks.append((info, "\n".join(block)))
                block = None
        elif block is None:
            prose.append((number, line))
        else:
            block.append(line)
    assert block is None, "a code block is never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group()[1:-1], heading.strip()).lower()
    return "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in split_fences(page.read_text(encoding="utf-8"))[0]:
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in split_fences(page.read_text(encoding="utf-8"))[0]
            for m in LINK.finditer(INLINE_CODE.sub("", line))]


def test_readme_is_short_and_its_lines_fit():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= MAX_README_CHARS, f"README.md is {len(text)} characters (at most {MAX_README_CHARS})"
    long = [n for n, line in split_fences(text)[0] if len(line) > MAX_LINE]
    assert not long, f"README.md lines over {MAX_LINE} characters outside code blocks: {long}"


def test_readme_shows_the_two_commands_and_the_plot():
    text = README.read_text(encoding="utf-8")
    bodies = [body.strip() for _, body in split_fences(text)[1]]
    assert "bash scripts/setup.sh && deliberate quickstart" in bodies
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert ci in bodies, f"README's test command is not .ci/run's ({ci!r})"
    images = [target for _, target in links(README) if target.endswith(".png")]
    assert images and images[0] == "docs/img/quickstart.png"
    assert text.index("docs/img/quickstart.png") < text.index("## ", text.index("\n") + 1)  # near the top


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(page):
    bad = []
    for number, target in links(page):
        parts = urlsplit(target)
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if parts.scheme in ("http", "https"):
            host = parts.hostname or ""
            if not any(host == h or host.endswith("." + h) for h in EXTERNAL_HOSTS):
                bad.append(f"{where} (not a known paper or project site)")
            continue
        if parts.scheme or parts.netloc or target.startswith("/"):
            bad.append(f"{where} (points outside the repository)")
            continue
        file = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not file.is_relative_to(ROOT):
            bad.append(f"{where} (points outside the repository)")
        elif not file.exists():
            bad.append(f"{where} (no such file)")
        elif parts.fragment and file.suffix == ".md" and parts.fragment not in anchors(file):
            bad.append(f"{where} (no such heading in {file.relative_to(ROOT)})")
    assert not bad, "\n".join(bad)


def test_readme_names_nothing_outside_the_repository():
    text = README.read_text(encoding="utf-8")
    assert "../" not in text and "/work/" not in text and "file:" not in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_in_backticks_exist(page):
    missing = []
    for _, line in split_fences(page.read_text(encoding="utf-8"))[0]:
        for m in INLINE_CODE.finditer(line):
            path = m.group()[1:-1].split("::")[0].split()[0] if m.group()[1:-1].strip() else ""
            if path.startswith(REPO_DIRS) and not any(c in path for c in "<>*{}$") \
                    and not (ROOT / path).exists():
                missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def shown_commands(page: Path) -> list[list[str]]:
    """The `deliberate ...` command lines of a page's shell code blocks, as argv (without `deliberate`);
    a line with `...` in place of flags is a sketch, not a command, and is left out."""
    out = []
    for info, body in split_fences(page.read_text(encoding="utf-8"))[1]:
        if info not in ("", "bash", "sh", "console"):
            continue
        shell_vars: dict[str, str] = {}  # NAME="..." lines of the block, expanded in its commands
        for line in body.replace("\\\n", " ").splitlines():
            if m := re.match(r'^([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)\s*$', line):
                shell_vars[m.group(1)] = shlex.split(m.group(2))[0]
                continue
            if not COMMAND_LINE.match(line):
                continue
            line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda v: shell_vars.get(v.group(1), v.group(0)), line)
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]  # DELIBERATE_PLUGINS=... deliberate ...
            if words[:1] == ["deliberate"] and "..." not in words:
                out.append(words[1:])
    return out


#: pages that record what was run at the time (old flags included) rather than what to run now
RECORDS = {"RESULTS.md", "RESULTS-archive.md", "BENCHMARKS.md", "FINDINGS.md"}
COMMANDS = [(p, argv) for p in PAGES if p.name not in RECORDS for argv in shown_commands(p)]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 40  # the commands that left the README live in the topic pages


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[f"{p.name}:{' '.join(a[:3])}" for p, a in COMMANDS])
def test_shown_command_parses(page, argv, parser, capsys):
    """Every flag a page shows exists on that command (a renamed or removed flag fails here)."""
    check_recipe_name(argv)
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{page.relative_to(ROOT)}: `deliberate {' '.join(argv)}` does not parse "
                    f"({e}): {capsys.readouterr().err.strip()}")


def readme_config() -> str:
    blocks = [body for info, body in split_fences(README.read_text(encoding="utf-8"))[1] if info == "yaml"]
    assert len(blocks) == 1, "README.md should hold one YAML config example"
    return blocks[0]


def parse_with_config(argv: list[str]):
    parser = build_parser()
    relax_required(parser)
    return apply_config_file(parser, argv, parser.parse_args(argv))


def test_readme_config_is_the_sweep_it_describes(tmp_path, monkeypatch):
    text = readme_config()
    run = re.search(r"deliberate (\w+) --config (\S+)", text)
    assert run and run.group(1) == "sweep", "the example says which command runs it"
    monkeypatch.chdir(tmp_path)
    Path(run.group(2)).write_text(text, encoding="utf-8")
    values = yaml.safe_load(text)
    args = parse_with_config(["sweep", "--config", run.group(2)])
    config = sweep_cli.FLAGS.config(args, out_dir=args.out)
    assert config.task == values["task"] and config.out_dir == values["out"]
    assert dict(config.task_options) == values["task_arg"]
    assert list(config.strategies) == values["strategies"]
    assert list(config.budgets) == values["budgets"] and list(config.seeds) == values["seeds"]
    assert config.n_problems == values["n_problems"] and config.verifier == values["verifier"]
    assert dict(config.settings) == values["setting"]
    assert backend_spec_from_args(args) == (values["backend"], {"path": values["model"], "chat": values["chat"]})
    # a flag on the command line overrides the file
    override = parse_with_config(["sweep", "--config", run.group(2), "--budgets", "2"])
    assert list(sweep_cli.FLAGS.config(override, out_dir="o").budgets) == [2]


GSM8K_ROWS = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
               "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
              for a, b in ((3, 4), (12, 5), (7, 9))]


def test_readme_config_runs_on_the_tiny_model(tmp_path, monkeypatch, tiny_ckpt, capsys):
    """The README's sweep, on your own data file, with the model and verifier swapped for ones a test
    can afford: the tiny model (no chat template) and the answer checker (`outcome`)."""
    values = yaml.safe_load(readme_config())
    data = tmp_path / values["task_arg"]["path"]
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS), encoding="utf-8")
    assert len(get_task(values["task"], path=str(data)).problems("test")) == len(GSM8K_ROWS)
    values.pop("chat")
    values.update(backend="tiny", model=str(tiny_ckpt), verifier="outcome", n_problems=2, budgets=[1, 2],
                  out=str(tmp_path / "sweep"), taste="")
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main_cli(["sweep", "--config", "small.yaml"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_problems"] == 2
    assert {(r["strategy"], r["n"]) for r in summary["results"]} >= {(s, n) for s in values["strategies"]
                                                                      for n in (1, 2)}
    rerun = yaml.safe_load((tmp_path / "sweep" / "config.yaml").read_text(encoding="utf-8"))
    assert rerun["task_arg"] == [f"path={values['task_arg']['path']}"]
