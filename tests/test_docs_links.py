"""Every relative link of README.md and docs/*.md resolves to a file of the repository, and an
anchor to a heading of that file; the code's citations of the docs (``docs/metrics.md#sscd-m1``
in a docstring) resolve the same way; nothing points outside the repository at ../shared.

Anchors follow GitHub's rule for headings: lower-cased, every character but letters, digits,
spaces, hyphens and underscores dropped, spaces turned into hyphens, a repeated heading suffixed
``-1``, ``-2``...; ``<a id="...">`` / ``<a name="...">`` count too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
CODE_DIRS = ("memberbench", "tasks", "tests", "scripts", "benchmarks")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)
CODE_CITATION = re.compile(r"\b(docs/[\w.-]+\.md)(#[\w-]+)?")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits, underscores
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for h in HEADING.findall(text):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub("", text)
    return LINK.findall(text)


def check_target(source: Path, target: str) -> str:
    """'' if ``target`` (relative to ``source``) resolves, else why not."""
    path_part, _, anchor = target.partition("#")
    dest = (source.parent / path_part).resolve() if path_part else source
    try:
        dest.relative_to(REPO)
    except ValueError:
        return f"{target}: outside the repository"
    if not dest.exists():
        return f"{target}: no such file {dest.relative_to(REPO)}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: {dest.relative_to(REPO)} has no heading with anchor #{anchor}"
    return ""


def test_slug_follows_githubs_rule():
    # hand-computed from GitHub's rendering of the same headings
    assert slug("Wen's magnitude (M4)") == "wens-magnitude-m4"
    assert slug("4. SSCD recipes: `--sscd-recipe NAME`") == "4-sscd-recipes---sscd-recipe-name"
    assert slug("Decomposition D1 and D2 (M6)") == "decomposition-d1-and-d2-m6"
    assert slug("2026-12-01: textured canaries") == "2026-12-01-textured-canaries"


def test_the_checker_catches_a_broken_link(tmp_path, monkeypatch):
    """The checks can fail: a missing file, a missing anchor and a path outside the repo."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Some section\n\nSee [b](b.md#there).\n")
    (tmp_path / "b.md").write_text("# B\n\n## Here\n")
    src = tmp_path / "a.md"
    assert check_target(src, "b.md#here") == ""
    assert check_target(src, "#some-section") == ""
    assert "no heading with anchor #there" in check_target(src, "b.md#there")
    assert "no such file" in check_target(src, "c.md")
    assert "outside the repository" in check_target(src, "../shared/SPEC.md")
    assert links(src) == ["b.md#there"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    bad = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        why = check_target(doc, target)
        if why:
            bad.append(why)
    assert not bad, f"{doc.relative_to(REPO)}: " + "; ".join(bad)


def test_code_citations_of_the_docs_resolve():
    bad = []
    for d in CODE_DIRS:
        for f in sorted((REPO / d).rglob("*.py")):
            for m in CODE_CITATION.finditer(f.read_text(encoding="utf-8")):
                target = m.group(1) + (m.group(2) or "")
                why = check_target(REPO / "README.md", target)  # cited from the repo root
                if why:
                    bad.append(f"{f.relative_to(REPO)}: {why}")
    assert not bad, "\n".join(bad)


def test_nothing_references_the_outside_spec():
    """The definitions are the project's own (docs/metrics.md); the docs and the code never
    point at the files beside the repository.  (Tests may read ../shared/prompts in place.)"""
    bad = []
    files = list(DOCS)
    for d in ("memberbench", "tasks", "scripts", "benchmarks"):
        files += sorted((REPO / d).rglob("*.py"))
    for f in files:
        text = f.read_text(encoding="utf-8")
        for needle in ("../shared", "/work/shared", "SPEC.md"):
            if needle in text:
                bad.append(f"{f.relative_to(REPO)}: {needle}")
    assert not bad, bad
