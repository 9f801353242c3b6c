"""MCP tools for the agent: the configured servers' tools (actors.tools.mcp_config) as registry tools.

`McpToolbox.tools()` is what an agent turn adds to `AGENT_TOOLS`. Per server it keeps the last listing for
`list_ttl_s` and lists again after that; a server that cannot be listed keeps its last good tools (so a
call recorded before it went down is still recognised, and fails typed) and is retried after
`list_retry_s`; a server never listed offers nothing. Listings of the servers due run concurrently, each
under `list_timeout_s`.

Each remote tool becomes a `Tool` named `mcp_<server>_<tool>` (characters OpenAI refuses in a function name
become `_`; a name over 64 characters ends in a digest), whose arguments are the server's input JSON schema
(`JsonSchemaArgs`: a call that does not match it is `ToolArgumentsInvalid` and nothing runs, approvals
included), whose declared risk is the server rule's (default high), and whose run is one `tools/call`
(actors.tools.mcp_client) with the call's idempotency key. The result reaches the model fenced as
untrusted data; the typed `McpResult` goes to the log. A server's tool that reports an error is a result
(`is_error` in the payload, the server's text fenced), not a Docent error; a server that does not answer is
`ToolUnavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.tools import mcp_client
from actors.tools.mcp_client import RemoteTool
from actors.tools.mcp_config import McpConfig, McpServer, load_mcp_config
from actors.tools.registry import Tool, ToolContext, ToolOutput, always, fence_data, inline_refs
from store.exceptions import ConfigError, ToolArgumentsInvalid, ToolUnavailable
from store.settings import Settings
from store.tool_payloads import McpResult

log = logging.getLogger(__name__)

NAME_PREFIX = "mcp_"
MAX_NAME_CHARS = 64  # OpenAI's function names: ^[a-zA-Z0-9_-]{1,64}$
MAX_DESCRIPTION_CHARS = 1_024
MAX_SCHEMA_BYTES = 16 * 1024
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")

Lister = Callable[[McpServer, float], Awaitable[tuple[RemoteTool, ...]]]


# ---- arguments: the server's input schema -----------------------------------------------------------------


@dataclass(frozen=True)
class JsonSchemaArgs:
    """A tool's arguments as a JSON schema someone else wrote, validated with `jsonschema` (the SDK's own
    dependency): what the model is shown (references inlined) and what a call is checked against."""

    schema: dict[str, Any]
    shown: dict[str, Any]
    validator: Any  # a jsonschema Validator, compiled once

    @classmethod
    def compile(cls, schema: dict[str, Any]) -> JsonSchemaArgs:
        """ConfigError when the schema is not a valid JSON schema of an object, or too large to show."""
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
            raise ConfigError(f"input schema is over {MAX_SCHEMA_BYTES} bytes")
        if schema.get("type") != "object":
            raise ConfigError("input schema is not an object schema")
        kind = validator_for(schema)
        try:
            kind.check_schema(schema)
        except SchemaError as exc:
            raise ConfigError(f"input schema is invalid: {exc.message}") from None
        return cls(schema=schema, shown=inline_refs(schema), validator=kind(schema))

    def json_schema(self) -> dict[str, Any]:
        return self.shown

    def decode(self, tool: str, raw: bytes) -> dict[str, Any]:
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ToolArgumentsInvalid(f"{tool}: arguments are not valid JSON ({exc})", tool=tool) from None
        if not isinstance(value, dict):
            raise ToolArgumentsInvalid(f"{tool}: arguments must be a JSON object", tool=tool)
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
            raise ToolArgumentsInvalid(f"{tool}: {where}: {error.message}"[:1_000], tool=tool, field=where)
        return value


# ---- names ----------------------------------------------------------------------------------------------


def tool_name(server: str, remote: str) -> str:
    """`mcp_<server>_<tool>`, a valid OpenAI function name; a long or mangled one ends in a digest."""
    safe = UNSAFE_NAME_CHARS.sub("_", remote)
    name = f"{NAME_PREFIX}{server}_{safe}"
    if safe == remote and len(name) <= MAX_NAME_CHARS:
        return name
    digest = hashlib.sha256(f"{server}\x00{remote}".encode()).hexdigest()[:10]
    return name[: MAX_NAME_CHARS - len(digest) - 1] + "_" + digest


# ---- the toolbox ----------------------------------------------------------------------------------------


@dataclass
class _Listing:
    tools: tuple[Tool[Any], ...] = ()
    due_at: float = 0.0  # monotonic seconds: list again from then on


class McpToolbox:
    """The configured MCP servers' tools, listed lazily and cached (shared by a worker's threads)."""

    def __init__(
        self,
        config: McpConfig,
        *,
        lister: Lister = mcp_client.list_tools,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._lister = lister
        self._clock = clock
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {s.name: _Listing() for s in config.servers}

    @classmethod
    def from_settings(cls, settings: Settings) -> McpToolbox | None:
        config = load_mcp_config(settings)
        return cls(config) if config is not None and config.servers else None

    async def tools(self) -> tuple[Tool[Any], ...]:
        """Every configured server's tools: cached ones, and fresh ones for the servers due."""
        now = self._clock()
        with self._lock:
            due = [s for s in self.config.servers if self._listings[s.name].due_at <= now]
        if due:
            await asyncio.gather(*(self._refresh(server) for server in due))
        with self._lock:
            return tuple(t for s in self.config.servers for t in self._listings[s.name].tools)

    async def _refresh(self, server: McpServer) -> None:
        try:
            remote = await self._lister(server, self.config.list_timeout_s)
        except (ToolUnavailable, ConfigError) as exc:
            log.warning("MCP server %s: %s; keeping its last listing", server.name, exc)
            with self._lock:
                self._listings[server.name].due_at = self._clock() + self.config.list_retry_s
            return
        tools = self._tools_of(server, remote)
        with self._lock:
            self._listings[server.name] = _Listing(tools=tools, due_at=self._clock() + self.config.list_ttl_s)

    def _tools_of(self, server: McpServer, remote: tuple[RemoteTool, ...]) -> tuple[Tool[Any], ...]:
        tools: dict[str, Tool[Any]] = {}
        for item in remote:
            if not server.rule(item.name).enabled:
                continue
            name = tool_name(server.name, item.name)
            if name in tools:
                log.warning("MCP server %s: two tools are named %s; offering the first", server.name, name)
                continue
            try:
                tools[name] = self._tool(server, item, name)
            except ConfigError as exc:
                log.warning("MCP server %s: tool %r not offered: %s", server.name, item.name[:100], exc)
        return tuple(tools.values())

    def _tool(self, server: McpServer, remote: RemoteTool, name: str) -> Tool[Any]:
        config = self.config

        async def run(args: Any, ctx: ToolContext) -> ToolOutput:
            result = await mcp_client.call_tool(
                server, remote.name, dict(args), ctx.idempotency_key,
                timeout_s=config.call_timeout_s, max_bytes=config.max_result_bytes,
            )  # fmt: skip
            return ToolOutput(text=result_text(name, result), data=result)

        description = f"[MCP server {server.name}] {remote.description}"[:MAX_DESCRIPTION_CHARS]
        schema = JsonSchemaArgs.compile(remote.input_schema)
        risk = always(server.rule(remote.name).risk or "high")
        return Tool(name=name, description=description, run=run, foreign_args=schema, risk=risk)


def result_text(name: str, result: McpResult) -> str:
    """What the model reads: the server's text (or its structured content) fenced as untrusted data."""
    body = result.text
    if not body and result.structured is not None:
        body = msgspec.json.encode(result.structured).decode()
    if result.other_content:
        body += f"\n(content not shown: {', '.join(result.other_content)})"
    if result.truncated:
        body += "\n(truncated)"
    label = f"{'error from' if result.is_error else 'result of'} MCP tool {name}"
    return fence_data(label, body)
