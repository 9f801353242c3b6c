"""Document metadata and search filters (issue 12): stored at ingest, applied inside both retrievers like
the ACL (a mask, never a trim of a shared top k), never widening what a principal may read, and refused
with a typed error when malformed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from index.ingest import Ingestor
from index.search import Mode, Searcher
from index.types import Access, Principal
from store.catalog import Catalog
from store.catalog_types import DocumentFilter
from store.exceptions import BadFilter, InputError
from store.metadata import (
    MAX_METADATA_BYTES,
    DocumentMetadata,
    SearchFilters,
    filter_clause,
    parse_filters,
    parse_metadata,
)
from store.settings import Settings
from tests.test_indexes import BowEmbedder, make_document, make_settings

ALICE = Principal(tenant="acme", user="alice", groups=("eng",))
BOARD = Principal(tenant="acme", user="carol", groups=("board",))
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")
DAY_MS = 86_400_000
OLD_TEXT_COLUMNS = ("title", "source", "format", "content_hash", "tenant", "readers")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, retrieve_k=20)


def _ingest(ingestor: Ingestor, doc_id: str, text: str, metadata: DocumentMetadata, access: Access) -> int:
    document, chunks = make_document(doc_id, [text], access)
    document = msgspec.structs.replace(document, metadata=metadata)
    return ingestor.ingest_chunks(document, chunks).embedded


def _world(settings: Settings, embedder: BowEmbedder) -> str:
    everyone, board = Access(tenant="acme"), Access(tenant="acme", readers=("group:board",))
    with Ingestor(settings, embedder) as ingestor:
        # 40 chunks closer to the query than the one we filter for: they fill any top 20 on their own.
        for n in range(40):
            meta = DocumentMetadata(author="bob", tags=("archive",), modified_ms=n * DAY_MS)
            _ingest(ingestor, f"old-{n}", f"quarterly budget forecast revenue {n}", meta, everyone)
        fresh = DocumentMetadata(author="ada", path="finance/2026/q1.md", tags=("finance", "current"),
                                 modified_ms=400 * DAY_MS, fields={"region": "emea"})  # fmt: skip
        _ingest(ingestor, "fresh", "The budget forecast for the first quarter, with notes.", fresh, everyone)
        secret = DocumentMetadata(author="ada", tags=("finance", "current"), fields={"region": "emea"})
        _ingest(ingestor, "board-plan", "The budget forecast the board keeps to itself.", secret, board)
        return ingestor.version


async def test_a_filter_is_applied_inside_retrieval_not_to_a_shared_top_k(settings: Settings) -> None:
    embedder = BowEmbedder()
    searcher = Searcher(settings, _world(settings, embedder), embedder)
    query = "quarterly budget forecast revenue"
    cases = [
        SearchFilters(tags_any=("current",)),
        SearchFilters(tags_all=("finance", "current")),
        SearchFilters(author="ada"),
        SearchFilters(path_prefix="finance/"),
        SearchFilters(modified_from_ms=100 * DAY_MS),
        SearchFilters(fields={"region": "emea"}),
        SearchFilters(doc_ids=("fresh", "nope")),
    ]
    for mode in MODES:
        unfiltered = await searcher.search(query, ALICE, k=5, mode=mode)
        assert all(h.doc_id.startswith("old-") for h in unfiltered.hits)  # the fresh one is far behind
        for filters in cases:
            hits = (await searcher.search(query, ALICE, k=1, mode=mode, filters=filters)).hits
            assert [h.doc_id for h in hits] == ["fresh"], (mode, filters)
        window = SearchFilters(modified_from_ms=10 * DAY_MS, modified_before_ms=13 * DAY_MS)
        hits = (await searcher.search(query, ALICE, k=10, mode=mode, filters=window)).hits
        assert sorted(h.doc_id for h in hits) == ["old-10", "old-11", "old-12"]
        assert (
            await searcher.search(query, ALICE, mode=mode, filters=SearchFilters(author="zed"))
        ).hits == []
    searcher.close()


async def test_a_filter_never_widens_the_acl(settings: Settings) -> None:
    embedder = BowEmbedder()
    searcher = Searcher(settings, _world(settings, embedder), embedder)
    query = "budget forecast the board keeps to itself"
    board_only = [
        SearchFilters(doc_ids=("board-plan",)),
        SearchFilters(author="ada", fields={"region": "emea"}),
        SearchFilters(source="board-plan"),
    ]
    for mode in MODES:
        for filters in board_only:
            alice = (await searcher.search(query, ALICE, k=5, mode=mode, filters=filters)).hits
            assert all(h.doc_id != "board-plan" for h in alice), (mode, filters)
        board = (await searcher.search(query, BOARD, k=1, mode=mode, filters=board_only[0])).hits
        assert [h.doc_id for h in board] == ["board-plan"]
        other_tenant = Principal(tenant="globex", user="gus")
        assert (await searcher.search(query, other_tenant, mode=mode, filters=board_only[0])).hits == []
    injection = SearchFilters(author="x' OR 1=1 --", fields={"region": "') OR ('1'='1"})
    assert (await searcher.search(query, BOARD, mode="hybrid", filters=injection)).hits == []
    searcher.close()


def test_unknown_or_malformed_filters_are_a_typed_error() -> None:
    for raw, field in (
        (b'{"tenant": "globex"}', "tenant"),
        (b'{"readers": ["*"]}', "readers"),
        (b'{"tags_any": "finance"}', "tags_any"),
        (b'{"tags_any": []}', "tags_any"),
        (b'{"doc_ids": [' + b",".join([b'"d"'] * 101) + b"]}", "doc_ids"),
        (b'{"modified_from_ms": "yesterday"}', "modified_from_ms"),
        (b'{"fields": {"Bad Key": "x"}}', "fields"),
        (b"[1, 2]", "filters"),
        (b"{", "filters"),
    ):
        with pytest.raises(BadFilter) as refused:
            parse_filters(raw)
        assert refused.value.code == "bad_filter" and refused.value.details["field"] == field, raw
    assert parse_filters(None).is_empty() and parse_filters({"author": "ada"}).author == "ada"


def test_metadata_is_typed_and_bounded() -> None:
    ok = parse_metadata(b'{"author": "Ada", "tags": ["hr"], "modified_ms": 1, "fields": {"team": "x"}}')
    assert ok.tags == ("hr",) and ok.fields == {"team": "x"}
    for bad in (
        b'{"colour": "red"}',
        b'{"tags": ["a,b"]}',
        b'{"tags": [' + b",".join([b'"t"'] * 33) + b"]}",
        b'{"modified_ms": -1}',
        b'{"fields": {"k": 1}}',
        b'{"author": "' + b"a" * 501 + b'"}',
    ):
        with pytest.raises(InputError):
            parse_metadata(bad)
    huge = {"fields": {f"k{n}": "v" * 400 for n in range(30)}}
    with pytest.raises(InputError, match=str(MAX_METADATA_BYTES)):
        parse_metadata(huge)


def test_metadata_is_stored_listed_and_a_change_recommits_without_embedding(settings: Settings) -> None:
    embedder = BowEmbedder()
    _world(settings, embedder)
    catalog = Catalog.for_data_dir(settings.data_path)
    assert catalog.get_document("fresh").metadata.path == "finance/2026/q1.md"  # type: ignore[union-attr]
    listed = catalog.find_documents(
        DocumentFilter(tenant="acme", metadata=SearchFilters(tags_any=("current",)))
    )
    assert [d.doc_id for d in listed] == ["board-plan", "fresh"]
    with Ingestor(settings, embedder) as ingestor:
        moved = DocumentMetadata(author="ada", tags=("finance",), fields={"region": "apac"})
        embedded = _ingest(ingestor, "fresh", "The budget forecast for the first quarter, with notes.", moved,
                           Access(tenant="acme"))  # fmt: skip
        version = ingestor.version
    assert embedded == 0  # only metadata changed: the entries and vectors are the same
    assert catalog.get_document("fresh").metadata.fields == {"region": "apac"}  # type: ignore[union-attr]
    searcher = Searcher(settings, version, embedder, catalog=catalog)
    hits = searcher.search_sync(
        "budget forecast first quarter", ALICE, filters=SearchFilters(fields={"region": "emea"})
    )
    assert all(h.doc_id != "fresh" for h in hits.hits)
    searcher.close()
    catalog.close()


def test_an_older_catalog_gains_the_metadata_column(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    text = [f"{c} TEXT NOT NULL" for c in OLD_TEXT_COLUMNS]
    numbers = ["size INTEGER NOT NULL", "updated_at INTEGER NOT NULL", "deleted INTEGER"]
    columns = ", ".join(["doc_id TEXT PRIMARY KEY", *text, *numbers])
    db.execute(f"CREATE TABLE documents ({columns})")
    db.execute("INSERT INTO documents VALUES ('a', 'A', 'a.md', 'md', 'h', 'acme', '[\"*\"]', 1, 1, 0)")
    db.commit()
    db.close()
    catalog = Catalog(path)
    document = catalog.get_document("a")
    assert document is not None and document.metadata.is_empty()
    catalog.close()


def test_the_filter_clause_binds_every_value() -> None:
    clause, params = filter_clause(
        SearchFilters(author="a'; DROP TABLE documents; --", fields={"k": "v"}), "d"
    )
    assert "DROP" not in clause and "a'; DROP TABLE documents; --" in params
    assert filter_clause(SearchFilters(), "d") == ("1", [])


def test_a_filtered_ask_stays_out_of_the_answer_cache() -> None:
    from actors.answer_policy import AnswerCachePolicy, CachePolicyConfig
    from store.events import UserMessage

    config = msgspec.convert({"tenants": {"acme": {"enabled": True}}}, CachePolicyConfig)
    policy = AnswerCachePolicy(Settings.from_env({}), config)
    plain = UserMessage(text="How long is parental leave?", tenant="acme", user="u")
    filtered = msgspec.structs.replace(plain, filters=SearchFilters(tags_any=("hr",)))
    assert policy.decide(plain, "acme", "qa", plain.text).use
    decision = policy.decide(filtered, "acme", "qa", filtered.text)
    assert not decision.use and "filters" in decision.reason
