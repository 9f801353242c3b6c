"""Issue 11, finding 2: a reviewer or admin reading a `legal` user's conversation gets the reader's own
document ACL applied, on every path that returns event content (REST history, /ws/chat replay and live,
admin trace).

The knowledge base is real (two documents ingested with the `hash` embedder, one readable by group `legal`
only); the conversation's events are the ones the actor writes, built with its own renderers from a real
search as the legal user.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors.ingestion import ingest_files
from actors.tools.knowledge import render_hits
from actors.tools.registry import fence_data
from index.search import SearchService
from index.types import Access, Principal
from server.auth import mint_token
from server.redaction import EventView, Redactor, references
from store.catalog import Catalog
from store.catalog_types import CatalogDocument, DocumentCommit
from store.events import (
    AnswerCompleted,
    Citation,
    LLMRequested,
    RetrievalDone,
    ToolIntent,
    ToolResult,
    UserMessage,
)
from store.redis import EmbeddedRedis, sync_client
from store.settings import Settings
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, StreamWriter, server_env

SECRET = (
    "The settlement with Northwind obliges the company to pay four million crowns within ninety days of "
    "signature, and the indemnity survives termination of the master agreement for seven years."
)
PUBLIC = (
    "Employees may book economy class travel for trips under six hours and must file expense reports "
    "within thirty days of returning from the trip."
)
TENANT = "default"
SECRET_DOC = "docs/settlement.txt"


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("redaction")
    env = server_env(redis_server.url, root / "data", embed_model="hash", allowed_roots=str(root / "docs"))
    settings = Settings.from_env(env)
    (root / "docs").mkdir()
    (root / "docs" / "settlement.txt").write_text(f"Northwind settlement\n\n{SECRET}\n")
    (root / "docs" / "travel.txt").write_text(f"Travel policy\n\n{PUBLIC}\n")
    ingest_files(
        settings, [root / "docs" / "settlement.txt"], Access(tenant=TENANT, readers=("group:legal",))
    )
    ingest_files(settings, [root / "docs" / "travel.txt"], Access(tenant=TENANT, readers=("*",)))
    with ServerProcess(env) as web:
        yield {"settings": settings, "web": web, "hits": asyncio.run(_legal_search(settings))}


async def _legal_search(settings: Settings) -> list[Any]:
    service = SearchService(settings)
    try:
        result = await service.search(
            "settlement travel", Principal(tenant=TENANT, user="lee", groups=("legal",))
        )
        return list(result.hits)
    finally:
        service.close()


def passage(hit: Any) -> str:
    """A passage line as actors.conversation.passage renders it (that module needs a broker to import)."""
    where = " > ".join(part for part in (hit.title, hit.heading) if part)
    return f"{' '.join(hit.text.split())} (source: {where})"


def _conversation(world: dict[str, Any], r: redis.Redis, conv_id: str) -> StreamWriter:
    hits = world["hits"]
    assert {h.doc_id for h in hits} == {SECRET_DOC, "docs/travel.txt"}, [h.doc_id for h in hits]
    r.hset(f"convmeta:{{{conv_id}}}", mapping={"tenant": TENANT, "user": "lee", "created_ms": 1})
    writer = StreamWriter(r, conv_id)
    passages = "\n".join(f"[{n}] {passage(h)}" for n, h in enumerate(hits, 1))
    sources = tuple(
        Citation(n=n, chunk_id=h.chunk_id, doc_id=h.doc_id, title=h.title, snippet=h.text[:200])
        for n, h in enumerate(hits, 1)
    )
    secret_hit = next(h for h in hits if h.doc_id == SECRET_DOC)
    for event in (
        UserMessage(turn=1, text="settlement travel", user="lee", tenant=TENANT, groups=("legal",)),
        RetrievalDone(turn=1, query="settlement travel", chunk_ids=tuple(h.chunk_id for h in hits),
                      index_version="v"),
        LLMRequested(turn=1, step=0, model="m", prompt_hash="p",
                     messages=[{"role": "system", "content": fence_data("passages", passages)}]),
        ToolResult(turn=1, step=1, call_id="c1", tool="search_knowledge_base", idempotency_key="k1",
                   result=render_hits("settlement", hits)),
        ToolIntent(turn=1, step=2, call_id="c2", tool="read_document", args={"doc_id": SECRET_DOC},
                   idempotency_key="k2"),
        ToolResult(turn=1, step=2, call_id="c2", tool="read_document", idempotency_key="k2",
                   result=fence_data(f"read_document doc_id={SECRET_DOC}", SECRET)),
        AnswerCompleted(turn=1, text=f"The company must pay: {secret_hit.text[:120]} [1]",
                        citations=tuple(c for c in sources if c.doc_id == SECRET_DOC),
                        sources=sources),
    ):  # fmt: skip
        writer.event(event)
    return writer


def _leaks(text: str) -> bool:
    return any(
        fragment in text for fragment in ("four million crowns", "Northwind", "ninety days of signature")
    )


def _get(url: str, **headers: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())


def _token(world: dict[str, Any], user: str, role: str, groups: tuple[str, ...] = ()) -> str:
    return mint_token(world["settings"], tenant=TENANT, user=user, groups=groups, roles=(role,))


def _check_redacted(events: list[dict[str, Any]]) -> None:
    text = json.dumps(events)
    assert not _leaks(text), text
    assert "economy class travel" in text  # what the reader may read stays
    by_type = {e["type"]: e for e in events}
    assert "[redacted]" in by_type["retrieval_done"]["chunk_ids"] and by_type["retrieval_done"]["redacted"]
    assert sum(1 for c in by_type["answer_completed"]["sources"] if c == {"n": c["n"], "redacted": True}) == 1
    assert by_type["answer_completed"]["citations"][0]["redacted"] is True
    for kind in ("llm_requested", "tool_intent", "answer_completed"):
        assert by_type[kind]["redacted"] >= 1, by_type[kind]
    assert all(e.get("redacted") for e in events if e["type"] == "tool_result")


@pytest.mark.parametrize("role", ["reviewer", "admin"])
def test_rest_history_applies_the_readers_acl(world: dict[str, Any], redis_url: str, role: str) -> None:
    r = sync_client(redis_url)
    _conversation(world, r, "conv-rest")
    url = f"{world['web'].http_url}/api/conversations/conv-rest/events"
    page = _get(url, Authorization=f"Bearer {_token(world, 'rita', role)}")
    _check_redacted([e["event"] for e in page["events"]])
    owner = _get(url, Authorization=f"Bearer {_token(world, 'lee', 'user', ('legal',))}")
    assert _leaks(json.dumps(owner)) and "redacted" not in json.dumps(owner)  # the owner reads it as recorded
    legal_reviewer = _get(url, Authorization=f"Bearer {_token(world, 'rita', role, ('legal',))}")
    assert _leaks(json.dumps(legal_reviewer)) and '"[redacted]"' not in json.dumps(legal_reviewer)


def test_the_admin_trace_applies_the_admin_keys_acl(world: dict[str, Any], redis_url: str) -> None:
    r = sync_client(redis_url)
    _conversation(world, r, "conv-trace")
    trace = _get(
        f"{world['web'].http_url}/admin/conversations/conv-trace/trace", **{"X-Admin-Key": TEST_ADMIN_KEY}
    )
    steps = [step for turn in trace["turns"] for step in turn["steps"]]
    _check_redacted(steps)


async def _read_socket(
    world: dict[str, Any], token: str, conv_id: str, live: Any = None
) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with connect(f"{world['web'].ws_url}?token={token}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello", "conversation_id": conv_id}))
        if live is not None:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            live()
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 1.5)))
        except (TimeoutError, ConnectionClosed):
            pass
    return frames


def test_chat_socket_replay_applies_the_readers_acl(world: dict[str, Any], redis_url: str) -> None:
    r = sync_client(redis_url)
    writer = _conversation(world, r, "conv-ws")
    writer.delta("four million crowns", turn=2)  # a turn still streaming
    frames = asyncio.run(_read_socket(world, _token(world, "rita", "reviewer"), "conv-ws"))
    assert not any(f["type"] == "delta" for f in frames)  # a token stream cannot be redacted: not sent
    _check_redacted([f["event"] for f in frames if f["type"] == "event"])
    owner = asyncio.run(_read_socket(world, _token(world, "lee", "user", ("legal",)), "conv-ws"))
    assert any(f["type"] == "delta" for f in owner) and _leaks(json.dumps(owner))


def test_chat_socket_live_frames_apply_the_readers_acl(world: dict[str, Any], redis_url: str) -> None:
    r = sync_client(redis_url)
    r.hset("convmeta:{conv-live}", mapping={"tenant": TENANT, "user": "lee", "created_ms": 1})
    frames = asyncio.run(
        _read_socket(
            world,
            _token(world, "rita", "admin"),
            "conv-live",
            live=lambda: _conversation(world, r, "conv-live"),
        )
    )
    _check_redacted([f["event"] for f in frames if f["type"] == "event"])


def test_a_passage_also_in_a_readable_document_is_not_redacted(tmp_path: Path) -> None:
    """The readable document's fingerprints are taken lazily (once a secret appears): they still exempt."""
    shared = "the quarterly figures are reported to the board every single month"
    only_secret = "the settlement amount stays between the two parties and their lawyers forever"
    catalog = Catalog(tmp_path / "catalog.sqlite")
    for doc_id, readers, text in (
        ("public-notes", ("*",), shared),
        ("secret-memo", ("group:legal",), f"{shared}. {only_secret}"),
    ):
        document = CatalogDocument(
            doc_id=doc_id, title=doc_id, source=doc_id, format="txt", content_hash="h", tenant=TENANT,
            readers=readers,
        )  # fmt: skip
        catalog.commit_documents(
            "v1", [DocumentCommit(document=document, ingest_hash="i", visible=(), text=text)]
        )
    redactor = Redactor(catalog, Principal(tenant=TENANT, user="lee"))
    first = redactor.redact({"type": "tool_result", "text": "read doc_id=public-notes"})  # readable first
    assert "redacted" not in first
    out = redactor.redact(
        {"type": "answer_completed", "text": f"doc_id=secret-memo says {shared}; also {only_secret}"}
    )
    assert shared in out["text"] and "settlement amount" not in out["text"] and out["redacted"] >= 1


def test_a_frame_with_nothing_to_redact_is_passed_on_as_it_came(tmp_path: Path) -> None:
    """The live path's shortcut: an event naming only known, readable documents (and no secret known yet)
    is sent as the bytes it came in, with no catalog read; the first unknown or secret one is redacted."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    for doc_id, readers in (("open-doc", ("*",)), ("legal-doc", ("group:legal",))):
        document = CatalogDocument(
            doc_id=doc_id, title=doc_id, source=doc_id, format="txt", content_hash="h", tenant=TENANT,
            readers=readers,
        )  # fmt: skip
        catalog.commit_documents(
            "v1", [DocumentCommit(document=document, ingest_hash="i", visible=(), text=f"{doc_id} text")]
        )
    redactor = Redactor(catalog, Principal(tenant=TENANT, user="lee"))
    view = EventView(redactor, deltas=True)
    cited = {"type": "answer_completed", "text": "see [1]", "citations": [{"n": 1, "doc_id": "open-doc"}]}
    assert not redactor.shown_as_is(dict(cited))  # not judged yet: the catalog is read first
    assert redactor.redact(dict(cited)) == cited
    data = json.dumps({"type": "event", "id": "1-0", "event": cited}).encode()
    assert asyncio.run(view.frame(data)) is data  # judged readable: the same bytes, no re-encoding
    secret = {"type": "answer_completed", "text": "x", "citations": [{"n": 1, "doc_id": "legal-doc"}]}
    shown = json.loads(asyncio.run(view.frame(json.dumps({"type": "event", "event": secret}).encode())))
    assert shown["event"]["citations"] == [{"n": 1, "redacted": True}] and shown["event"]["redacted"] == 1
    assert asyncio.run(view.frame(data)) is not data  # a secret is known now: every text is checked


def _references_by_the_letter(value: Any, chunks: set[str], docs: set[str]) -> None:
    """`references` as first written (every string searched, every value walked): what it must still find."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "doc_id" and isinstance(item, str):
                docs.add(item)
            elif key == "chunk_id" and isinstance(item, str):
                chunks.add(item)
            elif key == "chunk_ids" and isinstance(item, list | tuple):
                chunks.update(c for c in item if isinstance(c, str))
            _references_by_the_letter(item, chunks, docs)
    elif isinstance(value, list | tuple):
        for item in value:
            _references_by_the_letter(item, chunks, docs)
    elif isinstance(value, str):
        chunks.update(re.findall(r"chunk_id=([0-9a-f]{32})", value))
        docs.update(re.findall(r"doc_id=([^\s)'\"]+)", value))


def test_references_skips_only_what_cannot_name_a_document() -> None:
    """The walk skips texts without `_id=` and leaves numbers unvisited: every id is still found, at any
    depth, in structured fields and in text (the live path's redaction decides on these sets)."""
    chunk = "0123456789abcdef" * 2
    event = {
        "type": "llm_requested",
        "messages": [{"role": "system", "content": "passages " * 400}, {"role": "user", "content": "q"}],
        "doc_id": "top-doc",
        "n": 3,
        "flag": True,
        "nested": [[{"chunk_ids": [chunk, 7]}, (f"x chunk_id={chunk[::-1]} y", "doc_id=in-tuple)")]],
        "text": f"see doc_id=text-doc and doc_id='quoted' or chunk_id={chunk.upper()} (not an id)",
        "deep": {"a": {"b": {"c": ["doc_id=deepest", {"chunk_id": "c-structured", "doc_id": 5}]}}},
        "tail": "ends with doc_id=",
    }
    found: tuple[set[str], set[str]] = (set(), set())
    expected: tuple[set[str], set[str]] = (set(), set())
    references(event, *found)
    _references_by_the_letter(event, *expected)
    assert found == expected
    assert found[1] == {"top-doc", "in-tuple", "text-doc", "deepest"}
    assert found[0] == {chunk, chunk[::-1], "c-structured"}


def test_a_frame_whose_bytes_name_no_document_is_not_decoded_and_an_escaped_name_still_is(
    tmp_path: Path,
) -> None:
    """The live path reads a frame's bytes first: no `_id` and no `\\u` escape (a model request's prompt)
    and no secret known: passed on undecoded. A key spelled with an escape (`doc\\u005fid`) is decoded and
    redacted; once a secret is known, a frame naming nothing is checked too."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    secret_text = "the settlement amount stays between the two parties and their lawyers forever"
    document = CatalogDocument(
        doc_id="legal-doc", title="legal-doc", source="legal-doc", format="txt", content_hash="h",
        tenant=TENANT, readers=("group:legal",),
    )  # fmt: skip
    catalog.commit_documents(
        "v1", [DocumentCommit(document=document, ingest_hash="i", visible=(), text=secret_text)]
    )
    redactor = Redactor(catalog, Principal(tenant=TENANT, user="lee"))
    view = EventView(redactor, deltas=True)
    prompt = {"type": "llm_requested", "messages": [{"role": "user", "content": f"{secret_text} ü"}]}
    plain = json.dumps({"type": "event", "event": prompt}, ensure_ascii=False).encode()
    assert redactor.names_nothing(json.dumps(prompt, ensure_ascii=False).encode())
    assert asyncio.run(view.frame(plain)) is plain  # nothing names a document, no secret yet: as it came
    assert not redactor.names_nothing(json.dumps(prompt).encode())  # `\u00fc`: an escape, so decoded
    escaped = b'{"type": "event", "event": {"type": "answer_completed", "text": "x", "citations": '
    escaped += b'[{"n": 1, "doc\\u005fid": "legal-doc"}]}}'
    shown = json.loads(asyncio.run(view.frame(escaped)))
    assert shown["event"]["citations"] == [{"n": 1, "redacted": True}]
    assert not redactor.names_nothing(json.dumps(prompt, ensure_ascii=False).encode())  # a secret now
    checked = json.loads(asyncio.run(view.frame(plain)))
    assert "settlement amount" not in checked["event"]["messages"][0]["content"]
