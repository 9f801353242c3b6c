"""What a workflow's answer may cite, numbered as its text cites them: the documents found (compare,
summarise) or the search's passages (find). Built from typed payloads only, like `actors.sources`."""

from __future__ import annotations

from actors.workflows import progress
from actors.workflows.run import Run
from store.events import Citation
from store.tool_payloads import SearchHit, TitleMatch

SNIPPET_CHARS = 240


def numbered(run: Run) -> dict[str, int]:
    """doc_id → its citation number: documents found in request order, else each document's first hit."""
    search = progress.search(run)
    if search is not None:
        first: dict[str, int] = {}
        for hit in search.hits:
            first.setdefault(hit.doc_id, hit.n)
        return first
    return {m.doc_id: n for n, m in enumerate(progress.documents(run), 1)}


def workflow_sources(run: Run) -> list[Citation]:
    search = progress.search(run)
    if search is not None:
        return [_hit(hit) for hit in search.hits]
    return [_document(run, n, m) for n, m in enumerate(progress.documents(run), 1)]


def _hit(hit: SearchHit) -> Citation:
    return Citation(n=hit.n, chunk_id=hit.chunk_id, doc_id=hit.doc_id, title=hit.title, heading=hit.heading,
                    snippet=hit.snippet)  # fmt: skip


def _document(run: Run, n: int, match: TitleMatch) -> Citation:
    return Citation(n=n, chunk_id="", doc_id=match.doc_id, title=match.title, snippet=_snippet(run, match))


def _snippet(run: Run, match: TitleMatch) -> str:
    table = progress.table(run)
    rows = [r for r in table.rows if r.doc_id == match.doc_id] if table else []
    quotes = [v for v in rows[0].values.values() if v] if rows else []
    if quotes:
        return quotes[0][:SNIPPET_CHARS]
    read = progress.read(run)
    return " ".join(read[1].split())[:SNIPPET_CHARS] if read and read[0].doc_id == match.doc_id else ""
