"""The MCP server (Model Context Protocol, the official `mcp` SDK): Docent's knowledge base as MCP tools,
over the streamable HTTP transport at `/mcp` on the web process.

    search_knowledge(query, k=8, mode="hybrid", filters=None)  -> {"query", "index_version", "hits": [...]}
    read_document(doc_id, max_chars=8000)         -> {"doc_id", "title", "text", "chars", "truncated"}

and the documents as MCP resources, `docent://documents/<doc id, percent-encoded>`: `resources/list` lists
the documents the caller may read (paginated: each page scans at most LIST_SCAN_ROWS of the tenant's
catalog rows, the cursor is where the next scan starts), `resources/read` returns one's text (at most
MAX_READ_CHARS) if the caller may read it, else the MCP error INVALID_PARAMS `not_found: ...` (existence is
not told).

Authentication is a Docent bearer token (`Authorization: Bearer <token>`, the REST API's): a request
without a valid one is 401 before the MCP layer sees it, and every tool call resolves its principal again
from its own request's header, so a hit or a document is only ever what that principal may read (the
search runs on a query worker with the ACL inside retrieval, exactly as `POST /api/search`; a read checks
the catalog's readers). Searches take the caller's ask rate-limit bucket; `filters` are the search filters
of store.metadata (a bad one is a tool error naming `bad_filter`). The transport is stateless (each POST
carries its own JSON-RPC exchange, no server-side session), so any web process behind a load balancer can
answer any request. The web process loads no model here either: search is the same RPC to a worker as
`/api/search`.

The SDK takes seconds to import and build (its pydantic models: 1.7-2.1 s on this 2-core machine with the load
average at ~13, 4 s of a 6 s web-process start on a busier moment). The app's lifespan builds it in a thread
and runs its session manager in a task of its own (`McpEndpoint.running`), and the process serves (and
`/healthz` answers) only once it is built: built while the process already served, the build held the GIL in
pydantic's schema code for seconds, and a restarted web process's first asks waited ~1.0-1.2 s (p50, its first
2 s) where one built before serving answers in 18-30 ms (`bench/web_start.py`; README "Crash safety on the
cluster"). A `/mcp` request never finds it unbuilt (the wait below is a guard: at most READY_TIMEOUT_S, then
503 `unavailable`).

(No `from __future__ import annotations` here: the SDK reads the tools' annotations, `Context` included,
from the function objects built in `_build`.)
"""

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.search_rpc import make_search
from index.types import Principal as Reader
from server.auth import Principal
from server.redaction import catalog_for
from server.search_api import MAX_K, Search, SearchBody, call_of, hit_out
from server.services import Services
from store.blocking import run_blocking
from store.catalog_types import CatalogDocument, DocumentFilter
from store.exceptions import AuthError, DocentError, InputError, NotFound, Unavailable

MCP_PATH = "/mcp"
SERVER_NAME = "docent"
MAX_READ_CHARS = 50_000
DEFAULT_READ_CHARS = 8_000
READY_TIMEOUT_S = 30.0
RESOURCE_PREFIX = "docent://documents/"
RESOURCE_PREFIX_MAX_CHARS = 4_096
LIST_SCAN_ROWS = 500
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization", "") if headers is not None else ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _reader_tokens(me: Principal) -> tuple[str, ...]:
    return Reader(tenant=me.tenant, user=me.user, groups=me.groups).reader_tokens()


def resource_uri(doc_id: str) -> str:
    return RESOURCE_PREFIX + urllib.parse.quote(doc_id, safe="")


def resource_doc_id(uri: str) -> str:
    if not uri.startswith(RESOURCE_PREFIX) or len(uri) > RESOURCE_PREFIX_MAX_CHARS:
        raise NotFound(f"no document resource {uri[:200]!r}", uri=uri[:200])
    return urllib.parse.unquote(uri.removeprefix(RESOURCE_PREFIX))


class McpEndpoint:
    """The MCP endpoint of one web app: Docent's side (auth, search, read) and the SDK's server."""

    def __init__(self, search: Search | None = None) -> None:
        self.services: Services | None = None
        self._search = search  # default: the worker RPC, made when the app starts
        self._asgi: ASGI | None = None
        self._ready: asyncio.Event | None = None

    # -- Docent's side: typed errors, no SDK types ---------------------------------------------------

    def principal(self, headers: Any) -> Principal:
        assert self.services is not None
        return self.services.auth.principal(_bearer(headers))

    async def search(
        self, me: Principal, query: str, k: int, mode: str, filters: dict[str, Any] | None
    ) -> dict[str, Any]:
        """`POST /api/search` as a tool: the same body checks, rate limit and worker RPC."""
        services = self.services
        assert services is not None and self._search is not None
        try:
            body = msgspec.convert({"query": query, "k": k, "mode": mode, "filters": filters}, SearchBody)
        except msgspec.ValidationError as exc:
            raise InputError(f"{exc} (k is 1..{MAX_K})", field="arguments") from None
        await services.limits.check(me, "ask")
        result = await self._search(call_of(body, me, services.settings.max_question_chars))
        hits = [msgspec.to_builtins(hit_out(n, hit)) for n, hit in enumerate(result.hits, start=1)]
        return {"query": result.query, "index_version": result.index_version, "hits": hits}

    async def read(self, me: Principal, doc_id: str, max_chars: int) -> dict[str, Any]:
        """A document's text if the principal may read it; otherwise not_found (existence is not told)."""
        assert self.services is not None
        if not 1 <= max_chars <= MAX_READ_CHARS:
            raise InputError(f"max_chars is 1..{MAX_READ_CHARS}", field="max_chars")
        catalog = catalog_for(self.services.settings.data_path)

        def read() -> tuple[str, str] | None:
            doc = catalog.get_document(doc_id)
            if doc is None or not doc.readable_by(me.tenant, _reader_tokens(me)):
                return None
            text = catalog.document_text(doc_id)
            return None if text is None else (doc.title, text)

        found = await run_blocking(read)
        if found is None:
            raise NotFound(f"no document {doc_id!r} you may read", doc_id=doc_id)
        title, text = found
        shown = text[:max_chars]
        return {"doc_id": doc_id, "title": title, "text": shown, "chars": len(text),
                "truncated": len(shown) < len(text)}  # fmt: skip

    async def documents(self, me: Principal, offset: int) -> tuple[list[CatalogDocument], int | None]:
        """The documents the principal may read among LIST_SCAN_ROWS of its tenant's from `offset` (by doc
        id), and the offset of the next scan (None: the last)."""
        assert self.services is not None
        catalog = catalog_for(self.services.settings.data_path)
        tokens = _reader_tokens(me)

        def scan() -> tuple[list[CatalogDocument], int | None]:
            rows = catalog.find_documents(
                DocumentFilter(tenant=me.tenant), limit=LIST_SCAN_ROWS, offset=offset
            )
            readable = [doc for doc in rows if doc.readable_by(me.tenant, tokens)]
            return readable, offset + len(rows) if len(rows) == LIST_SCAN_ROWS else None

        return await run_blocking(scan)

    # -- the SDK's server ----------------------------------------------------------------------------

    def _build(self) -> Any:
        """The SDK's server with the two tools (blocking: imports the SDK). Returns the MCPServer."""
        from mcp.server.mcpserver import Context
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.server.transport_security import TransportSecuritySettings
        from mcp_types import ToolAnnotations

        server = _resource_server(self)(
            SERVER_NAME, instructions="Docent's knowledge base, as the token's principal."
        )
        read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)

        async def tool_call(
            ctx: Context, call: Callable[[Principal], Awaitable[dict[str, Any]]]
        ) -> dict[str, Any]:
            try:
                return await call(self.principal(ctx.headers))
            except DocentError as exc:
                raise ToolError(f"{exc.code}: {exc.message}") from None

        @server.tool(
            name="search_knowledge",
            annotations=read_only,
            description="Search the knowledge base: numbered passages with doc ids, titles and scores.",
        )
        async def search_knowledge(
            query: str, ctx: Context, k: int = 8, mode: str = "hybrid", filters: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            return await tool_call(ctx, lambda me: self.search(me, query, k, mode, filters))

        @server.tool(
            name="read_document",
            annotations=read_only,
            description="Read one document's text by its doc_id (from search_knowledge results).",
        )
        async def read_document(
            doc_id: str, ctx: Context, max_chars: int = DEFAULT_READ_CHARS
        ) -> dict[str, Any]:
            return await tool_call(ctx, lambda me: self.read(me, doc_id, max_chars))

        # Bearer tokens, not cookies, authenticate every request, so DNS rebinding gains nothing; origins
        # are the app's CORS middleware's business.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            transport_security=security,
        )
        return server

    async def _serve(self, stop: asyncio.Event) -> None:
        server = await run_blocking(self._build)
        async with server.session_manager.run():
            self._asgi = server.session_manager.handle_request
            assert self._ready is not None
            self._ready.set()
            await stop.wait()

    @contextlib.asynccontextmanager
    async def running(self, services: Services) -> AsyncIterator[None]:
        """For the app's lifespan: the server is built (before the app serves), then served in a task."""
        self.services = services
        if self._search is None:
            self._search = make_search(services.settings, services.redis)
        self._ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(self._serve(stop))
        try:
            await _built(task, self._ready)
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5.0)

    async def _ready_asgi(self) -> ASGI:
        if self._asgi is None:
            assert self._ready is not None
            try:
                await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable("the MCP server is not ready yet") from None
        assert self._asgi is not None
        return self._asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI endpoint: a Docent token first (401 without one), then the MCP transport."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            self.principal(headers)
            asgi = await self._ready_asgi()
        except DocentError as exc:
            status = 401 if isinstance(exc, AuthError) else 503
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            await JSONResponse(exc.to_wire(), status_code=status, headers=extra)(scope, receive, send)
            return
        await asgi(scope, receive, send)


async def _built(serving: asyncio.Task[None], ready: asyncio.Event) -> None:
    """Until `serving` has built the server (`ready`); its error if it failed first."""
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiting.cancel()
        serving.result()  # the build's error stops the app's start
        raise RuntimeError("the MCP server stopped before it was built")


def _resource_server(endpoint: McpEndpoint) -> Any:
    """The SDK's MCPServer with `resources/list` and `resources/read` answered per caller (the SDK's own
    resources are one list for everyone): the documents the request's token may read."""
    from mcp.server.mcpserver import MCPServer
    from mcp.shared.exceptions import MCPError
    from mcp_types import (
        INVALID_PARAMS,
        ListResourcesResult,
        ReadResourceResult,
        Resource,
        TextResourceContents,
    )

    def caller(ctx: Any) -> Principal:
        return endpoint.principal(getattr(ctx.request, "headers", None))

    class DocumentResources(MCPServer):  # type: ignore[misc]
        async def _handle_list_resources(self, ctx: Any, params: Any) -> Any:
            cursor = getattr(params, "cursor", None) or "0"
            if not cursor.isdigit():
                raise MCPError(
                    code=INVALID_PARAMS, message="bad_input: the cursor is not one this server gave"
                )
            documents, after = await endpoint.documents(caller(ctx), int(cursor))
            resources = [
                Resource(uri=resource_uri(d.doc_id), name=d.doc_id, title=d.title or None,
                         mime_type="text/plain", size=d.size_bytes or None)
                for d in documents
            ]  # fmt: skip
            return ListResourcesResult(resources=resources, next_cursor=None if after is None else str(after))

        async def _handle_read_resource(self, ctx: Any, params: Any) -> Any:
            try:
                doc_id = resource_doc_id(str(params.uri))
                document = await endpoint.read(caller(ctx), doc_id, MAX_READ_CHARS)
            except DocentError as exc:
                raise MCPError(code=INVALID_PARAMS, message=f"{exc.code}: {exc.message}") from None
            text = TextResourceContents(uri=str(params.uri), text=document["text"], mime_type="text/plain")
            return ReadResourceResult(contents=[text])

    return DocumentResources


def routes(endpoint: McpEndpoint) -> list[Route]:
    return [Route(MCP_PATH, endpoint, methods=["GET", "POST", "DELETE"])]
