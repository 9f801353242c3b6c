"""MCP tools for the agent (issue 12): an MCP server the test starts (the SDK's MCPServer in a subprocess,
over real HTTP: actors.testing.mcp_server) is configured in DOCENT_MCP_SERVERS_PATH; the conversation actor,
driven by the scripted OpenAI-compatible model over real HTTP and a real Redis, is offered its tools.

The read-only tool (marked low in the servers file) runs directly; the write waits for a reviewer (approve:
one call on the server; deny: none); a call whose arguments break the server's input schema is refused
before anything (approval included) happens; a server that cannot be reached is a typed result, not a
crashed turn; a call re-issued after a crash carries the same idempotency key in `_meta`, and the server
makes one effect of the two. The toolbox's naming, caching and bounds are unit-tested with a fake lister.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.approvals import inbox_client_id, outcome_event
from actors.runtime import Runtime
from actors.testing import ScriptedLLMThread
from actors.testing.mcp_server import McpTicketServer
from actors.tools.mcp_client import IDEMPOTENCY_META_KEY, RemoteTool
from actors.tools.mcp_config import McpConfig, McpServer, McpToolRule
from actors.tools.mcp_tools import JsonSchemaArgs, McpToolbox, tool_name
from actors.tools.policy import PolicyConfig, RiskPolicy, ToolRule
from actors.tools.registry import DATA_NOTICE
from store.approvals import ApprovalLedger
from store.events import (
    AnswerCompleted,
    ApprovalRequested,
    Decision,
    LLMRequested,
    ToolIntent,
    ToolResult,
)
from store.exceptions import ConfigError, ToolArgumentsInvalid, ToolUnavailable
from store.redis import free_port
from store.tool_payloads import McpResult
from tests.test_conversation import build_index, cut_after, make_settings, of

TOKEN = "mcp-test-token-42"
SLOW_SERVER_S = 60.0  # the slow MCP server answers after this; the call gives up after 0.5 s
LOOKUP, CREATE = "mcp_tickets_lookup_ticket", "mcp_tickets_create_ticket"
SCRIPTS: dict[str, Any] = {
    "tickets": {"steps": [
        {"tool_calls": [{"name": LOOKUP, "arguments": {"ticket_id": "T-7"}}]},
        {"text": "T-7 is open. I will file a new ticket.",
         "tool_calls": [{"name": CREATE, "arguments": {"title": "Laptop broken", "priority": 2}}]},
        {"text": "Done."},
    ]},
    "badargs": {"steps": [
        {"tool_calls": [{"name": CREATE, "arguments": {"title": "Laptop broken", "priority": 9}}]},
        {"text": "The priority was out of range."},
    ]},
    "lookup": {"steps": [
        {"tool_calls": [{"name": LOOKUP, "arguments": {"ticket_id": "T-7"}}]},
        {"text": "Answered."},
    ]},
}  # fmt: skip


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLMThread]:
    with ScriptedLLMThread(SCRIPTS) as server:
        yield server


@pytest.fixture(scope="module")
def tickets() -> Iterator[McpTicketServer]:
    with McpTicketServer(token=TOKEN) as server:
        yield server


def servers_file(tmp_path: Path, *servers: dict[str, Any]) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": list(servers), "list_timeout_s": 30, "call_timeout_s": 30}))
    return path


def tickets_entry(server: McpTicketServer) -> dict[str, Any]:
    return {"name": "tickets", "url": server.url, "token_env": "TICKETS_MCP_TOKEN",
            "tools": {"lookup_ticket": {"risk": "low"}}}  # fmt: skip


class World:
    def __init__(self, tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, servers: Path) -> None:
        self.settings = make_settings(tmp_path, redis_url, llm.url, free_port(),
                                      mcp_servers_path=str(servers))  # fmt: skip
        build_index(self.settings)
        self.rt = Runtime.from_settings(self.settings)
        self.log = self.rt.log

    def turn(self, conv_id: str, text: str) -> list[Any]:
        from actors.conversation import activate
        from store.events import UserMessage

        self.log.post_inbox(conv_id, UserMessage(text=text, mode="agent", tenant="acme", user="alice"))
        activate(conv_id, self.rt)
        return self.events(conv_id)

    def events(self, conv_id: str) -> list[Any]:
        return [e for _, e in self.log.read(conv_id)]

    def decide(self, request: ApprovalRequested, decision: str) -> list[Any]:
        from actors.conversation import activate

        ledger = ApprovalLedger.from_url(self.settings.redis_url)
        verdict: Decision = "approved" if decision == "approved" else "denied"
        result = ledger.decide(request.approval_id, verdict, "rita", "checked", tenant="acme")
        item = outcome_event(result.record)
        assert item is not None
        self.log.post_inbox(result.record.conv_id, item, inbox_client_id(request.approval_id))
        activate(result.record.conv_id, self.rt)
        return self.events(result.record.conv_id)


@contextlib.contextmanager
def world_of(tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, servers: Path) -> Iterator[World]:
    world = World(tmp_path, redis_url, llm, servers)
    try:
        yield world
    finally:
        world.rt.close()


@pytest.fixture
def world(
    tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, tickets: McpTicketServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:  # fmt: skip
    monkeypatch.setenv("TICKETS_MCP_TOKEN", TOKEN)
    tickets.reset()
    with world_of(tmp_path, redis_url, llm, servers_file(tmp_path, tickets_entry(tickets))) as w:
        yield w


def calls_of(server: McpTicketServer, tool: str) -> list[dict[str, Any]]:
    return [c for c in server.calls()["calls"] if c["tool"] == tool]


# ---- the agent and a real MCP server ---------------------------------------------------------------------


def test_the_read_only_tool_runs_and_the_write_waits_for_approval(
    world: World, tickets: McpTicketServer
) -> None:
    events = world.turn("mcp1", "[script:tickets@mcp1] is T-7 open? then file a ticket")
    requested = of(events, LLMRequested)[0]
    assert LOOKUP in requested.tools and CREATE in requested.tools and "send_email" in requested.tools
    # The read-only lookup ran at once, with the configured token and its idempotency key in `_meta`.
    (lookup,) = calls_of(tickets, "lookup_ticket")
    intent = next(i for i in of(events, ToolIntent) if i.tool == LOOKUP)
    assert lookup["authorization"] == f"Bearer {TOKEN}" and lookup["key"] == intent.idempotency_key
    result = next(r for r in of(events, ToolResult) if r.tool == LOOKUP)
    assert isinstance(result.data, McpResult) and result.data.structured == {
        "ticket_id": "T-7", "status": "open", "assignee": "dana"}  # fmt: skip
    assert result.error is None and intent.risk == "low"
    # The write waits for a human: nothing reached the server.
    (request,) = of(events, ApprovalRequested)
    assert request.tool == CREATE and request.args == {"title": "Laptop broken", "priority": 2}
    assert calls_of(tickets, "create_ticket") == []

    events = world.decide(request, "approved")
    (create,) = calls_of(tickets, "create_ticket")
    assert create["arguments"] == {"title": "Laptop broken", "priority": 2}
    assert tickets.calls()["effects"] == 1
    result = next(r for r in of(events, ToolResult) if r.tool == CREATE)
    assert isinstance(result.data, McpResult) and result.data.structured is not None
    assert result.data.structured["ticket_id"] == "T-101"
    assert of(events, AnswerCompleted)[0].text == "Done."
    # Both results reached the model fenced as untrusted data.
    last_prompt = json.dumps(of(events, LLMRequested)[-1].messages)
    assert last_prompt.count(f"MCP tool {LOOKUP}>>>") == 1 and last_prompt.count(f"MCP tool {CREATE}>>>") == 1


def test_a_denied_write_never_reaches_the_server(world: World, tickets: McpTicketServer) -> None:
    events = world.turn("mcp2", "[script:tickets@mcp2] is T-7 open? then file a ticket")
    (request,) = of(events, ApprovalRequested)
    events = world.decide(request, "denied")
    assert calls_of(tickets, "create_ticket") == [] and tickets.calls()["effects"] == 0
    result = next(r for r in of(events, ToolResult) if r.tool == CREATE)
    assert result.error is not None and "denied by reviewer rita" in result.error
    assert isinstance(of(events, AnswerCompleted)[0], AnswerCompleted)


def test_arguments_that_break_the_servers_schema_are_refused_before_anything(
    world: World, tickets: McpTicketServer
) -> None:
    events = world.turn("mcp3", "[script:badargs@mcp3] file a ticket")
    (result,) = of(events, ToolResult)
    assert result.error is not None and result.error.startswith("tool_arguments_invalid: ")
    assert "priority" in result.error and "maximum of 5" in result.error
    assert not of(events, ApprovalRequested) and not of(events, ToolIntent)
    assert tickets.calls()["calls"] == []
    assert of(events, AnswerCompleted)[0].text == "The priority was out of range."


def test_a_reissued_call_after_a_crash_carries_the_same_key_and_makes_one_effect(
    world: World, tickets: McpTicketServer
) -> None:
    events = world.turn("mcp4", "[script:tickets@mcp4] is T-7 open? then file a ticket")
    events = world.decide(of(events, ApprovalRequested)[0], "approved")
    intent = next(i for i in of(events, ToolIntent) if i.tool == CREATE)
    cut_after(world, "mcp4", events.index(intent) + 1)  # type: ignore[arg-type]  # the effect, unrecorded
    from actors.conversation import activate

    activate("mcp4", world.rt)
    creates = calls_of(tickets, "create_ticket")
    assert [c["key"] for c in creates] == [intent.idempotency_key] * 2
    assert tickets.calls()["effects"] == 1
    replayed = world.events("mcp4")
    assert isinstance(replayed[-1], AnswerCompleted)
    result = next(r for r in of(replayed, ToolResult) if r.tool == CREATE)
    assert isinstance(result.data, McpResult) and result.data.structured is not None
    assert result.data.structured["ticket_id"] == "T-101"  # the first call's ticket


def test_unreachable_servers_are_typed_errors_not_crashed_turns(
    tmp_path: Path, redis_url: str, llm: ScriptedLLMThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETS_MCP_TOKEN", TOKEN)
    closed = {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/mcp"}
    with McpTicketServer(token=TOKEN) as flaky:
        servers = servers_file(tmp_path, {**tickets_entry(flaky), "max_tools": 1}, closed)
        with world_of(tmp_path, redis_url, llm, servers) as world:
            # A server that cannot be listed offers nothing; the others' tools are offered as usual.
            events = world.turn("mcp5", "[script:lookup@mcp5] is T-7 open?")
            tools = of(events, LLMRequested)[0].tools
            assert LOOKUP in tools and not any(t.startswith("mcp_gone_") for t in tools)
            assert CREATE not in tools  # max_tools = 1: the server's first tool only
            assert of(events, ToolResult)[0].error is None
            flaky.__exit__(None, None, None)  # the listed server goes down
            events = world.turn("mcp6", "[script:lookup@mcp6] is T-7 open?")
    (result,) = of(events, ToolResult)
    assert result.error is not None and result.error.startswith("tool_unavailable: ")
    assert "tickets" in result.error and result.data is None
    assert of(events, AnswerCompleted)[0].text == "Answered."


def test_a_call_past_its_timeout_is_unavailable_and_the_server_keeps_answering() -> None:
    from actors.tools.mcp_client import call_tool, list_tools

    with McpTicketServer(delay_s=SLOW_SERVER_S) as slow:
        server = McpServer(name="slow", url=slow.url)
        assert [t.name for t in asyncio.run(list_tools(server, 30))] == ["lookup_ticket", "create_ticket"]
        started = time.monotonic()
        with pytest.raises(ToolUnavailable) as refused:
            asyncio.run(
                call_tool(server, "lookup_ticket", {"ticket_id": "T-1"}, "k", timeout_s=0.5, max_bytes=1024)
            )
        assert time.monotonic() - started < SLOW_SERVER_S  # it gave up before the server answered
        assert [c["tool"] for c in slow.calls()["calls"]] == ["lookup_ticket"]  # the server had the call
        assert refused.value.code == "tool_unavailable" and refused.value.details["server"] == "slow"
        created = asyncio.run(
            call_tool(server, "create_ticket", {"title": "x"}, "k2", timeout_s=30, max_bytes=1024)
        )
        assert created.structured is not None and created.structured["ticket_id"] == "T-101"


# ---- the toolbox: names, schemas, cache, bounds (no network) ----------------------------------------------

SCHEMA = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 5}}, "required": ["q"]}


class FakeLister:
    def __init__(self, tools: tuple[RemoteTool, ...]) -> None:
        self.tools = tools
        self.listed = 0
        self.down = False

    async def __call__(self, server: McpServer, timeout_s: float) -> tuple[RemoteTool, ...]:
        self.listed += 1
        if self.down:
            raise ToolUnavailable("down")
        return self.tools


def box_of(lister: FakeLister, clock: list[float], **server: Any) -> McpToolbox:
    config = McpConfig(servers=[McpServer(name="kb", url="http://127.0.0.1:1/mcp", **server)],
                       list_ttl_s=60, list_retry_s=5)  # fmt: skip
    return McpToolbox(config, lister=lister, clock=lambda: clock[0])


def names(box: McpToolbox) -> list[str]:
    return [t.name for t in asyncio.run(box.tools())]


def test_names_are_namespaced_and_valid_openai_function_names() -> None:
    assert tool_name("kb", "search") == "mcp_kb_search"
    odd = tool_name("kb", "files/read.v2")
    assert odd.startswith("mcp_kb_files_read_v2_") and odd != tool_name("kb", "files_read_v2")
    long = tool_name("kb", "x" * 200)
    assert len(long) == 64 and long != tool_name("kb", "x" * 201)


def test_listings_are_cached_bounded_and_kept_when_a_server_goes_down() -> None:
    remote = tuple(RemoteTool(name=f"t{n}", input_schema=SCHEMA) for n in range(5))
    lister, clock = FakeLister(remote), [0.0]
    box = box_of(lister, clock, max_tools=32, tools={"t1": McpToolRule(enabled=False)})
    assert names(box) == ["mcp_kb_t0", "mcp_kb_t2", "mcp_kb_t3", "mcp_kb_t4"]
    clock[0] = 59.0
    names(box)
    assert lister.listed == 1  # within the TTL: no listing
    clock[0], lister.down = 61.0, True
    assert len(names(box)) == 4 and lister.listed == 2  # down: the last good listing stays
    clock[0] = 62.0
    names(box)
    assert lister.listed == 2  # retried only after list_retry_s
    clock[0], lister.down = 67.0, False
    lister.tools = remote[:2]
    assert names(box) == ["mcp_kb_t0"] and lister.listed == 3


def test_bad_schemas_are_skipped_and_arguments_are_checked_against_the_schema() -> None:
    remote = (
        RemoteTool(name="ok", input_schema=SCHEMA),
        RemoteTool(name="notobject", input_schema={"type": "string"}),
        RemoteTool(name="invalid", input_schema={"type": "object", "properties": {"q": {"type": 5}}}),
        RemoteTool(name="huge", input_schema={"type": "object", "description": "x" * 20_000}),
    )
    box = box_of(FakeLister(remote), [0.0])
    (tool,) = asyncio.run(box.tools())
    assert tool.name == "mcp_kb_ok" and tool.schema()["function"]["parameters"] == SCHEMA
    assert tool.risk({"q": "a"}) == "high"  # the default: a reviewer decides
    assert tool.foreign_args is not None
    assert tool.foreign_args.decode(tool.name, b'{"q": "abc"}') == {"q": "abc"}
    for raw in (b'{"q": "toolong"}', b"{}", b"[1]", b'{"q": '):
        with pytest.raises(ToolArgumentsInvalid):
            tool.foreign_args.decode(tool.name, raw)
    with pytest.raises(ConfigError):
        JsonSchemaArgs.compile({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})


def test_results_are_typed_and_cut_at_the_byte_limit() -> None:
    from types import SimpleNamespace

    from actors.tools.mcp_client import to_payload
    from actors.tools.mcp_tools import result_text

    blocks = [SimpleNamespace(type="text", text="é" * 600), SimpleNamespace(type="image", data="...")]
    result = SimpleNamespace(content=blocks, structured_content={"big": "x" * 2_000}, is_error=True)
    payload = to_payload("kb", "t", result, max_bytes=1_000)
    assert payload.truncated and payload.structured is None and payload.other_content == ("image",)
    assert payload.is_error and len(payload.text.encode()) <= 1_000 and payload.text == "é" * 500
    text = result_text("mcp_kb_t", payload)
    assert text.startswith(DATA_NOTICE) and "error from MCP tool mcp_kb_t" in text and "(truncated)" in text


def test_the_tool_policy_can_mark_mcp_tools_low_by_namespaced_name(tmp_path: Path) -> None:
    box = box_of(FakeLister((RemoteTool(name="search", input_schema=SCHEMA),)), [0.0])
    (tool,) = asyncio.run(box.tools())
    settings = make_settings(tmp_path, "redis://127.0.0.1:1", "http://127.0.0.1:1/v1", 1)
    default = RiskPolicy.defaults(settings)
    relaxed = RiskPolicy(PolicyConfig(tools={"mcp_kb_*": ToolRule(risk="low")}), default_ttl_s=60)
    assert default.requires_approval("acme", tool, {"q": "a"})
    assert not relaxed.requires_approval("acme", tool, {"q": "a"})


def test_the_servers_file_is_validated(tmp_path: Path) -> None:
    from actors.tools.mcp_config import load_mcp_config

    for bad in ({"servers": [{"name": "Bad Name", "url": "http://x/mcp"}]},
                {"servers": [{"name": "a", "url": "ftp://x"}]},
                {"servers": [{"name": "a", "url": "http://x/mcp"}, {"name": "a", "url": "http://y/mcp"}]},
                {"servers": [{"name": "a", "url": "http://x/mcp", "max_tools": 10_000}]},
                {"servers": [{"name": f"s{n}", "url": "http://x/mcp"} for n in range(17)]}):  # fmt: skip
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        settings = make_settings(tmp_path, "redis://127.0.0.1:1", "http://127.0.0.1:1/v1", 1,
                                 mcp_servers_path=str(path))  # fmt: skip
        with pytest.raises(ConfigError):
            load_mcp_config(settings)
    assert IDEMPOTENCY_META_KEY == "io.docent/idempotency-key"
