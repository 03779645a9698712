"""One GitHub comment: the report's sections, and cutting the least important until the page fits.

A page at or over the limit is cut section by section (lowest rank first), between table rows, each
cut ending in a note that says what was left out and where all of it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Section:
    """A part of the page: Markdown blocks (paragraphs, tables) that blank lines separate.

    ``rank`` orders the cuts when the page is too long for a comment (1 is cut first; 0 never) and
    ``full`` says where all of it is, for the note that replaces what was cut.
    """

    name: str
    blocks: tuple[str, ...]
    rank: int = 0
    full: str = ""


def section(name: str, lines: Sequence[str], rank: int = 0, full: str = "") -> Section:
    """A Section of Markdown lines as the builders above write them (a blank line after each block)."""
    blocks, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return Section(name, tuple(blocks), rank, full)


def render(sections: Sequence[Section]) -> str:
    return "\n\n".join(block for s in sections for block in s.blocks) + "\n"


def _size(s: Section) -> int:
    """Characters the section adds to the page (each block and the blank line after it)."""
    return sum(len(block) + 2 for block in s.blocks)


def _cut_note(s: Section, limit: int, rows: int, blocks: int) -> str:
    """The bold note that ends a cut section: how much was left out and where all of it is."""
    left = [f"{rows:,} more table rows"] if rows else []
    left += [f"{blocks:,} more paragraphs or tables"] if blocks else []
    what = " and ".join(left) or "the rest"
    return f"**Cut here to fit one GitHub comment ({limit:,} characters): {what} left out.** All of it: {s.full}."


def _table_head(block: str, room: int) -> tuple[str, int] | None:
    """The header and first rows of a Markdown table within ``room`` characters, and the rows left."""
    lines = block.split("\n")
    if len(lines) < 3 or not all(line.startswith("|") for line in lines):
        return None
    kept, size = lines[:2], len(lines[0]) + len(lines[1]) + 3
    for line in lines[2:]:
        if size + len(line) + 1 > room:
            break
        kept.append(line)
        size += len(line) + 1
    return ("\n".join(kept), len(lines) - len(kept)) if len(kept) > 2 else None


def shorten(s: Section, budget: int, limit: int) -> Section:
    """The section's first blocks within ``budget`` characters, then a note on what was left out.

    Its heading always stays; a table is cut between rows, keeping its header; a heading left
    without its table goes too. Nothing is cut silently: the note names the file with all of it.
    """
    reserve = len(_cut_note(s, limit, 10**9, 10**9)) + 2
    kept = list(s.blocks[:1])
    room = budget - reserve - sum(len(b) + 2 for b in kept)
    rows = later = 0
    for i, block in enumerate(s.blocks[1:], start=1):
        if len(block) + 2 <= room:
            kept.append(block)
            room -= len(block) + 2
            continue
        head = _table_head(block, room - 2)
        if head:
            kept.append(head[0])
            rows = head[1]
        later = len(s.blocks) - i - (1 if head else 0)
        break
    while len(kept) > 1 and kept[-1].startswith("#"):
        kept.pop()
        later += 1
    return replace(s, blocks=(*kept, _cut_note(s, limit, rows, later)))


def fit(sections: Sequence[Section], limit: int) -> tuple[list[Section], list[str]]:
    """Cut the least important sections until the page has fewer than ``limit`` characters.

    Returns the sections and the names of those cut. Sections of rank 0 (the title and the phantom
    warning: a few hundred characters) are never cut, nor a cut section's heading and note, so a
    ``limit`` below about 2,000 characters may not be reached; :data:`COMMENT_LIMIT` always is.
    """
    out, cut = list(sections), []
    for i in sorted((i for i, s in enumerate(out) if s.rank), key=lambda i: out[i].rank):
        excess = len(render(out)) - (limit - 1)
        if excess <= 0:
            break
        out[i] = shorten(out[i], _size(out[i]) - excess, limit)
        cut.append(out[i].name)
    return out, cut
