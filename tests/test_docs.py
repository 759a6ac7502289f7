"""The documentation a newcomer navigates: a short README with a table of contents, links that
resolve (files and `#anchors`), and no pointer to documents or data outside the repository.

Plain Python (no JAX): it reads Markdown and text files only.
"""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
MARKDOWN = [README, *DOCS]
# Documents that are not part of the project (a design note, a local data folder), so a user cannot
# follow them; tests/ and benchmarks/ may still read the local data.
FORBIDDEN = ("methods.md", "stack.md", "../shared")
SCANNED = ("s4mi_jax", "configs", "docs")

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: Markdown markup dropped, lowercased, punctuation removed
    (letters, digits, `-`, `_` and spaces kept), spaces turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_ " or cat[0] in "LN" or cat == "Mn":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = "\n".join(_prose_lines(path.read_text(encoding="utf-8")))
    targets = _LINK.findall(text) + _IMAGE.findall(text)
    return [t for t in targets if not t.startswith(_EXTERNAL)]


def test_slugs_follow_github():
    assert github_slug("Run on Cloud TPU / multi-GPU") == "run-on-cloud-tpu--multi-gpu"
    assert (
        github_slug("config.json and the data fingerprint") == "configjson-and-the-data-fingerprint"
    )
    assert github_slug("Before paying: will it fit?") == "before-paying-will-it-fit"
    assert github_slug("The `:local` sweep, *again*") == "the-local-sweep-again"


def test_readme_is_short_and_has_a_table_of_contents():
    size = len(README.read_bytes())
    assert size <= 15 * 1024, (
        f"README.md is {size} bytes; keep it under 15 KB (details go to docs/)"
    )
    text = README.read_text(encoding="utf-8")
    toc = re.search(r"^## (Contents|Table of contents)\n\n((?:- \[.*\]\(#.*\)\n)+)", text, re.M)
    assert toc, "README.md needs a '## Contents' list of links to its sections"
    listed = set(re.findall(r"\]\(#([^)]+)\)", toc.group(2)))
    sections = {
        github_slug(h) for h in re.findall(r"^## (.+)$", "\n".join(_prose_lines(text)), re.M)
    }
    assert sections - {"contents", "table-of-contents"} <= listed, (
        "a README section is missing from the contents"
    )


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in DOCS:
        if page.name != "README.md":
            assert f"]({page.relative_to(ROOT / 'docs').as_posix()})" in index, page.name


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def _text_files():
    files = [README]
    for folder in SCANNED:
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file())
    for path in files:
        if "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (sample images, ...)
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_no_reference_outside_the_repository():
    """No file of the package, configs or docs cites a document or data folder the user lacks."""
    found = [
        f"{path.relative_to(ROOT)}:{n}: {s!r}"
        for path, text in _text_files()
        for n, line in enumerate(text.splitlines(), 1)
        for s in FORBIDDEN
        if s in line
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)
