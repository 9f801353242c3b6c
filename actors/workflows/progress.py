"""What a workflow run has produced so far, read from its recorded tool results (typed payloads). Pure."""

from __future__ import annotations

from actors.tools.registry import DATA_NOTICE
from actors.workflows.definitions import Compare, FindDocuments, ReadDocument, Search
from actors.workflows.run import Run
from store.tool_payloads import ComparisonTable, DocumentMatches, DocumentRead, SearchResults, TitleMatch


def matches(run: Run) -> tuple[TitleMatch, ...]:
    for _, result in run.results_of(FindDocuments):
        if isinstance(result.data, DocumentMatches):
            return result.data.matches
    return ()


def documents(run: Run) -> list[TitleMatch]:
    """The documents the names matched, each once, in the order the request named them."""
    unique: dict[str, TitleMatch] = {}
    for match in matches(run):
        if match.doc_id:
            unique.setdefault(match.doc_id, match)
    return list(unique.values())


def table(run: Run) -> ComparisonTable | None:
    for _, result in run.results_of(Compare):
        if isinstance(result.data, ComparisonTable):
            return result.data
    return None


def search(run: Run) -> SearchResults | None:
    for _, result in run.results_of(Search):
        if isinstance(result.data, SearchResults):
            return result.data
    return None


def read(run: Run) -> tuple[DocumentRead, str] | None:
    """The document read and its text (as the tool recorded it, without the data fence)."""
    for _, result in run.results_of(ReadDocument):
        if isinstance(result.data, DocumentRead):
            return result.data, unfence(result.result)
    return None


def unfence(text: str) -> str:
    """The body inside `fence_data`'s markers (the text unchanged when it is not fenced)."""
    if not text.startswith(DATA_NOTICE):
        return text
    _, _, rest = text.partition("\n<<<DATA ")
    _, _, body = rest.partition(">>>\n")
    end = body.rfind("\n<<<END DATA ")
    return body[:end] if end >= 0 else body
