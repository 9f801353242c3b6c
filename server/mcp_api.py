"""The MCP server (Model Context Protocol, the official `mcp` SDK): Docent's knowledge base as MCP tools,
over the streamable HTTP transport at `/mcp` on the web process.

    search_knowledge(query, k=8, mode="hybrid", filters=None)  -> {"query", "index_version", "hits": [...]}
    read_document(doc_id, max_chars=8000)         -> {"doc_id", "title", "text", "chars", "truncated"}

Authentication is a Docent bearer token (`Authorization: Bearer <token>`, the REST API's): a request
without a valid one is 401 before the MCP layer sees it, and every tool call resolves its principal again
from its own request's header, so a hit or a document is only ever what that principal may read (the
search runs on a query worker with the ACL inside retrieval, exactly as `POST /api/search`; a read checks
the catalog's readers). Searches take the caller's ask rate-limit bucket; `filters` are the search filters
of store.metadata (a bad one is a tool error naming `bad_filter`). The transport is stateless (each POST
carries its own JSON-RPC exchange, no server-side session), so any web process behind a load balancer can
answer any request; the session manager runs inside the web app's lifespan (`McpEndpoint.running`). The
web process loads no model here either: search is the same RPC to a worker as `/api/search`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.search_rpc import SearchCall, make_search
from index.types import Principal as Reader
from index.types import SearchResult
from server.auth import Principal
from server.redaction import catalog_for
from server.search_api import MAX_K, Search, SearchBody, call_of, hit_out
from server.services import Services
from store.blocking import run_blocking
from store.exceptions import AuthError, DocentError

MCP_PATH = "/mcp"
SERVER_NAME = "docent"
MAX_READ_CHARS = 50_000
DEFAULT_READ_CHARS = 8_000
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def _bearer(headers: Any) -> str | None:
    value = (headers or {}).get("authorization", "") if headers is not None else ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _failure(exc: DocentError) -> ToolError:
    return ToolError(f"{exc.code}: {exc.message}")


class McpEndpoint:
    """The MCP server bound to one app's services (read from `app.state.services` per request)."""

    def __init__(self, search: Search | None = None) -> None:
        self.services: Services | None = None
        self._search = search  # default: the worker RPC, made when the app starts
        self.server = MCPServer(
            SERVER_NAME,
            instructions="Search Docent's knowledge base and read its documents as the token's principal.",
        )
        self.server.tool(
            name="search_knowledge",
            description="Search the knowledge base: numbered passages with doc ids, titles and scores.",
            annotations=READ_ONLY,
        )(self.search_knowledge)
        self.server.tool(
            name="read_document",
            description="Read one document's text by its doc_id (from search_knowledge results).",
            annotations=READ_ONLY,
        )(self.read_document)
        # Bearer tokens, not cookies, authenticate every request, so DNS rebinding gains nothing; origins
        # are the app's CORS middleware's business.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            transport_security=security,
        )
        self.asgi = self.server.session_manager.handle_request

    @contextlib.asynccontextmanager
    async def running(self, services: Services) -> AsyncIterator[None]:
        self.services = services
        if self._search is None:
            self._search = make_search(services.settings, services.redis)
        async with self.server.session_manager.run():
            yield

    def _principal(self, ctx: Context) -> Principal:
        assert self.services is not None
        try:
            return self.services.auth.principal(_bearer(ctx.headers))
        except DocentError as exc:
            raise _failure(exc) from None

    async def search_knowledge(
        self,
        query: str,
        ctx: Context,
        k: int = 8,
        mode: str = "hybrid",
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`POST /api/search` as an MCP tool: the same body, checks, rate limit and worker RPC."""
        import msgspec

        services = self.services
        assert services is not None
        me = self._principal(ctx)
        try:
            body = msgspec.convert(
                {"query": query, "k": k, "mode": mode, "filters": filters}, SearchBody, strict=True
            )
            await services.limits.check(me, "ask")
            result = await self._run_search(call_of(body, me, services.settings.max_question_chars))
        except msgspec.ValidationError as exc:
            raise ToolError(f"bad_input: {exc} (k is 1..{MAX_K})") from None
        except DocentError as exc:
            raise _failure(exc) from None
        hits = [msgspec.to_builtins(hit_out(n, hit)) for n, hit in enumerate(result.hits, start=1)]
        return {"query": result.query, "index_version": result.index_version, "hits": hits}

    async def _run_search(self, call: SearchCall) -> SearchResult:
        assert self._search is not None
        return await self._search(call)

    async def read_document(
        self, doc_id: str, ctx: Context, max_chars: int = DEFAULT_READ_CHARS
    ) -> dict[str, Any]:
        """A document's text, if the principal may read it; otherwise not found (existence is not told)."""
        services = self.services
        assert services is not None
        me = self._principal(ctx)
        if not 1 <= max_chars <= MAX_READ_CHARS:
            raise ToolError(f"bad_input: max_chars is 1..{MAX_READ_CHARS}")
        catalog = catalog_for(services.settings.data_path)

        def read() -> tuple[str, str] | None:
            doc = catalog.get_document(doc_id)
            if doc is None or not doc.readable_by(me.tenant, _reader_tokens(me)):
                return None
            text = catalog.document_text(doc_id)
            return None if text is None else (doc.title, text)

        found = await run_blocking(read)
        if found is None:
            raise ToolError(f"not_found: no document {doc_id!r} you may read")
        title, text = found
        shown = text[:max_chars]
        return {"doc_id": doc_id, "title": title, "text": shown, "chars": len(text),
                "truncated": len(shown) < len(text)}  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI endpoint: a Docent token first (401 without one), then the MCP transport."""
        services = self.services
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            assert services is not None
            services.auth.principal(_bearer(headers))
        except DocentError as exc:
            error = exc if isinstance(exc, AuthError) else AuthError(exc.message)
            response = JSONResponse(error.to_wire(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.asgi(scope, receive, send)


def _reader_tokens(me: Principal) -> tuple[str, ...]:
    return Reader(tenant=me.tenant, user=me.user, groups=me.groups).reader_tokens()


def routes(endpoint: McpEndpoint) -> list[Route]:
    return [Route(MCP_PATH, endpoint, methods=["GET", "POST", "DELETE"])]
