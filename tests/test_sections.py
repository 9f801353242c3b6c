"""Small-to-big context: a hit widened to its section, overlaps removed, budgets and ACLs kept."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from index.ingest import Ingestor
from index.search import Searcher, SearchService
from index.sections import join_chunks, section_passages
from index.types import Access, Hit, Principal
from store.settings import Settings
from tests.test_indexes import BowEmbedder, make_document, make_settings

ALICE = Principal(tenant="acme", user="alice")
WORDS = len  # the token counter here: one token a character keeps the budgets easy to read


def test_chunks_join_without_their_overlap() -> None:
    assert join_chunks(["one two three", "two three four", "four five"]) == "one two three four five"
    assert join_chunks(["a paragraph.", "Another one."]) == "a paragraph.\n\nAnother one."
    assert join_chunks([]) == ""


@pytest.fixture
def searcher(tmp_path: Path) -> Searcher:
    settings: Settings = make_settings(tmp_path, retrieve_k=20)
    embedder = BowEmbedder()
    with Ingestor(settings, embedder) as ingestor:
        document, chunks = make_document(
            "handbook", ["Leave starts on day one.", "Leave lasts sixteen weeks.", "Pay is full."],
            Access(tenant="acme"),
        )  # fmt: skip
        ingestor.ingest_chunks(document, chunks)
        ingestor.ingest_chunks(*make_document("travel", ["Flights are economy."], Access(tenant="acme")))
        version = ingestor.version
    searcher = Searcher(settings, version, embedder)
    yield searcher
    searcher.close()


def widen(searcher: Searcher, hits: list[Hit], principal: Principal, budget: int) -> list[Hit]:
    return section_passages(
        searcher.catalog, searcher.version, hits, principal, max_tokens=budget, count_tokens=WORDS
    )


def test_a_hit_becomes_its_section_within_the_budget(searcher: Searcher) -> None:
    hits = searcher.search_sync("sixteen weeks", ALICE, k=3, mode="bm25").hits
    assert hits[0].text == "Leave lasts sixteen weeks."
    whole = section_passages(
        searcher.catalog, searcher.version, hits[:1], ALICE, max_tokens=500, count_tokens=WORDS
    )
    assert whole[0].text == "Leave starts on day one.\n\nLeave lasts sixteen weeks.\n\nPay is full."
    assert whole[0].chunk_id == hits[0].chunk_id and whole[0].score == hits[0].score
    narrow = section_passages(
        searcher.catalog, searcher.version, hits[:1], ALICE, max_tokens=60, count_tokens=WORDS
    )
    assert "Leave lasts sixteen weeks." in narrow[0].text and len(narrow[0].text) <= 60
    unchanged = section_passages(
        searcher.catalog, searcher.version, hits, ALICE, max_tokens=0, count_tokens=WORDS
    )
    assert unchanged == hits


def test_two_hits_of_one_section_make_one_passage(searcher: Searcher) -> None:
    hits = searcher.search_sync("leave weeks day", ALICE, k=3, mode="bm25").hits
    assert {h.doc_id for h in hits[:2]} == {"handbook"}
    passages = section_passages(
        searcher.catalog, searcher.version, hits, ALICE, max_tokens=500, count_tokens=WORDS
    )
    assert [p.doc_id for p in passages].count("handbook") == 1


def test_a_reader_of_another_tenant_gets_nothing_joined_in(searcher: Searcher) -> None:
    hits = searcher.search_sync("sixteen weeks", ALICE, k=1, mode="bm25").hits
    stranger = Principal(tenant="globex", user="gus")
    passages = section_passages(
        searcher.catalog, searcher.version, hits, stranger, max_tokens=500, count_tokens=WORDS
    )
    assert passages[0].text == hits[0].text  # no readable row of the section: the hit stays as it was


async def test_the_service_widens_hits_when_configured(tmp_path: Path, searcher: Searcher) -> None:
    settings = searcher.settings
    result = searcher.search_sync("sixteen weeks", ALICE, k=1, mode="bm25")
    wide = SearchService(msgspec.structs.replace(settings, context_window_tokens=500), lambda m: searcher)
    assert (await wide.sections(result, ALICE)).hits[0].text.startswith("Leave starts on day one.")
    off = SearchService(settings, lambda m: searcher)
    assert (await off.sections(result, ALICE)) is result
