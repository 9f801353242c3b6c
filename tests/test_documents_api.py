"""The documents API over real HTTP against a real web process, worker and Redis (issue 12).

The adversarial core: a query matching only FALCON, from a principal who just lost access to it, returns
nothing of it — through search (every mode), the agent's knowledge tools, and the conversation's replay
over REST and the chat socket — before the index files are rewritten, with no re-embedding.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from index.search import SearchService
from index.types import Principal
from store.redis import EmbeddedRedis
from tests.docs_world import FALCON_ID, PUBLIC_ID, SECRET, TENANT, World, running_world

LEE = Principal(tenant=TENANT, user="lee", groups=("legal",))
FINN = Principal(tenant=TENANT, user="finn", groups=("finance",))
MODES = ("dense", "bm25", "hybrid")


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from running_world(redis_server.url, tmp_path_factory.mktemp("docs"))


def docs(world: World, query: str = "", **kwargs: Any) -> tuple[int, Any]:
    return world.http("GET", f"/api/documents?tenant={TENANT}{query}", admin=True, **kwargs)


def found(world: World, principal: Principal, query: str = "quantum harbor bridge") -> dict[str, set[str]]:
    service = SearchService(world.settings)
    try:
        return {m: {h.doc_id for h in service.search_sync(query, principal, mode=m).hits} for m in MODES}  # type: ignore[arg-type]
    finally:
        service.close()


def test_list_filters_and_pages(world: World) -> None:
    status, page = docs(world)
    assert status == 200 and [d["doc_id"] for d in page["documents"]] == [PUBLIC_ID, FALCON_ID]
    assert [d["doc_id"] for d in docs(world, "&reader=group:legal")[1]["documents"]] == [FALCON_ID]
    assert [d["doc_id"] for d in docs(world, "&title_prefix=Cant")[1]["documents"]] == [PUBLIC_ID]
    source = page["documents"][1]["source"]
    assert [d["doc_id"] for d in docs(world, f"&source={source}")[1]["documents"]] == [FALCON_ID]
    assert docs(world, f"&updated_since={int(time.time() * 1000) + 60_000}")[1]["documents"] == []
    first = docs(world, "&limit=1")[1]
    assert len(first["documents"]) == 1 and first["next_offset"] == 1
    assert docs(world, "&limit=1&offset=1")[1]["next_offset"] is None
    assert docs(world, "&limit=x")[0] == 400 and docs(world, "&updated_since=yesterday")[0] == 400


def test_detail_shows_readers_chunks_versions_and_last_ingest(world: World) -> None:
    status, doc = world.http("GET", f"/api/documents/{FALCON_ID}?tenant={TENANT}", admin=True)
    assert status == 200 and doc["readers"] == ["group:legal"] and doc["chunks"] >= 1
    assert list(doc["versions"].values()) == [doc["chunks"]]
    assert doc["last_ingest"]["status"] == "indexed"


def test_callers_and_bad_input_are_refused_and_change_nothing(world: World) -> None:
    path = f"/api/documents/{FALCON_ID}/readers"
    assert world.http("GET", "/api/documents")[0] == 401
    assert world.http("GET", "/api/documents", token=world.token("lee", ("legal",)))[0] == 403
    other_admin = world.token("olga", roles=("admin",), tenant="other")
    assert world.http("GET", f"/api/documents/{FALCON_ID}", token=other_admin)[0] == 404
    assert world.http("PUT", path, {"readers": ["*"]}, token=other_admin)[0] == 404
    assert world.http("DELETE", f"/api/documents/{FALCON_ID}", token=other_admin)[0] == 404
    for bad in ([], ["everyone"], ["group:"], ["group:a,b"], [" *"], ["user:x"] * 300, "group:legal"):
        status, error = world.http("PUT", f"{path}?tenant={TENANT}", {"readers": bad}, admin=True)
        assert status == 400 and error["code"] == "bad_input", bad
    status, error = world.http("PUT", f"{path}?tenant={TENANT}", admin=True, raw=b"{" + b" " * 70_000 + b"}")
    assert status == 413 and error["code"] == "body_too_large"
    assert world.http("PUT", f"{path}?tenant={TENANT}", {"readers": ["*"], "x": 1}, admin=True)[0] == 400
    assert world.http("GET", f"/api/documents/nope.md?tenant={TENANT}", admin=True)[0] == 404
    assert world.http("GET", f"/api/documents/{FALCON_ID}?tenant={TENANT}", admin=True)[1]["readers"] == [
        "group:legal"
    ]
    assert found(world, LEE)["bm25"] == {FALCON_ID}


def api_search(world: World, token: str, query: str = "quantum harbor bridge") -> dict[str, set[str]]:
    out = {}
    for mode in MODES:
        status, body = world.http("POST", "/api/search", {"query": query, "mode": mode, "k": 5}, token=token)
        assert status == 200, body
        out[mode] = {hit["doc_id"] for hit in body["hits"]}
    return out


def test_search_api_returns_citable_hits_as_the_callers_principal(world: World) -> None:
    lee, finn = world.token("lee", ("legal",)), world.token("finn", ("finance",))
    query = {"query": "quantum harbor bridge", "mode": "bm25"}
    status, body = world.http("POST", "/api/search", query, token=lee)
    assert status == 200 and body["index_version"] and body["hits"][0]["n"] == 1
    top = body["hits"][0]
    assert top["doc_id"] == FALCON_ID and SECRET in top["text"] and top["title"] == "Project Falcon"
    assert top["provenance"]["bm25_rank"] == 1 and top["chunk_id"]
    assert all(FALCON_ID in hits for hits in api_search(world, lee).values())
    assert all(FALCON_ID not in hits for hits in api_search(world, finn).values())
    assert world.http("POST", "/api/search", {"query": "x"})[0] == 401
    bad_bodies = [
        {"query": ""},
        {"query": "  "},
        {"query": "x", "k": 0},
        {"query": "x", "k": 51},
        {"query": "x", "mode": "magic"},
        {"query": "x", "filter": {}},
        {"query": "x" * 9000},
        {},
    ]
    for bad in bad_bodies:
        status, error = world.http("POST", "/api/search", bad, token=lee)
        assert status == 400 and error["code"] == "bad_input", bad
    status, error = world.http("POST", "/api/search", token=lee, raw=b'{"query": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and error["code"] == "body_too_large"


def _texts(events: list[dict[str, Any]]) -> str:
    return json.dumps(events)


def test_a_reader_who_just_lost_access_gets_nothing_of_it_anywhere(world: World) -> None:
    lee = world.token("lee", ("legal",))
    before = world.ask(lee, "what is the launch code for the quantum harbor bridge?")
    assert SECRET in _texts(world.log(before))  # the answer quoted it while lee could read it
    assert all(FALCON_ID in hits for hits in found(world, LEE).values())

    path = f"/api/documents/{FALCON_ID}/readers?tenant={TENANT}"
    status, changed = world.http("PUT", path, {"readers": ["group:finance"]}, admin=True)
    assert status == 200 and changed["chunks_changed"] >= 1
    # At once (no wait for the worker's index rewrite): every retriever, every mode.
    assert all(FALCON_ID not in hits for hits in found(world, LEE).values())
    assert all(FALCON_ID not in hits for hits in api_search(world, lee).values())

    # The agent's knowledge tools, in a new run as lee: nothing of it is retrieved or read.
    probe = world.ask(lee, "[script:probe] look for the bridge", mode="agent")
    results = [e for e in world.log(probe) if e["type"] == "tool_result"]
    assert len(results) == 2 and SECRET not in _texts(results) and "solstice" not in _texts(results)
    assert "not found" in str(results[1]["error"])

    # The earlier conversation's replays, REST and socket: the passages and references are cut out.
    status, page = world.http("GET", f"/api/conversations/{before}/events", token=lee)
    assert status == 200 and SECRET not in _texts(page["events"]) and FALCON_ID not in _texts(page["events"])
    frames = world.replay(lee, before)
    assert frames and SECRET not in _texts(frames) and FALCON_ID not in _texts(frames)

    # The new reader finds it by every retriever once the worker rewrote Whoosh's readers (no embedding).
    deadline = time.monotonic() + 30
    while FALCON_ID not in found(world, FINN)["bm25"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert all(FALCON_ID in hits for hits in found(world, FINN).values())


def test_a_delete_is_unsearchable_at_once_in_every_version(world: World) -> None:
    from index.chunk import CHUNKER_VERSION
    from index.context import context_version
    from index.embed import load_embedder
    from index.ingest import Ingestor
    from index.search import Searcher
    from index.types import EVERYONE, Access
    from index.versions import create_version, get_active

    embedder = load_embedder(world.settings, "hash", purpose="offline")
    context = context_version(False)
    building = create_version(  # a second version, as a rebuild holds one
        world.settings, embedder.identity, chunker_version=CHUNKER_VERSION, context_version=context
    ).version
    with Ingestor(world.settings, embedder, building) as ingestor:
        ingestor.ingest_document(PUBLIC_ID, path=world.kb / "canteen.md", access=Access(readers=(EVERYONE,)))
    versions = [get_active(world.settings), building]
    anyone = Principal(tenant=TENANT, user="zed")

    def hits(version: str | None) -> set[str]:
        searcher = Searcher(world.settings, str(version), embedder)
        try:
            result = searcher.search_sync("lentil soup pancakes", anyone, mode="hybrid")
            return {h.doc_id for h in result.hits}
        finally:
            searcher.close()

    assert all(PUBLIC_ID in hits(v) for v in versions)
    status, deleted = world.http("DELETE", f"/api/documents/{PUBLIC_ID}?tenant={TENANT}", admin=True)
    assert status == 200 and deleted["status"] == "deleted"
    assert all(PUBLIC_ID not in hits(v) for v in versions)
    assert world.http("GET", f"/api/documents/{PUBLIC_ID}?tenant={TENANT}", admin=True)[0] == 404
    assert PUBLIC_ID not in {d["doc_id"] for d in docs(world)[1]["documents"]}
    assert world.http("DELETE", f"/api/documents/{PUBLIC_ID}?tenant={TENANT}", admin=True)[0] == 404


def _detail(world: World, doc_id: str) -> dict[str, Any]:
    return world.http("GET", f"/api/documents/{doc_id}?tenant={TENANT}", admin=True)[1]  # type: ignore[no-any-return]


def test_reingest_reads_the_source_again_with_the_current_readers(world: World) -> None:
    before = _detail(world, FALCON_ID)["last_ingest"]["at_ms"]
    (world.kb / "falcon.md").write_text("# Project Falcon\n\nThe harbor bridge now opens in spring.\n")
    status, queued = world.http("POST", f"/api/documents/{FALCON_ID}/reingest?tenant={TENANT}", admin=True)
    assert status == 202 and queued["status"] == "reingest_queued"
    deadline = time.monotonic() + 30
    while _detail(world, FALCON_ID)["last_ingest"]["at_ms"] == before and time.monotonic() < deadline:
        time.sleep(0.3)
    detail = _detail(world, FALCON_ID)
    assert detail["last_ingest"]["status"] == "indexed" and detail["readers"] == ["group:finance"]
    assert all(FALCON_ID in hits for hits in found(world, FINN, "bridge opens in spring").values())
    assert all(FALCON_ID not in hits for hits in found(world, LEE, "bridge opens in spring").values())
    assert world.http("POST", f"/api/documents/nope.md/reingest?tenant={TENANT}", admin=True)[0] == 404
