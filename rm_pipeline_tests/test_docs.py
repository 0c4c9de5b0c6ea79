"""The docs say only what is true: the generated settings reference is current, every relative link and
anchor resolves, every documented `rm-pipeline` command and option exists, every named file exists."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", ROOT / "docker" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
    + list((ROOT / "recipes").glob("*.md"))
)
# what the docs tell people to type today; CHANGELOG.md records history, options since renamed included
CURRENT_DOCS = [path for path in DOCS if path.name != "CHANGELOG.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
COMMAND = re.compile(r"(?<![\w./-])rm-pipeline(?![\w-])[ \t]+([a-z][\w-]*)([^\n|;&#`]*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")
# repository paths a reader is told to run or open; `.venv/bin/` is made by the Quickstart
PATH = re.compile(
    r"(?<![\w./$<-])((?:\.venv/bin|scripts|bench|docker|recipes|docs|rm_pipeline_tests|rm_pipeline)/[\w./-]*)"
)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code(text: str) -> list[str]:
    """The fenced blocks and inline code spans of a Markdown text."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return blocks + [match.group(2) for match in CODE_SPAN.finditer(prose)]


def test_the_settings_reference_is_generated_from_the_code():
    result = subprocess.run(
        [sys.executable, "-m", "rm_pipeline.reference", "--check"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"docs/settings.md is stale: regenerate it with `python -m rm_pipeline.reference` and commit it\n"
        f"{result.stdout[-6000:]}{result.stderr[-2000:]}"
    )


@cache
def _anchors(path: Path) -> frozenset[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        anchors.add(slug)
    return frozenset(anchors)


@pytest.mark.parametrize("doc", DOCS, ids=_relative)
def test_every_relative_link_resolves(doc):
    assert doc.exists(), f"{_relative(doc)} is missing"
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {_relative(resolved)}")
    assert not broken, f"{_relative(doc)} links to what does not exist:\n" + "\n".join(broken)


def _help(argv: list[str]) -> str:
    """What `rm-pipeline ARGV --help` prints, from the parser itself."""
    from rm_pipeline import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
    return out.getvalue()


@cache
def _commands() -> dict[str, frozenset[str]]:
    """Each subcommand and the options it accepts: from `build_parser()` where it exists, else from --help."""
    from rm_pipeline import cli

    if hasattr(cli, "build_parser"):
        for action in cli.build_parser()._actions:
            if isinstance(action, argparse._SubParsersAction):
                return {
                    name: frozenset(option for each in sub._actions for option in each.option_strings)
                    for name, sub in action.choices.items()
                }
    listing = re.search(r"\{([\w,-]+)\}", _help([]))
    assert listing, "rm-pipeline --help lists no subcommands"
    return {name: frozenset(OPTION.findall(_help([name]))) for name in listing.group(1).split(",")}


@pytest.mark.parametrize("doc", CURRENT_DOCS, ids=_relative)
def test_every_documented_command_and_option_exists(doc):
    assert doc.exists(), f"{_relative(doc)} is missing"
    unknown = []
    for code in _code(doc.read_text(encoding="utf-8")):
        for name, rest in COMMAND.findall(code):
            if name not in _commands():
                unknown.append(f"rm-pipeline {name}: no such command")
                continue
            for option in OPTION.findall(rest):
                if option not in _commands()[name]:
                    unknown.append(f"rm-pipeline {name} {option}: no such option")
    assert not unknown, f"{_relative(doc)} documents commands that do not exist:\n" + "\n".join(sorted(set(unknown)))


def _made_by_the_quickstart() -> set[str]:
    """What `python3 -m venv .venv && .venv/bin/pip install -e .` puts in .venv/bin/."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"].get("scripts", {})
    return {".venv/bin/" + name for name in ("python", "python3", "pip", "activate", *scripts)}


def _ignored_by_git(path: str) -> bool:
    """A file the reader makes (e.g. docker/.env from .env.example), which git is told to ignore."""
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True, check=False)
    return result.returncode == 0


@pytest.mark.parametrize("doc", CURRENT_DOCS, ids=_relative)
def test_every_named_file_exists(doc):
    assert doc.exists(), f"{_relative(doc)} is missing"
    missing = []
    for code in _code(doc.read_text(encoding="utf-8")):
        for path in PATH.findall(code):
            path = path.rstrip(".,/")
            if path.startswith(".venv/bin/"):
                installed = Path(sys.executable).parent / path.removeprefix(".venv/bin/")  # by a dependency
                if path not in _made_by_the_quickstart() and not installed.exists():
                    missing.append(f"{path}: not made by the Quickstart")
            elif not (ROOT / path).exists() and not _ignored_by_git(path):
                missing.append(path)
    assert not missing, f"{_relative(doc)} names files that do not exist:\n" + "\n".join(sorted(set(missing)))
