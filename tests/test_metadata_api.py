"""Metadata filters through every interface (issue 12), over real HTTP and sockets against the real web
process, worker and Redis: `POST /api/search`, a chat ask, the agent's search tool, the OpenAI-compatible
API's `filters` extension and the documents listing. Two public notes say the same thing and differ only
in their tags; FALCON (group:legal) shares their words."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from store.metadata import DocumentMetadata
from store.redis import EmbeddedRedis
from tests.docs_world import FALCON_ID, SECRET, TENANT, World, running_world

NOTE = "# Ferry notes\n\nThe harbor bridge ferry leaves at noon; the quantum harbor bridge is closed.\n"
ALPHA_ID, BETA_ID = "kb/notes-alpha.md", "kb/notes-beta.md"


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from actors.ingestion import ingest_documents
    from index.types import Access

    for w in running_world(redis_server.url, tmp_path_factory.mktemp("meta")):
        requests = []
        for doc_id, tag in ((ALPHA_ID, "alpha"), (BETA_ID, "beta")):
            path = w.kb / doc_id.split("/")[1]
            path.write_text(NOTE)
            meta = DocumentMetadata(author="ada", tags=(tag, "ferry"), fields={"team": tag})
            requests.append((doc_id, {"path": path, "access": Access(tenant=TENANT), "metadata": meta}))
        ingest_documents(w.settings, requests)
        yield w


def search(world: World, token: str, filters: Any, mode: str = "hybrid") -> tuple[int, Any]:
    body = {"query": "quantum harbor bridge ferry", "mode": mode, "k": 5, "filters": filters}
    return world.http("POST", "/api/search", body, token=token)


def test_search_api_filters_narrow_and_never_widen(world: World) -> None:
    lee, finn = world.token("lee", ("legal",)), world.token("finn", ("finance",))
    for mode in ("dense", "bm25", "hybrid"):
        status, body = search(world, lee, None, mode)
        assert status == 200 and {FALCON_ID, ALPHA_ID, BETA_ID} <= {h["doc_id"] for h in body["hits"]}
        status, body = search(world, lee, {"tags_any": ["beta"]}, mode)
        assert status == 200 and [h["doc_id"] for h in body["hits"]] == [BETA_ID]
        status, body = search(world, lee, {"fields": {"team": "alpha"}, "author": "ada"}, mode)
        assert [h["doc_id"] for h in body["hits"]] == [ALPHA_ID]
        # A filter naming a document the caller may not read finds nothing of it.
        status, body = search(world, finn, {"doc_ids": [FALCON_ID]}, mode)
        assert status == 200 and body["hits"] == []
        status, body = search(world, finn, {"source_prefix": "/"}, mode)
        assert FALCON_ID not in {h["doc_id"] for h in body["hits"]} and SECRET not in json.dumps(body)
    bad_filters = [({"tenant": "other"}, "tenant"), ({"readers": ["*"]}, "readers"),
                   ({"tags_any": "beta"}, "tags_any"), ({"fields": {"Team": "x"}}, "fields")]  # fmt: skip
    for bad, field in bad_filters:
        status, error = search(world, lee, bad)
        assert status == 400 and error["code"] == "bad_filter" and error["field"] == field, bad


def test_a_chat_ask_and_the_agents_search_tool_are_filtered(world: World) -> None:
    lee = world.token("lee", ("legal",))
    conv = world.ask_with(lee, "tell me about the quantum harbor bridge ferry", "qa", {"tags_any": ["alpha"]})
    log = world.log(conv)
    asked = next(e for e in log if e["type"] == "user_message")
    assert asked["filters"] == {"tags_any": ["alpha"]}
    retrieval = next(e for e in log if e["type"] == "retrieval_done")
    assert retrieval["sources"] and {s["doc_id"] for s in retrieval["sources"]} == {ALPHA_ID}
    # The tool call's own filters (tags beta) AND the ask's (ferry): beta only, never FALCON.
    agent = world.ask_with(lee, "[script:filtered] look", mode="agent", filters={"tags_any": ["ferry"]})
    result = next(e for e in world.log(agent) if e["type"] == "tool_result")
    assert {h["doc_id"] for h in result["data"]["hits"]} == {BETA_ID}
    both = world.ask_with(lee, "[script:filtered] look", mode="agent", filters={"tags_any": ["alpha"]})
    result = next(e for e in world.log(both) if e["type"] == "tool_result")
    assert result["data"]["hits"] == []  # alpha AND beta: no document is both


def test_a_bad_filter_on_an_ask_is_refused_and_nothing_is_asked(world: World) -> None:
    lee = world.token("lee", ("legal",))
    frames = world.ask_frames(lee, "anything", filters={"tenant": "other"})
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "bad_frame"


def test_the_openai_api_takes_filters_in_its_extension(world: World) -> None:
    client = openai.OpenAI(base_url=f"{world.web.http_url}/v1", api_key=world.token("lee", ("legal",)),
                           max_retries=0, timeout=60)  # fmt: skip
    messages: Any = [{"role": "user", "content": "what about the quantum harbor bridge ferry?"}]
    reply = client.chat.completions.create(model="docent-qa", messages=messages,
                                           extra_body={"filters": {"tags_any": ["beta"]}})  # fmt: skip
    consulted = reply.model_extra["docent"]  # type: ignore[index]
    cited = {c["doc_id"] for c in [*consulted["citations"], *consulted.get("sources", [])]}
    assert cited == {BETA_ID} and SECRET not in (reply.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="docent-qa", messages=messages, extra_body={"filters": {"x": 1}})
    assert refused.value.code == "bad_filter"


def test_documents_listing_filters_and_shows_metadata(world: World) -> None:
    filters = urllib.parse.quote(json.dumps({"tags_all": ["alpha", "ferry"]}))
    status, page = world.http("GET", f"/api/documents?tenant={TENANT}&filters={filters}", admin=True)
    assert status == 200 and [d["doc_id"] for d in page["documents"]] == [ALPHA_ID]
    assert page["documents"][0]["metadata"] == {"author": "ada", "tags": ["alpha", "ferry"],
                                                "fields": {"team": "alpha"}}  # fmt: skip
    status, detail = world.http("GET", f"/api/documents/{BETA_ID}?tenant={TENANT}", admin=True)
    assert detail["metadata"]["tags"] == ["beta", "ferry"]
    bad = urllib.parse.quote('{"tenant": "x"}')
    status, error = world.http("GET", f"/api/documents?tenant={TENANT}&filters={bad}", admin=True)
    assert status == 400 and error["code"] == "bad_filter"
