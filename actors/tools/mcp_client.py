"""The agent's side of MCP: list a server's tools and call one, with the official `mcp` SDK's client over the
streamable HTTP transport (`mcp.client.streamable_http`).

Each listing and each call is its own short session (initialize, then the request; the SDK closes it),
under one deadline, so nothing is held between activations and a call never depends on which worker thread's
event loop made the last one. Every failure of the network or the protocol becomes `ToolUnavailable` (its
cause is logged, never shown to the model); nothing the server sends is trusted beyond its shape: listings
are cut at the server's `max_tools`, results at `max_result_bytes`.

A call carries its idempotency key in the request's `_meta` (`IDEMPOTENCY_META_KEY`): a call re-issued after
a crash between its intent and its result has the same key, so a server that records the keys it has
served can answer the second call without a second effect (actors.testing.mcp_server does).

The SDK takes seconds to import (pydantic models), so it is imported on first use (in a thread, before the
deadline starts), never at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import msgspec

from actors.tools.mcp_config import McpServer
from store.exceptions import ConfigError, ToolUnavailable
from store.tool_payloads import McpResult

if TYPE_CHECKING:
    from mcp import ClientSession

log = logging.getLogger(__name__)

IDEMPOTENCY_META_KEY = "io.docent/idempotency-key"
CLIENT_NAME = "docent-agent"
CLIENT_VERSION = "0.1"
MAX_LIST_PAGES = 8


class RemoteTool(msgspec.Struct, frozen=True, kw_only=True):
    """One tool as the server listed it."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = {}


@contextlib.asynccontextmanager
async def _session(server: McpServer, timeout_s: float) -> AsyncIterator[ClientSession]:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import Implementation

    client = Implementation(name=CLIENT_NAME, version=CLIENT_VERSION)
    token = server.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout_s)) as http,
        streamable_http_client(server.url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=timeout_s, client_info=client) as session,
    ):
        await session.initialize()
        yield session


async def list_tools(server: McpServer, timeout_s: float) -> tuple[RemoteTool, ...]:
    """The server's tools, at most `server.max_tools` (the rest are dropped and logged)."""

    async def listing() -> tuple[RemoteTool, ...]:
        from mcp_types import PaginatedRequestParams

        found: list[RemoteTool] = []
        async with _session(server, timeout_s) as session:
            cursor: str | None = None
            for _ in range(MAX_LIST_PAGES):
                params = PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                found.extend(
                    RemoteTool(name=t.name, description=t.description or "", input_schema=t.input_schema)
                    for t in page.tools
                )
                cursor = page.next_cursor
                if not cursor or len(found) >= server.max_tools:
                    break
        if len(found) > server.max_tools:
            log.warning("MCP server %s lists %d tools; offering the first %d", server.name, len(found),
                        server.max_tools)  # fmt: skip
        return tuple(found[: server.max_tools])

    return await _guarded(server, "list its tools", listing(), timeout_s)


async def call_tool(
    server: McpServer, tool: str, args: dict[str, Any], key: str, *, timeout_s: float, max_bytes: int
) -> McpResult:
    """One `tools/call`, its idempotency key in `_meta`; the answer typed and cut at `max_bytes`."""

    async def call() -> McpResult:
        from mcp_types import RequestParamsMeta

        async with _session(server, timeout_s) as session:
            meta = cast("RequestParamsMeta", {IDEMPOTENCY_META_KEY: key})  # an open map
            result = await session.call_tool(tool, args, meta=meta)
        return to_payload(server.name, tool, result, max_bytes)

    return await _guarded(server, f"call {tool}", call(), timeout_s)


def load_sdk() -> None:
    """Import the SDK (seconds, the first time in a process): off the event loop, before any deadline."""
    import httpx2  # noqa: F401
    import mcp.client.streamable_http  # noqa: F401


async def _guarded(server: McpServer, what: str, work: Any, timeout_s: float) -> Any:
    """`work` under one deadline; any failure of the network, the protocol or the SDK is ToolUnavailable."""
    await asyncio.to_thread(load_sdk)
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except ConfigError:
        raise
    except Exception as exc:  # httpx2 errors, the SDK's MCPError / RuntimeError, anyio's ExceptionGroups
        log.warning("MCP server %s (%s): could not %s: %r", server.name, server.url, what, exc)
        raise ToolUnavailable(
            f"the MCP server {server.name!r} did not answer ({what})", server=server.name, reason="mcp"
        ) from None


def to_payload(server: str, tool: str, result: Any, max_bytes: int) -> McpResult:
    """A `CallToolResult` as Docent's typed payload: text blocks joined and cut, other kinds named."""
    texts: list[str] = []
    others: list[str] = []
    for block in result.content:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            texts.append(text)
        else:
            others.append(str(getattr(block, "type", "unknown")))
    text, cut = _cut("\n".join(texts), max_bytes)
    structured = result.structured_content
    if structured is not None and len(msgspec.json.encode(structured)) > max_bytes:
        structured, cut = None, True
    return McpResult(
        server=server, tool=tool, is_error=bool(result.is_error), text=text,
        structured=structured if isinstance(structured, dict) else None, other_content=tuple(others),
        truncated=cut,
    )  # fmt: skip


def _cut(text: str, max_bytes: int) -> tuple[str, bool]:
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text, False
    return raw[:max_bytes].decode("utf-8", "ignore"), True
