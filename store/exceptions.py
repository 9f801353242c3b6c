"""Docent's one exception hierarchy. Third-party errors are translated at the edge into these.

DocentError
├── ConfigError                 a setting is missing or malformed (raised once, at start)
│   ├── PortInUse               a port Docent must listen on is taken by another process (named)
│   └── RedisNotOwned           the Redis answering is not the one this data dir's `docent run` started
├── Unavailable                 Redis did not answer: retry with backoff (never names an internal address)
├── InputError                  a caller sent something we refuse; nothing was changed
│   ├── FrameError              a malformed, oversized or unknown wire message
│   ├── BadFilter               a search filter with an unknown field, a wrong type or too many items
│   ├── AuthError               a missing, wrong or expired credential
│   ├── BodyTooLarge            a request body over its size limit (refused before it is read whole)
│   ├── ForbiddenError          a valid principal asked for something it may not touch
│   │   └── UnknownRoom         a reviewer room the tool policy does not name
│   ├── NotFound                no such thing (or not visible to this caller: existence is not revealed)
│   ├── SyncRefused             a folder sync would delete more than its share of a source (needs --force)
│   └── RateLimited             too many requests; carries retry_after_ms
│       ├── TooManySockets      a user or tenant already holds its cap of open sockets
│       └── BudgetExceeded      the tenant's or the user's daily token / cost budget is spent (store.budgets)
├── IngestError                 one document could not be ingested (the batch continues)
│   ├── UnsupportedFormat
│   ├── EmptyDocument
│   ├── BinaryContent
│   ├── DocumentTooLarge
│   │   ├── ExtractedTextTooLarge   its extracted text is over max_document_chars (a small PDF can expand)
│   │   └── TooManyChunks           it makes more than max_document_chunks chunks
│   ├── UndecodableText
│   └── PathNotAllowed
├── IndexError_                 index-side failures
│   ├── ModelMismatch           the query embedder differs from the index manifest: never search noise
│   ├── IndexNotFound
│   ├── IndexCorrupt
│   └── ReindexRefused          a cutover, rollback or retire was refused (nothing switched)
├── ModelError                  a model could not be loaded or converted
├── LogError                    the durable conversation log
│   ├── StaleEpoch              a fenced writer lost its lease: it must stop at once
│   ├── LeaseHeld               another worker holds the conversation
│   └── CorruptLog              an event could not be decoded or violates the log's order
├── LLMError                    an LLM backend failed
│   ├── LLMTimeout
│   ├── LLMUnavailable          429/5xx after retries, or a connection error
│   └── MalformedToolCall       the model produced a tool call we cannot parse (recoverable)
├── ToolError                   a tool failed
│   ├── ToolArgumentsInvalid    the arguments did not match the tool's schema; nothing ran
│   ├── ToolNotAllowed          the tool is not available to this run (decided by code, not the model)
│   ├── ToolUnavailable         the tool's server did not answer in time (an MCP server down or too slow)
│   └── ApprovalRequired        a high-risk tool may not run without a human decision
└── LimitReached                a run hit a hard cap (steps, tokens, cost, wall-clock)
"""

from __future__ import annotations


class DocentError(Exception):
    """Root of every error Docent raises on purpose. `code` is stable and goes on the wire."""

    code = "docent_error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, **{k: v for k, v in self.details.items()}}


class ConfigError(DocentError):
    code = "config_error"


class PortInUse(ConfigError):
    code = "port_in_use"


class RedisNotOwned(ConfigError):
    code = "redis_not_owned"


class Unavailable(DocentError):
    """A backing service did not answer. The message is generic: the cause is logged, never sent."""

    code = "unavailable"


class InputError(DocentError):
    code = "bad_input"


class FrameError(InputError):
    code = "bad_frame"


class BadFilter(InputError):
    code = "bad_filter"


class AuthError(InputError):
    code = "unauthorized"


class BodyTooLarge(InputError):
    code = "body_too_large"


class ForbiddenError(InputError):
    code = "forbidden"


class UnknownRoom(ForbiddenError):
    code = "unknown_room"


class NotFound(InputError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"  # /v1/chat/completions: a model name Docent does not serve


class SyncRefused(InputError):
    code = "sync_refused"


class RateLimited(InputError):
    code = "rate_limited"


class TooManySockets(RateLimited):
    code = "too_many_sockets"


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class IngestError(DocentError):
    code = "ingest_error"


class UnsupportedFormat(IngestError):
    code = "unsupported_format"


class EmptyDocument(IngestError):
    code = "empty_document"


class BinaryContent(IngestError):
    code = "binary_content"


class DocumentTooLarge(IngestError):
    code = "document_too_large"


class ExtractedTextTooLarge(DocumentTooLarge):
    code = "extracted_text_too_large"


class TooManyChunks(DocumentTooLarge):
    code = "too_many_chunks"


class UndecodableText(IngestError):
    code = "undecodable_text"


class PathNotAllowed(IngestError):
    code = "path_not_allowed"


class IndexError_(DocentError):  # trailing _: the builtin IndexError means something else
    code = "index_error"


class ModelMismatch(IndexError_):
    code = "model_mismatch"


class IndexNotFound(IndexError_):
    code = "index_not_found"


class IndexCorrupt(IndexError_):
    code = "index_corrupt"


class ReindexRefused(IndexError_):
    """A reindex step (cutover, rollback, retire) was refused; nothing was switched."""

    code = "reindex_refused"


class ModelError(DocentError):
    code = "model_error"


class LogError(DocentError):
    code = "log_error"


class StaleEpoch(LogError):
    code = "stale_epoch"


class LeaseHeld(LogError):
    code = "lease_held"


class CorruptLog(LogError):
    code = "corrupt_log"


class LLMError(DocentError):
    code = "llm_error"


class LLMTimeout(LLMError):
    code = "llm_timeout"


class LLMUnavailable(LLMError):
    code = "llm_unavailable"


class MalformedToolCall(LLMError):
    code = "malformed_tool_call"


class ToolError(DocentError):
    code = "tool_error"


class ToolArgumentsInvalid(ToolError):
    code = "tool_arguments_invalid"


class ToolNotAllowed(ToolError):
    code = "tool_not_allowed"


class ToolUnavailable(ToolError):
    code = "tool_unavailable"


class ApprovalRequired(ToolError):
    code = "approval_required"


class LimitReached(DocentError):
    code = "limit_reached"


def error_class(code: str) -> type[DocentError]:
    """The DocentError subclass whose `code` this is (DocentError itself for an unknown code)."""
    todo: list[type[DocentError]] = [DocentError]
    while todo:
        kind = todo.pop()
        if kind.code == code:
            return kind
        todo.extend(kind.__subclasses__())
    return DocentError
