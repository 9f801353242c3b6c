"""MCP tools bench: what one agent call to an MCP server costs (actors.tools.mcp_client), against the test
double `actors.testing.mcp_server` (the SDK's MCPServer over real HTTP on this machine).

    .venv/bin/python -m bench.mcp_tools [--calls 50]

Each call is its own short session (initialize, tools/call, and the SDK's tools/list to validate the result
against the tool's output schema); a listing is initialize + tools/list. Prints p50 / p95 of a read-only call,
of a listing, and of `McpToolbox.tools()` with the listing cached (what every agent turn pays).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from actors.testing.mcp_server import McpTicketServer
from actors.tools import mcp_client
from actors.tools.mcp_config import McpConfig, McpServer
from actors.tools.mcp_tools import McpToolbox


def line(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    p50 = statistics.median(ordered)
    return f"{name:28} p50 {p50 * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms   (n={len(ordered)})"


async def measure(server: McpServer, calls: int) -> None:
    await asyncio.to_thread(mcp_client.load_sdk)
    call_s, list_s, cached_s = [], [], []
    box = McpToolbox(McpConfig(servers=[server]))
    await box.tools()
    for n in range(calls):  # interleaved, so a load spike hits all three alike
        started = time.perf_counter()
        await mcp_client.call_tool(server, "lookup_ticket", {"ticket_id": f"T-{n}"}, f"key-{n}",
                                   timeout_s=30, max_bytes=65536)  # fmt: skip
        call_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        await mcp_client.list_tools(server, 30)
        list_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        await box.tools()
        cached_s.append(time.perf_counter() - started)
    print(line("tools/call (own session)", call_s))
    print(line("tools/list (own session)", list_s))
    print(line("toolbox, listing cached", cached_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=50)
    options = parser.parse_args(argv)
    with McpTicketServer() as tickets:
        asyncio.run(measure(McpServer(name="tickets", url=tickets.url), options.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
