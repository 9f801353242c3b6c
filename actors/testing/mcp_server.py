"""A small ticket system as an MCP server (the official SDK's `MCPServer`, streamable HTTP), for tests of the
agent's MCP tools: it runs in its own process, on a real port.

    lookup_ticket(ticket_id)            read-only: a ticket's status (structured content)
    create_ticket(title, priority=3)    a write: creates a ticket, once per idempotency key

Every call is recorded with the bearer token it came with and the idempotency key of its `_meta`
(`io.docent/idempotency-key`, what actors.tools.mcp_client sends). `create_ticket` honours the key: a call
re-issued with a key it has served returns the first call's ticket without creating another, so `effects`
counts real creations. `GET /_calls` → `{"calls": [{tool, arguments, key, authorization}], "effects": n}`;
`POST /_reset` clears both. With `--token T` a tool call without `Authorization: Bearer T` is refused.

Run: `python -m actors.testing.mcp_server --port 8765 [--token T] [--delay-s S]` (S: lookup_ticket answers
that late); in tests, `with McpTicketServer() as srv:` (`srv.url` is the MCP endpoint, `srv.calls()` the
record).

(No `from __future__ import annotations`: the SDK reads the tools' annotations from the function objects.)
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Annotated, Any, Self

from actors.testing.ports import HeldPort

IDEMPOTENCY_META_KEY = "io.docent/idempotency-key"  # the same as actors.tools.mcp_client's
START_TIMEOUT_S = 90.0  # the SDK imports in seconds on a quiet machine, far more on a loaded one


def build(token: str | None, delay_s: float = 0.0) -> Any:
    """The SDK's server with the two tools and the record routes (imports the SDK: seconds)."""
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import ToolAnnotations
    from pydantic import Field
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    server = MCPServer("tickets", instructions="A ticket system (a Docent test double).")
    calls: list[dict[str, Any]] = []
    tickets: dict[str, dict[str, Any]] = {}  # idempotency key -> the ticket its first call created

    def record(ctx: Context, tool: str, arguments: dict[str, Any]) -> str:
        meta = dict(ctx.request_context.meta or {})
        authorization = (ctx.headers or {}).get("authorization", "")
        calls.append({"tool": tool, "arguments": arguments, "key": meta.get(IDEMPOTENCY_META_KEY, ""),
                      "authorization": authorization})  # fmt: skip
        if token is not None and authorization != f"Bearer {token}":
            raise ToolError("unauthorized")
        return str(meta.get(IDEMPOTENCY_META_KEY, ""))

    @server.tool(name="lookup_ticket", description="A ticket's status by its id (T-<number>).",
                 annotations=ToolAnnotations(read_only_hint=True))  # fmt: skip
    async def lookup_ticket(
        ticket_id: Annotated[str, Field(pattern=r"^T-[0-9]{1,6}$")], ctx: Context
    ) -> dict[str, Any]:
        record(ctx, "lookup_ticket", {"ticket_id": ticket_id})
        if delay_s:
            await asyncio.sleep(delay_s)  # a slow server, for the caller's timeout
        return {"ticket_id": ticket_id, "status": "open", "assignee": "dana"}

    @server.tool(name="create_ticket", description="Create a ticket; returns its id.",
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))  # fmt: skip
    async def create_ticket(
        title: Annotated[str, Field(min_length=1, max_length=200)],
        ctx: Context,
        priority: Annotated[int, Field(ge=1, le=5)] = 3,
    ) -> dict[str, Any]:
        key = record(ctx, "create_ticket", {"title": title, "priority": priority})
        if key and key in tickets:
            return tickets[key]  # a re-issued call: the first call's ticket, no second effect
        ticket = {"ticket_id": f"T-{100 + len(tickets) + 1}", "title": title, "priority": priority}
        tickets[key or f"anonymous-{len(tickets)}"] = ticket
        return ticket

    @server.custom_route("/_calls", methods=["GET"])
    async def show(request: Request) -> JSONResponse:
        return JSONResponse({"calls": calls, "effects": len(tickets)})

    @server.custom_route("/_reset", methods=["POST"])
    async def reset(request: Request) -> JSONResponse:
        calls.clear()
        tickets.clear()
        return JSONResponse({"ok": True})

    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--delay-s", type=float, default=0.0, help="lookup_ticket answers this late")
    options = parser.parse_args(argv)
    import uvicorn

    logging.getLogger("mcp").setLevel(logging.WARNING)  # not a line per stateless request
    app = build(options.token, options.delay_s).streamable_http_app(
        stateless_http=True, json_response=True, host="127.0.0.1"
    )
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")
    return 0


class McpTicketServer:
    """`python -m actors.testing.mcp_server` in a subprocess on a free port; stopped on exit."""

    def __init__(self, token: str | None = None, delay_s: float = 0.0) -> None:
        self.token, self.delay_s = token, delay_s
        self._held = HeldPort()  # until __exit__: no other process takes it before the server binds
        self.port = self._held.port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> Self:
        args = [sys.executable, "-m", "actors.testing.mcp_server", "--port", str(self.port)]
        if self.token is not None:
            args += ["--token", self.token]
        if self.delay_s:
            args += ["--delay-s", str(self.delay_s)]
        self._proc = subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the MCP test server exited with {self._proc.returncode}")
            try:
                self.calls()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("the MCP test server did not start")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=2)  # a delayed call in flight is not waited for
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._held.release()

    def calls(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_calls", timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def reset(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/_reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5):
            pass


if __name__ == "__main__":
    sys.exit(main())
