"""The documents API (an admin of the tenant: the admin key with ?tenant=, or an admin token):

    GET    /api/documents             ?source= &title_prefix= &reader= &updated_since=<ms> &limit= &offset=
                                      &filters=<JSON: the search filters of store.metadata>
    GET    /api/documents/{doc_id}    metadata, readers, chunk count, index versions holding it, last ingest
    DELETE /api/documents/{doc_id}        unsearchable at once in every index version, gone from the catalog
    PUT    /api/documents/{doc_id}/readers  {"readers": ["*" | "user:U" | "group:G", ...]}
    POST   /api/documents/{doc_id}/reingest read its source file again (202, an ingest job)
    GET    /api/sync/reports          ?limit=  the tenant's latest folder-sync reports (store.sync_reports)

(`POST /api/documents`, the upload, is in server.rest.) A delete and a readers change are ONE catalog
transaction over every version: search checks each hit against the catalog's visibility and readers
(`index.search.AccessFilter`, both retrievers), so the next query sees the change without re-embedding.
An ingest job (`actors.documents_job.sync_document`) then brings the index files in line (hidden entries
collected, Whoosh's readers field rewritten). The web process reads and writes the catalog (SQLite) only:
no index, no model. A document of another tenant is `not_found`, as is a deleted one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.api import make_document_task
from index.types import MAX_READER_CHARS, READER_PATTERN
from server.bodies import read_json
from server.callers import require_admin, services
from server.redaction import catalog_for
from server.rest import json_response
from store.blocking import run_blocking
from store.catalog import Catalog
from store.catalog_types import CatalogDocument, DocumentFilter, IngestOutcome
from store.exceptions import InputError, NotFound
from store.metadata import DocumentMetadata, parse_filters
from store.sync_reports import SyncReport, recent_reports

DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_READERS = 256

Reader = Annotated[str, msgspec.Meta(pattern=READER_PATTERN, max_length=MAX_READER_CHARS)]
Task = Callable[[str, str], Awaitable[str]]


class ReadersRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    readers: Annotated[list[Reader], msgspec.Meta(min_length=1, max_length=MAX_READERS)]


class DocumentSummary(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    title: str
    source: str
    format: str
    readers: tuple[str, ...]
    size_bytes: int
    updated_at_ms: int
    metadata: DocumentMetadata  # given at ingest (store.metadata)


class DocumentDetail(DocumentSummary, frozen=True, kw_only=True):
    tenant: str
    content_hash: str
    chunks: int  # in the active version when it holds the document, else the most any version holds
    versions: dict[str, int]  # index version -> visible chunks
    last_ingest: IngestOutcome | None


class DocumentsPage(msgspec.Struct, frozen=True):
    documents: list[DocumentSummary]
    next_offset: int | None


class SyncReports(msgspec.Struct, frozen=True):
    reports: list[SyncReport]


class Changed(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    status: str  # "deleted", "readers_changed", "reingest_queued"
    chunks_changed: int = 0
    job: str = ""


def summary(doc: CatalogDocument) -> DocumentSummary:
    return DocumentSummary(
        doc_id=doc.doc_id, title=doc.title, source=doc.source, format=doc.format, readers=doc.readers,
        size_bytes=doc.size_bytes, updated_at_ms=doc.updated_at_ms, metadata=doc.metadata,
    )  # fmt: skip


def _catalog(request: Request) -> Catalog:
    return catalog_for(services(request).settings.data_path)


def _task(request: Request) -> Task:
    """The document-job enqueuer, made once per app (tests may set `app.state.document_task`)."""
    state = request.app.state
    if getattr(state, "document_task", None) is None:
        state.document_task = make_document_task(services(request).settings)
    return state.document_task  # type: ignore[no-any-return]


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and (not value or len(value) > MAX_READER_CHARS * 5):
        raise InputError(f"{name} must be 1..{MAX_READER_CHARS * 5} characters", field=name)
    return value


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > high:
        raise InputError(f"{name} must be an integer from 0 to {high}", field=name)
    return int(raw)


def document_filter(request: Request, tenant: str) -> DocumentFilter:
    since = request.query_params.get("updated_since")
    if since is not None and not since.isdigit():
        raise InputError("updated_since is epoch milliseconds", field="updated_since")
    return DocumentFilter(
        tenant=tenant, source=_param(request, "source"), title_prefix=_param(request, "title_prefix"),
        reader=_param(request, "reader"), updated_since_ms=int(since) if since is not None else None,
        metadata=parse_filters(request.query_params.get("filters")),
    )  # fmt: skip


async def list_documents(request: Request) -> Response:
    me = require_admin(request)
    where = document_filter(request, me.tenant)
    limit = max(1, _int(request, "limit", DEFAULT_PAGE, MAX_PAGE))
    offset = _int(request, "offset", 0, 10**9)
    found = await run_blocking(_catalog(request).find_documents, where, limit=limit + 1, offset=offset)
    more = len(found) > limit
    page = DocumentsPage([summary(d) for d in found[:limit]], offset + limit if more else None)
    return json_response(page)


async def owned_document(request: Request) -> CatalogDocument:
    """The path's live document of the caller's tenant (the caller is resolved first); else not_found."""
    me = require_admin(request)
    doc_id = request.path_params["doc_id"]
    doc = await run_blocking(_catalog(request).get_document, doc_id)
    if doc is None or doc.deleted or doc.tenant != me.tenant:
        raise NotFound(f"no document {doc_id!r} in tenant {me.tenant!r}", doc_id=doc_id)
    return doc


def detail(catalog: Catalog, doc: CatalogDocument, active: str | None) -> DocumentDetail:
    versions = catalog.document_versions(doc.doc_id)
    chunks = versions.get(active or "", max(versions.values(), default=0))
    return DocumentDetail(
        **msgspec.structs.asdict(summary(doc)), tenant=doc.tenant, content_hash=doc.content_hash,
        chunks=chunks, versions=versions, last_ingest=catalog.last_outcome(doc.doc_id),
    )  # fmt: skip


def active_version(request: Request) -> str | None:
    from index.versions import get_active  # a file read: the alias, no index is opened

    return get_active(services(request).settings)


async def get_document(request: Request) -> Response:
    doc = await owned_document(request)
    active = await run_blocking(active_version, request)
    return json_response(await run_blocking(detail, _catalog(request), doc, active))


async def delete_document(request: Request) -> Response:
    doc = await owned_document(request)
    hidden = await run_blocking(_catalog(request).delete_everywhere, doc.doc_id)
    job = await _task(request)("sync_document", doc.doc_id)
    return json_response(Changed(doc_id=doc.doc_id, status="deleted", chunks_changed=hidden, job=job))


async def put_readers(request: Request) -> Response:
    doc = await owned_document(request)
    body = await read_json(request, ReadersRequest, services(request).settings.max_json_body_bytes)
    readers = tuple(dict.fromkeys(body.readers))
    changed = await run_blocking(_catalog(request).set_readers, doc.doc_id, readers)
    job = await _task(request)("sync_document", doc.doc_id)
    changed_out = Changed(doc_id=doc.doc_id, status="readers_changed", chunks_changed=changed, job=job)
    return json_response(changed_out)


async def reingest(request: Request) -> Response:
    doc = await owned_document(request)
    if not await run_blocking(Path(doc.source).is_file):
        raise InputError(f"{doc.doc_id!r} has no source file to read again ({doc.source})", field="doc_id")
    job = await _task(request)("reingest_document", doc.doc_id)
    return json_response(Changed(doc_id=doc.doc_id, status="reingest_queued", job=job), status_code=202)


async def sync_reports(request: Request) -> Response:
    me = require_admin(request)
    limit = max(1, _int(request, "limit", 20, MAX_PAGE))
    data_path = services(request).settings.data_path
    reports = await run_blocking(recent_reports, data_path, limit=limit, tenant=me.tenant)
    return json_response(SyncReports(reports))


def routes() -> list[Route]:
    return [
        Route("/api/sync/reports", sync_reports, methods=["GET"]),
        Route("/api/documents", list_documents, methods=["GET"]),
        Route("/api/documents/{doc_id:path}/readers", put_readers, methods=["PUT"]),
        Route("/api/documents/{doc_id:path}/reingest", reingest, methods=["POST"]),
        Route("/api/documents/{doc_id:path}", get_document, methods=["GET"]),
        Route("/api/documents/{doc_id:path}", delete_document, methods=["DELETE"]),
    ]
