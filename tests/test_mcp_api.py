"""The MCP server at /mcp with the official `mcp` SDK's client over its streamable HTTP transport, against
the real web process, worker and Redis (issue 12): the tools are listed, search and read answer as the
token's principal (FALCON is group:legal only), filters narrow, and a missing or bad token is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from store.redis import EmbeddedRedis
from tests.docs_world import FALCON_ID, PUBLIC_ID, SECRET, World, running_world


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from running_world(redis_server.url, tmp_path_factory.mktemp("mcp"))


async def _session_calls(world: World, token: str | None, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{world.web.http_url}/mcp"
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        results = [await session.call_tool(name, args) for name, args in calls]
        return tools, results


def calls(world: World, token: str | None, *calls: tuple[str, dict[str, Any]]) -> Any:
    return asyncio.run(_session_calls(world, token, list(calls)))


def payload(result: Any) -> Any:
    assert not result.is_error, result
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def text_of(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


SEARCH = ("search_knowledge", {"query": "quantum harbor bridge", "k": 5})


def test_the_tools_answer_as_the_tokens_principal(world: World) -> None:
    lee, finn = world.token("lee", ("legal",)), world.token("finn", ("finance",))
    tools, (found, read) = calls(world, lee, SEARCH, ("read_document", {"doc_id": FALCON_ID}))
    names = {tool.name for tool in tools.tools}
    assert names == {"search_knowledge", "read_document"}
    assert all(tool.annotations.read_only_hint for tool in tools.tools)
    hits = payload(found)["hits"]
    assert hits[0]["doc_id"] == FALCON_ID and SECRET in hits[0]["text"] and hits[0]["n"] == 1
    document = payload(read)
    assert document["title"] == "Project Falcon" and SECRET in document["text"]

    _, (found, read, public) = calls(world, finn, SEARCH, ("read_document", {"doc_id": FALCON_ID}),
                                     ("read_document", {"doc_id": PUBLIC_ID}))  # fmt: skip
    assert FALCON_ID not in {h["doc_id"] for h in payload(found)["hits"]} and SECRET not in json.dumps(
        payload(found)
    )
    assert read.is_error and "not_found" in text_of(read) and SECRET not in text_of(read)
    assert payload(public)["doc_id"] == PUBLIC_ID


def test_filters_and_bad_arguments(world: World) -> None:
    lee = world.token("lee", ("legal",))
    only_public = {"query": "quantum harbor bridge", "filters": {"doc_ids": [PUBLIC_ID]}}
    _, (narrowed, bad_filter, bad_k) = calls(
        world, lee, ("search_knowledge", only_public),
        ("search_knowledge", {"query": "bridge", "filters": {"tenant": "other"}}),
        ("search_knowledge", {"query": "bridge", "k": 500}),
    )  # fmt: skip
    assert {h["doc_id"] for h in payload(narrowed)["hits"]} <= {PUBLIC_ID}
    assert bad_filter.is_error and "bad_filter" in text_of(bad_filter)
    assert bad_k.is_error and "bad_input" in text_of(bad_k)


def test_a_missing_or_forged_token_is_refused_before_mcp(world: World) -> None:
    for token in (None, "not-a-token", world.token("lee", ("legal",))[:-4] + "AAAA"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers["Accept"] = "application/json, text/event-stream"
        response = httpx2.post(f"{world.web.http_url}/mcp", json=body, timeout=10, headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized", token
        assert response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(ExceptionGroup) as refused:  # the SDK's client surfaces the 401 as an MCP error
        calls(world, None, SEARCH)
    assert refused.group_contains(MCPError, depth=2)


async def _resources(world: World, token: str, uris: list[str]) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{world.web.http_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_resources()
        reads: list[Any] = []
        for uri in uris:
            try:
                reads.append(await session.read_resource(uri))
            except MCPError as exc:
                reads.append(exc)
        return listed, reads


def test_documents_are_resources_the_token_decides(world: World) -> None:
    from server.mcp_api import resource_uri

    lee, finn = world.token("lee", ("legal",)), world.token("finn", ("finance",))
    falcon, public = resource_uri(FALCON_ID), resource_uri(PUBLIC_ID)
    assert falcon == "docent://documents/kb%2Ffalcon.md"
    listed, (read, bogus) = asyncio.run(_resources(world, lee, [falcon, "file:///etc/passwd"]))
    by_uri = {r.uri: r for r in listed.resources}
    assert falcon in by_uri and public in by_uri and by_uri[falcon].title == "Project Falcon"
    assert listed.next_cursor is None
    assert SECRET in read.contents[0].text and read.contents[0].mime_type == "text/plain"
    assert "not_found" in str(bogus)

    listed, (denied, allowed) = asyncio.run(_resources(world, finn, [falcon, public]))
    assert falcon not in {r.uri for r in listed.resources} and public in {r.uri for r in listed.resources}
    assert isinstance(denied, MCPError) and "not_found" in str(denied) and SECRET not in str(denied)
    assert allowed.contents[0].text
