"""The documentation: README.md stays short and leads to docs/, and every relative link and
anchor in README.md and docs/*.md leads somewhere."""

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
EXTERNAL = ("http://", "https://", "mailto:")

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*$")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def markdown_files() -> list[Path]:
    return [README, *pages()]


def name_of(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The lines outside fenced code blocks, where links and headings are Markdown."""
    kept: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """The targets of the inline and reference links of a Markdown text, code left out."""
    body = INLINE_CODE.sub("", prose(text))
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def relative_links(path: Path) -> list[str]:
    targets = links(path.read_text(encoding="utf-8"))
    return [target for target in targets if not target.startswith(EXTERNAL)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, only letters, digits, spaces, hyphens and
    underscores kept, spaces turned into hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading gets -1, -2, ... as on
    GitHub."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    for line in prose(path.read_text(encoding="utf-8")).splitlines():
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(1))
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` whose file does not exist or whose #anchor names no
    heading of that file, with the reason."""
    broken: list[str] = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and (
            not destination.is_file() or unquote(fragment) not in anchors(destination)
        ):
            broken.append(f"{target}: no heading with the anchor #{fragment}")
    return broken


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Replaces the suite's fixture of that name: these tests read files and need no MongoDB."""


def test_the_link_reader_finds_links_and_anchors_as_github_does() -> None:
    """The checks below depend on these readers; links in code must not count."""
    text = "See [a](b.md#c-d) and `[x](y.md)`.\n```\n[z](z.md)\n```\n[ref]: e.md\n"
    assert links(text) == ["b.md#c-d", "e.md"]
    assert slug("Sessions, logout and login throttling") == "sessions-logout-and-login-throttling"
    assert slug("The `social-api` command") == "the-social-api-command"


def test_readme_is_at_most_250_lines() -> None:
    """README.md leads with how to run and use the service; every deeper topic is in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_links_to_every_page_of_docs() -> None:
    """A page that README.md does not link is a page nobody finds."""
    assert pages(), "docs/ holds no Markdown page"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert any(DOCS in target.parents for target in linked), "README.md links to nothing in docs/"
    unlinked = [name_of(page) for page in pages() if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("path", markdown_files(), ids=name_of)
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link names an existing file and, with an #anchor, one of its headings."""
    broken = broken_links(path)
    assert not broken, f"{name_of(path)}: {broken}"


@pytest.mark.parametrize("path", markdown_files(), ids=name_of)
def test_code_fences_are_closed(path: Path) -> None:
    """An unclosed fence turns the rest of the page into one code block."""
    text = path.read_text(encoding="utf-8")
    fences = [line for line in text.splitlines() if FENCE.match(line)]
    assert len(fences) % 2 == 0, f"{name_of(path)} has an unclosed code fence"


@pytest.mark.parametrize("path", pages(), ids=name_of)
def test_each_page_starts_with_its_title(path: Path) -> None:
    """A page opens with its `# Title`, which is what the README's list and a browser show."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), f"{name_of(path)} starts with {first!r}"
