"""Small-to-big context: search finds chunks, the model reads the sections around them.

    passages = section_passages(catalog, version, hits, principal, max_tokens=512, count_tokens=count)

Each hit (a chunk) becomes the run of its document's chunks under the same heading path — its section —
rebuilt as one text (a chunk begins with the previous chunk's last words, its overlap, which is removed when
they are joined), as long as the section fits `max_tokens`; a longer section is cut to a window of whole
chunks around the hit, growing on the side that keeps it within the budget. Two hits of one section become
one passage (the better-ranked one's place, id and scores). Chunks the principal may not read are never
joined in, hidden ones never appear (the catalog's visible rows only). `max_tokens = 0` keeps the chunks.

Whether it helps is measured by bench/sections.py (the share of the judged answer's text that reaches the
prompt, at about the same prompt size): on perlfaq, debfaq and the demo set it did not beat the chunks
(README), so settings.context_window_tokens is 0 (off) by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from index.types import Hit, Principal
from store.catalog import Catalog
from store.catalog_types import ChunkRow

CountTokens = Callable[[str], int]
MAX_OVERLAP_CHARS = 2000  # a chunk's overlap is a few dozen words; never search further than this


def join_chunks(texts: Sequence[str]) -> str:
    """Consecutive chunk texts as one text, each chunk's overlap with the previous one removed."""
    joined = texts[0] if texts else ""
    for text in texts[1:]:
        shared = _overlap(joined, text)
        joined = joined + text[shared:] if shared else f"{joined}\n\n{text}"
    return joined


def _overlap(before: str, after: str) -> int:
    for size in range(min(len(before), len(after), MAX_OVERLAP_CHARS), 0, -1):
        if before.endswith(after[:size]):
            return size
    return 0


def section_rows(rows: Sequence[ChunkRow], hit: Hit) -> list[ChunkRow]:
    """The run of consecutive rows under the hit's heading that contains the hit's chunk."""
    position = next((n for n, row in enumerate(rows) if row.chunk_id == hit.chunk_id), None)
    if position is None:
        return []
    start = end = position
    while start > 0 and rows[start - 1].heading == hit.heading:
        start -= 1
    while end + 1 < len(rows) and rows[end + 1].heading == hit.heading:
        end += 1
    return list(rows[start : end + 1])


def window(section: Sequence[ChunkRow], hit: Hit, max_tokens: int, count: CountTokens) -> list[ChunkRow]:
    """The largest run of whole chunks around the hit that fits `max_tokens` (at least the hit)."""
    at = next(n for n, row in enumerate(section) if row.chunk_id == hit.chunk_id)
    start, end = at, at + 1
    grown = True
    while grown:
        grown = False
        for lo, hi in ((start, end + 1), (start - 1, end)):
            if lo >= 0 and hi <= len(section) and _fits(section[lo:hi], max_tokens, count):
                start, end, grown = lo, hi, True
                break
    return list(section[start:end])


def _fits(rows: Sequence[ChunkRow], max_tokens: int, count: CountTokens) -> bool:
    return count(join_chunks([row.text for row in rows])) <= max_tokens


def section_passages(
    catalog: Catalog,
    version: str,
    hits: Sequence[Hit],
    principal: Principal,
    *,
    max_tokens: int,
    count_tokens: CountTokens,
) -> list[Hit]:
    """The hits as section passages (see the module doc), in the hits' order."""
    if max_tokens <= 0:
        return list(hits)
    readers = principal.reader_tokens()
    passages: list[Hit] = []
    used: set[str] = set()
    readable: dict[str, list[ChunkRow]] = {}
    for hit in hits:
        if hit.chunk_id in used:
            continue
        if hit.doc_id not in readable:  # one catalog read per document, however many of its hits
            visible = catalog.visible_chunks(version, hit.doc_id)
            readable[hit.doc_id] = [row for row in visible if row.readable_by(principal.tenant, readers)]
        rows = readable[hit.doc_id]
        section = section_rows(rows, hit)
        run = window(section, hit, max_tokens, count_tokens) if section else []
        used.update(row.chunk_id for row in run)
        text = join_chunks([row.text for row in run]) if run else hit.text
        passages.append(msgspec.structs.replace(hit, text=text))
    return passages
