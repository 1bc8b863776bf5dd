"""The README and docs/ pages point only at files that exist.

A relative link (`[text](path)`, `![alt](path)`) must resolve from the page's own folder, and a code span
that names a repository path (`configs/...`, `benchmarks/...`, ...) must name one that is there: the README's
layout table and the pages' commands are what a newcomer follows, so a file moved without its text fails here.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# Folders of the repository itself; paths under them in code spans are checked. Paths a run writes (runs/,
# data/corpus/, probe_results/) are not in the repository and are left alone.
TRACKED = ("configs/", "callbacks/", "sweeps/", "benchmarks/", "docs/", "tests/", "src/")


def relative_links(text: str) -> list[str]:
    """Link targets that are neither web addresses nor in-page anchors, without their #fragment."""
    targets = (match.group(1) for match in LINK.finditer(text))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def repository_paths(text: str) -> list[str]:
    """The first word of each code span that names a path under a tracked folder, placeholders skipped."""
    words = (match.group(1).split()[0] for match in CODE_SPAN.finditer(text) if match.group(1).strip())
    return [w.rstrip(",.:;") for w in words if w.startswith(TRACKED) and not re.search(r"[<>{}$]|\.\.\.", w)]


def exists(path: Path) -> bool:
    """A file or folder, or a glob pattern that matches at least one."""
    if "*" in path.name or "*" in str(path.parent):
        return any(ROOT.glob(str(path.relative_to(ROOT))))
    return path.exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_repository_paths_exist(page: Path) -> None:
    missing = [p for p in repository_paths(page.read_text()) if not exists(ROOT / p)]
    assert not missing, f"{page.relative_to(ROOT)} names paths that are not in the repository: {missing}"


def test_the_checks_catch_a_broken_link_and_a_missing_path() -> None:
    text = "See [a](docs/missing.md), ![b](figures/x.png#top), [web](https://example.org), [c](#anchor). Run `configs/missing.yaml --x 1`."
    assert relative_links(text) == ["docs/missing.md", "figures/x.png"]
    assert repository_paths(text) == ["configs/missing.yaml"]
    assert not exists(ROOT / "configs/missing.yaml") and exists(ROOT / "configs/theorem_lab/*.yaml")
