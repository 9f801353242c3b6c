"""What tools return besides their text, typed as the log records it (`ToolResult.data`).

The text of a tool result is what the model reads; the payload is the same result as data, for code:
agent citations are built from `SearchResults` (never from the text, which quotes documents), the consoles
and clients show tables and deliveries from the others. A tagged union (`kind`); logs written before
payloads existed decode with `data=None`.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    pass


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    n: int  # the number the model was shown, `[n]`
    chunk_id: str
    doc_id: str
    title: str = ""
    heading: str = ""
    score: float = 0.0
    snippet: str = ""


class SearchResults(_Payload, frozen=True, kw_only=True, tag="search_results"):
    query: str
    hits: tuple[SearchHit, ...] = ()


class DocumentRead(_Payload, frozen=True, kw_only=True, tag="document_read"):
    doc_id: str
    title: str
    chars: int
    truncated: bool = False


class ComparisonRow(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    title: str
    values: dict[str, str | None]  # field -> the quoted sentence, None when the document has none


class ComparisonTable(_Payload, frozen=True, kw_only=True, tag="comparison_table"):
    fields: tuple[str, ...]
    rows: tuple[ComparisonRow, ...]
    markdown: str
    html: str


class EmailSent(_Payload, frozen=True, kw_only=True, tag="email_sent"):
    message_id: str
    accepted: tuple[str, ...]
    refused: tuple[str, ...] = ()


class HttpResult(_Payload, frozen=True, kw_only=True, tag="http_result"):
    status: int
    url: str
    addresses: tuple[str, ...] = ()
    headers: dict[str, str] = {}
    body: str = ""
    truncated: bool = False


class TitleCandidate(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    title: str


class TitleMatch(msgspec.Struct, frozen=True, kw_only=True):
    """One name from a request against the catalog's titles: the document it names, if exactly one."""

    name: str
    doc_id: str = ""  # empty when missing or ambiguous
    title: str = ""
    candidates: tuple[TitleCandidate, ...] = ()  # the close candidates when ambiguous, best first


class DocumentMatches(_Payload, frozen=True, kw_only=True, tag="document_matches"):
    matches: tuple[TitleMatch, ...] = ()


class McpResult(_Payload, frozen=True, kw_only=True, tag="mcp_result"):
    """A tool call on an MCP server (actors.tools.mcp_tools), as the server answered it: its text blocks
    joined, its structured content as sent (JSON), the kinds of the blocks not shown (images, ...)."""

    server: str
    tool: str  # the server's own name for it
    is_error: bool = False  # the server's tool reported an error (the text says which)
    text: str = ""
    structured: dict[str, Any] | None = None
    other_content: tuple[str, ...] = ()  # kinds of the non-text blocks, in order
    truncated: bool = False  # text or structured content was cut at the configured byte limit


ToolPayload = (
    SearchResults | DocumentRead | ComparisonTable | EmailSent | HttpResult | DocumentMatches | McpResult
)
