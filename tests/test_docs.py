"""The documentation stands on the repository's own files: every relative link resolves inside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc):
    bad = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same file
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            bad.append(target)
    assert bad == [], f"{doc.name} links to files outside the repository or missing: {bad}"


DELIMITER_ROW = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def orphaned_table_rows(text: str) -> list[tuple[int, str]]:
    """Table rows that start a table without a header and delimiter row, e.g. a row cut off from its
    table by a blank line (Markdown then ends the table and shows the row as plain text)."""
    bad, fenced, previous = [], False, ""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("|") and not previous.startswith("|"):
            following = lines[number] if number < len(lines) else ""
            if not DELIMITER_ROW.match(following):
                bad.append((number, line[:60]))
        previous = "" if fenced else line
    return bad


def test_the_orphan_check_finds_a_row_cut_off_by_a_blank_line():
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert orphaned_table_rows(table + "\nText.\n") == []
    assert orphaned_table_rows(table + "\n| 3 | 4 |\n") == [(5, "| 3 | 4 |")]
    assert orphaned_table_rows("```\n| not | a table |\n```\n") == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_table_row_is_cut_off_from_its_table(doc):
    assert orphaned_table_rows(doc.read_text()) == [], (
        f"{doc.name}: rows outside their table (a blank line before them?)"
    )
