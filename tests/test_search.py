"""Hybrid search: each mode finds the right chunk, access control holds under pressure, the alias switch,
generation reloads, reranking, and input validation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index.ingest import Ingestor
from index.search import Mode, Searcher, SearchService
from index.types import Access, Manifest, Principal
from index.versions import create_version, set_active
from store.exceptions import IndexNotFound, InputError, ModelMismatch
from store.settings import Settings
from tests.test_indexes import BowEmbedder, make_document, make_settings, new_version

ALICE = Principal(tenant="acme", user="alice", groups=("eng",))
BOARD = Principal(tenant="acme", user="carol", groups=("board",))
GLOBEX = Principal(tenant="globex", user="gus")
STRANGER = Principal(tenant="initech", user="ivan")
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")

CORPUS = {
    "leave": [
        "Parental leave lasts sixteen weeks at full pay.",
        "Sick leave needs a doctor's note after three days.",
    ],
    "travel": [
        "Book economy class for flights under six hours.",
        "Hotel costs are reimbursed up to a nightly cap.",
    ],
    "security": [
        "Rotate your laptop password every ninety days.",
        "Report phishing emails to the security team.",
    ],
}


def _populate(settings: Settings, embedder: BowEmbedder, version: str | None = None) -> str:
    with Ingestor(settings, embedder, version) as ingestor:
        for doc_id, texts in CORPUS.items():
            ingestor.ingest_chunks(*make_document(doc_id, texts, Access(tenant="acme"), title=doc_id.title()))
        return ingestor.version


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, retrieve_k=20)


async def test_each_mode_finds_the_right_chunk(settings: Settings) -> None:
    embedder = BowEmbedder()
    searcher = Searcher(settings, _populate(settings, embedder), embedder)
    for mode in MODES:
        result = await searcher.search("how many weeks of parental leave", ALICE, k=3, mode=mode)
        top = result.hits[0]
        assert top.text == CORPUS["leave"][0] and top.doc_id == "leave" and top.title == "Leave"
        assert result.index_version == searcher.version
        stages = {"dense": {"embed", "ann"}, "bm25": {"bm25"}, "hybrid": {"embed", "ann", "bm25"}}[mode]
        assert stages | {"fuse", "catalog", "total"} == set(result.timings_ms)
        assert (top.dense_rank is not None) == (mode != "bm25")
        assert (top.bm25_rank is not None) == (mode != "dense")
    hybrid = (await searcher.search("phishing emails", ALICE, mode="hybrid")).hits[0]
    assert hybrid.text == CORPUS["security"][1] and (hybrid.dense_rank, hybrid.bm25_rank) == (1, 1)
    assert hybrid.score > 1.0  # well above both lists' means (z-score fusion: 0 is average)
    sync = searcher.search_sync("phishing emails", ALICE, mode="hybrid")
    batch = searcher.search_many_sync(["phishing emails", "hotel cap"], ALICE, mode="hybrid")
    assert [h.chunk_id for h in sync.hits] == [h.chunk_id for h in batch[0].hits]
    assert batch[1].hits[0].text == CORPUS["travel"][1]
    searcher.close()


async def test_forbidden_chunks_never_come_back_even_when_they_dominate(settings: Settings) -> None:
    embedder = BowEmbedder()
    version = _populate(settings, embedder)
    board_only = Access(tenant="acme", readers=("group:board",))
    with Ingestor(settings, embedder, version) as ingestor:
        # 40 board-only chunks nearly identical to the query: they fill any top-20 on their own.
        for n in range(40):
            ingestor.ingest_chunks(
                *make_document(f"merger-{n}", [f"merger plan takeover target {n}"], board_only)
            )
        ingestor.ingest_chunks(*make_document("hostile", ["Hostile bid tactics."], board_only))
        ingestor.ingest_chunks(
            *make_document(
                "memo", ["The merger plan memo for all staff is in the wiki."], Access(tenant="acme")
            )
        )
    searcher = Searcher(settings, version, embedder)
    for mode in MODES:
        hits = (await searcher.search("merger plan takeover target", ALICE, k=5, mode=mode)).hits
        assert hits and all(not h.doc_id.startswith(("merger-", "hostile")) for h in hits)
        assert hits[0].doc_id == "memo"  # found behind 40 closer forbidden chunks: oversampling worked
        only_forbidden = (await searcher.search("hostile bid tactics", ALICE, k=5, mode=mode)).hits
        assert all(h.doc_id != "hostile" for h in only_forbidden)
        board_hits = (await searcher.search("hostile bid tactics", BOARD, k=5, mode=mode)).hits
        assert board_hits[0].doc_id == "hostile"
    assert (await searcher.search("hostile bid tactics", ALICE, mode="bm25")).hits == []


async def test_tenants_are_isolated(settings: Settings) -> None:
    embedder = BowEmbedder()
    version = _populate(settings, embedder)
    with Ingestor(settings, embedder, version) as ingestor:
        ingestor.ingest_chunks(
            *make_document("globex-leave", ["Parental leave lasts sixteen weeks."], Access(tenant="globex"))
        )
    searcher = Searcher(settings, version, embedder)
    for mode in MODES:
        acme = (await searcher.search("parental leave weeks", ALICE, k=10, mode=mode)).hits
        globex = (await searcher.search("parental leave weeks", GLOBEX, k=10, mode=mode)).hits
        assert acme and all(h.doc_id != "globex-leave" for h in acme)
        assert [h.doc_id for h in globex] == ["globex-leave"]
        assert (await searcher.search("parental leave weeks", STRANGER, mode=mode)).hits == []


async def test_a_second_searcher_picks_up_new_generations(settings: Settings) -> None:
    embedder = BowEmbedder()
    version = _populate(settings, embedder)
    searcher = Searcher(settings, version, embedder, check_interval_ms=0)
    assert (await searcher.search("quokka sightings", ALICE, mode="bm25")).hits == []
    generation = searcher.vectors.generation
    with Ingestor(settings, embedder, version) as ingestor:
        ingestor.ingest_chunks(
            *make_document("wildlife", ["Quokka sightings near the office."], ALICE_ACCESS)
        )
    for mode in MODES:
        hits = (await searcher.search("quokka sightings", ALICE, k=1, mode=mode)).hits
        assert [h.doc_id for h in hits] == ["wildlife"]
    assert searcher.vectors.generation > generation


ALICE_ACCESS = Access(tenant="acme", readers=("user:alice",))


async def test_service_follows_the_alias_and_inflight_queries_keep_their_pair(settings: Settings) -> None:
    models = {m.identity: m for m in (BowEmbedder(), BowEmbedder(salt="v2"))}
    first, second = models.values()

    def open_searcher(manifest: Manifest) -> Searcher:
        return Searcher(settings, manifest.version, models[manifest.model])

    service = SearchService(settings, open_searcher, check_interval_ms=0)
    with pytest.raises(IndexNotFound):
        await service.search("anything", ALICE)
    _populate(settings, first)
    before = await service.search("parental leave", ALICE)
    in_flight = await service.searcher()

    new_version(settings, second, "v2")
    _populate(settings, second, "v2")
    with pytest.raises(ModelMismatch):
        Searcher(settings, "v2", first)
    set_active(settings, "v2")

    after = await service.search("parental leave", ALICE)
    assert before.index_version != "v2" and after.index_version == "v2"
    assert [h.chunk_id for h in after.hits][:1] == [h.chunk_id for h in before.hits][:1]
    finishing = await in_flight.search("parental leave", ALICE)
    assert finishing.index_version == before.index_version and in_flight.embedder is first
    assert await service.read("leave", ALICE) == ("Leave", "\n\n".join(CORPUS["leave"]))
    assert await service.read("leave", GLOBEX) is None and await service.read("nope", ALICE) is None
    service.close()


class PreferringReranker:
    """Scores 1 for passages containing a word, else 0: a deterministic stand-in for a cross-encoder."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[int] = []

    def score(self, query: str, passages: Sequence[str]) -> npt.NDArray[np.float32]:
        self.seen.append(len(passages))
        return np.array([float(self.word in p) for p in passages], dtype=np.float32)


async def test_reranker_reorders_the_fused_top_and_is_timed(settings: Settings) -> None:
    embedder = BowEmbedder()
    version = _populate(settings, embedder)
    reranker = PreferringReranker("doctor")
    searcher = Searcher(settings, version, embedder, reranker=reranker)
    plain = await Searcher(settings, version, embedder).search("parental leave", ALICE, k=2)
    assert plain.hits[0].text == CORPUS["leave"][0]
    result = await searcher.search("parental leave", ALICE, k=2)
    assert [h.text for h in result.hits] == [CORPUS["leave"][1], CORPUS["leave"][0]]
    assert [h.rerank_score for h in result.hits] == [1.0, 0.0]
    assert "rerank" in result.timings_ms and reranker.seen == [6]  # every readable candidate, up to depth


async def test_bad_queries_are_refused(settings: Settings) -> None:
    embedder = BowEmbedder()
    searcher = Searcher(settings, _populate(settings, embedder), embedder)
    bad: list[dict[str, object]] = [
        {"query": ""},
        {"query": "   "},
        {"query": "x" * (settings.max_question_chars + 1)},
        {"query": "ok", "k": 0},
        {"query": "ok", "k": settings.retrieve_k + 1},
        {"query": "ok", "mode": "fuzzy"},
        {"query": "ok", "principal": "alice"},
    ]
    for case in bad:
        kwargs = {"principal": ALICE, **case}
        with pytest.raises(InputError):
            await searcher.search(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(IndexNotFound):
        Searcher(settings, "missing", embedder)
    other = create_version(
        settings, BowEmbedder(dimension=32).identity, chunker_version="c", context_version="x"
    )
    with pytest.raises(ModelMismatch):
        Searcher(settings, other.version, embedder)


async def test_concurrent_queries_share_one_searcher(settings: Settings) -> None:
    embedder = BowEmbedder()
    searcher = Searcher(settings, _populate(settings, embedder), embedder)
    queries = ["parental leave", "hotel cap", "phishing emails", "laptop password"] * 5
    results = await asyncio.gather(*(searcher.search(q, ALICE, k=1) for q in queries))
    expected = {"parental leave": "leave", "hotel cap": "travel", "phishing emails": "security"}
    for query, result in zip(queries, results, strict=True):
        assert result.hits[0].doc_id == expected.get(query, "security")


async def test_default_service_loads_the_registered_embedder_that_built_the_index(tmp_path: Path) -> None:
    from index.embed import load_embedder

    settings = make_settings(tmp_path, embed_model="hash")
    with Ingestor(settings, load_embedder(settings, "hash", purpose="offline")) as ingestor:
        ingestor.ingest_document(
            "faq.md", data=b"# FAQ\n\n## Wifi\n\nThe guest wifi password is on the door.\n"
        )
    service = SearchService(settings)
    everyone = Principal(tenant="default", user="u")
    result = await service.search("guest wifi password", everyone, k=1)
    assert [h.doc_id for h in result.hits] == ["faq.md"] and result.hits[0].heading.endswith("Wifi")
    assert "embed" in result.timings_ms
    service.close()
