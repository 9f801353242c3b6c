"""Which MCP servers the agent may call, and the limits on them: `DOCENT_MCP_SERVERS_PATH` (.toml or .json).

    list_ttl_s = 300                 # a server's tool list is listed again after this
    call_timeout_s = 30              # one tools/call, connection and session set-up included
    max_result_bytes = 65536         # a result's text (and its structured content) is cut here

    [[servers]]
    name = "tickets"                 # the namespace: its tools are offered as mcp_tickets_<tool>
    url = "https://tickets.example/mcp"   # a streamable-HTTP MCP endpoint
    token_env = "TICKETS_MCP_TOKEN"  # optional: sent as `Authorization: Bearer <value of that variable>`
    max_tools = 32
    [servers.tools.lookup_ticket]    # per-tool overrides, by the server's own tool name
    risk = "low"                     # the default is "high": every call waits for a reviewer
    [servers.tools.drop_table]
    enabled = false                  # never offered

Only this file (code and configuration) decides which servers exist: nothing a model, a document or an MCP
server says adds one. A server's own `readOnlyHint` is not trusted; a tool is low risk only when this file or
the tool policy (actors.tools.policy, by the namespaced name: `[tools."mcp_tickets_*"]`) says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from store.config_file import load_config_file
from store.exceptions import ConfigError
from store.settings import Settings

MAX_SERVERS = 16
MAX_TOOLS_PER_SERVER = 128
MAX_RESULT_BYTES = 1024 * 1024
ServerName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,23}$")]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2048)]


class McpToolRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    risk: Literal["low", "high"] | None = None  # None: high
    enabled: bool = True


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: ServerName
    url: Url
    token_env: EnvName | None = None
    max_tools: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOOLS_PER_SERVER)] = 32
    tools: dict[str, McpToolRule] = {}

    def token(self) -> str | None:
        """The bearer token, read from the environment at each call (so a rotated secret is picked up)."""
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env, "")
        if not value:
            raise ConfigError(f"MCP server {self.name}: the variable {self.token_env} is empty or unset")
        return value

    def rule(self, tool: str) -> McpToolRule:
        return self.tools.get(tool) or McpToolRule()


class McpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    servers: Annotated[list[McpServer], msgspec.Meta(max_length=MAX_SERVERS)] = []
    list_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    list_retry_s: Annotated[float, msgspec.Meta(gt=0, le=3_600)] = 30.0  # after a failed listing
    list_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    call_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    max_result_bytes: Annotated[int, msgspec.Meta(ge=256, le=MAX_RESULT_BYTES)] = 64 * 1024

    def __post_init__(self) -> None:
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise ValueError("two MCP servers have the same name")


def load_mcp_config(settings: Settings) -> McpConfig | None:
    """The configured servers, or None when `DOCENT_MCP_SERVERS_PATH` is empty (no MCP tools)."""
    if not settings.mcp_servers_path:
        return None
    return load_config_file(Path(settings.mcp_servers_path), McpConfig, "MCP servers file")
