"""The REST API: conversations (list, history), document upload (admin), health and readiness."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import unicodedata
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.callers import principal, require_admin
from server.redaction import event_view
from store.blocking import run_blocking
from store.conversations import can_read, identifier
from store.exceptions import DocentError, DocumentTooLarge, ForbiddenError, InputError, UnsupportedFormat
from store.log import conv_keys
from store.metadata import EMPTY_METADATA, DocumentMetadata, parse_metadata
from store.redis import REDIS_ERRORS, unavailable
from store.redis_identity import averify
from store.scripts import stream_id, text

if TYPE_CHECKING:
    from server.services import Services

ALLOWED_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf", ".csv", ".json"})
MAX_FILENAME_STEM_CHARS = 100
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers on top of the file itself
MAX_EVENTS_PAGE = 1000
DEFAULT_EVENTS_PAGE = 200
READY_TIMEOUT_S = 1.0
UPLOADS_DIR = "uploads"


class EventOut(msgspec.Struct, frozen=True):
    id: str
    event: dict[str, Any]  # as this reader may see it (server.redaction)


class EventsPage(msgspec.Struct, frozen=True):
    conversation_id: str
    events: list[EventOut]
    next_after: str


class ConversationOut(msgspec.Struct, frozen=True):
    id: str
    title: str
    created_ms: int


class Uploaded(msgspec.Struct, frozen=True):
    tenant: str
    document: str
    bytes: int
    sha256: str
    job: str
    metadata: DocumentMetadata = EMPTY_METADATA


_json = msgspec.json.Encoder()


def json_response(value: object, status_code: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status_code, media_type="application/json")


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}", field=name)
    return int(raw)


async def list_conversations(request: Request) -> Response:
    me = principal(request)
    limit = _int_param(request, "limit", 50, 1, 200)
    metas = await _services(request).conversations.list_for(me.tenant, me.user, limit)
    return json_response({"conversations": [ConversationOut(m.id, m.title, m.created_ms) for m in metas]})


async def conversation_events(request: Request) -> Response:
    """Durable events after `after` (exclusive), oldest first; deltas are not history."""
    me = principal(request)
    services = _services(request)
    conv_id = request.path_params["conversation_id"]
    meta = await services.conversations.get(conv_id)
    if meta is None or not can_read(meta, me.tenant, me.user, me.roles):
        raise ForbiddenError("no such conversation, or not yours")
    after = stream_id(request.query_params.get("after", "0-0"), "after")
    limit = _int_param(request, "limit", DEFAULT_EVENTS_PAGE, 1, MAX_EVENTS_PAGE)
    entries: Any = await services.redis.xrange(conv_keys(conv_id).log, f"({after}", "+", count=limit)
    view = await event_view(services.redis, services.settings.data_path, meta, me)
    shown = await view.events([msgspec.json.decode(fields[b"e"]) for _, fields in entries])
    events = [EventOut(text(i), e) for (i, _), e in zip(entries, shown, strict=True)]
    return json_response(EventsPage(conv_id, events, events[-1].id if events else after))


def sanitize_filename(name: str) -> str:
    """A plain file name from whatever the client sent: no directories, no dot files, allowed extensions."""
    base = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    base = re.sub(r"\.{2,}", ".", base)
    stem, dot, suffix = base.rpartition(".")
    ext = f".{suffix.lower()}" if dot else ""
    if ext not in ALLOWED_EXTENSIONS:
        allowed = ", ".join(sorted(ALLOWED_EXTENSIONS))
        raise UnsupportedFormat(
            f"file type {ext or '(none)'} is not accepted; allowed: {allowed}", field="file"
        )
    stem = stem.strip("._-")[:MAX_FILENAME_STEM_CHARS] or "document"
    return f"{stem}{ext}"


def _save(source: IO[bytes], directory: Path, filename: str) -> tuple[Path, int, str]:
    """Copy `source` to a new file in `directory` (never over an existing one); its path, size, sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(filename)
    candidate = directory / filename
    while True:
        if candidate.resolve().parent != directory.resolve():
            raise InputError("bad file name", field="file")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            candidate = directory / f"{stem}-{secrets.token_hex(4)}{ext}"
    digest, size = hashlib.sha256(), 0
    source.seek(0)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return candidate, size, digest.hexdigest()


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise DocumentTooLarge(f"upload is over {limit} bytes")
        yield chunk


async def upload_document(request: Request) -> Response:
    services = _services(request)
    settings = services.settings
    me = require_admin(request)
    max_bytes = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise DocumentTooLarge(f"upload is over {max_bytes} bytes", limit=max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InputError("send the document as multipart/form-data, field `file`", field="file")
    stream = _limited(request, max_bytes + MULTIPART_OVERHEAD_BYTES)
    try:
        form = await MultiPartParser(request.headers, stream, max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise InputError(f"bad multipart body: {exc.message}", field="file") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise InputError("no file: send it in the multipart field `file`", field="file")
        if upload.size is not None and upload.size > max_bytes:
            raise DocumentTooLarge(f"upload is over {max_bytes} bytes", limit=max_bytes)
        metadata = _upload_metadata(form.get("metadata"))  # checked before the file is stored
        filename = sanitize_filename(upload.filename)
        directory = settings.data_path / UPLOADS_DIR / identifier(me.tenant, "tenant")
        path, size, sha256 = await run_blocking(_save, upload.file, directory, filename)
    finally:
        await form.close()
    job = await services.ingest(me.tenant, path, metadata)
    return json_response(Uploaded(me.tenant, path.name, size, sha256, job, metadata), status_code=202)


def _upload_metadata(field: object) -> DocumentMetadata:
    """The multipart field `metadata`: a JSON object of store.metadata's DocumentMetadata, or absent."""
    if field is None or field == "":
        return EMPTY_METADATA
    if not isinstance(field, str):
        raise InputError("the multipart field `metadata` must be JSON text, not a file", field="metadata")
    return parse_metadata(field)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    """Ready: Redis answers, and it is the one this stack started (no internal address is ever shown)."""
    services = _services(request)
    try:
        await asyncio.wait_for(averify_ping(services), READY_TIMEOUT_S)
    except DocentError as exc:
        return JSONResponse({"ok": False, "redis": exc.code}, status_code=503)
    except TimeoutError:
        return JSONResponse({"ok": False, "redis": "unavailable"}, status_code=503)
    return JSONResponse({"ok": True, "redis": "ok"})


async def averify_ping(services: Services) -> None:
    try:
        await services.redis.ping()
    except REDIS_ERRORS as exc:
        raise unavailable(exc) from exc
    await averify(services.redis, services.settings.redis_identity)


def routes() -> list[Route]:
    return [
        Route("/api/conversations", list_conversations, methods=["GET"]),
        Route("/api/conversations/{conversation_id}/events", conversation_events, methods=["GET"]),
        Route("/api/documents", upload_document, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
