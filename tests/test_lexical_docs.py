"""Document-level BM25 blended into chunk scores (index.lexical_docs), checked against a plain reference."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from index.lexical import BODY, LexicalEntry, LexicalIndex, analyzer, lucene_idf
from index.lexical_docs import Documents

K1, B = 1.2, 0.75
# (key, doc, body): d1's answer is split over two chunks; d2 and d3 each hold one of the words.
CHUNKS = (
    (1, "d1", "rotate the backup tapes weekly"),
    (2, "d1", "the tapes are kept offsite in a vault"),
    (3, "d2", "offsite storage of servers"),
    (4, "d3", "backup the laptops nightly with the agent and the schedule of the company"),
    (5, "d4", "nothing relevant here at all"),
)


def _entry(key: int, doc: str, body: str) -> LexicalEntry:
    return LexicalEntry(key=key, chunk_id=f"c{key}", doc_id=doc, tenant="t", readers=("*",), body=body)


def _terms(text: str) -> list[str]:
    return [token.text for token in analyzer()(text)]


def _bm25(tf: float, length: float, average: float, idf: float) -> float:
    return idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / average))


def reference(query: str, chunks: tuple[tuple[int, str, str], ...], weight: float) -> dict[int, float]:
    """Chunk BM25 blended with whole-document BM25, from the texts (exact lengths, small enough for the
    index's length bytes to be exact too)."""
    bags = {key: Counter(_terms(body)) for key, _, body in chunks}
    docs: dict[str, Counter[str]] = {}
    for key, doc, _ in chunks:
        docs.setdefault(doc, Counter()).update(bags[key])
    chunk_avg = sum(sum(b.values()) for b in bags.values()) / len(bags)
    doc_avg = sum(sum(d.values()) for d in docs.values()) / len(docs)
    owner = {key: doc for key, doc, _ in chunks}
    scores = {}
    for key, bag in bags.items():
        terms = [t for t in dict.fromkeys(_terms(query)) if bag[t]]
        if not terms:
            continue
        chunk = sum(
            _bm25(
                bag[t],
                sum(bag.values()),
                chunk_avg,
                lucene_idf(len(bags), sum(1 for b in bags.values() if b[t])),
            )
            for t in terms
        )
        doc_bag = docs[owner[key]]
        document = sum(
            _bm25(
                doc_bag[t],
                sum(doc_bag.values()),
                doc_avg,
                lucene_idf(len(docs), sum(1 for d in docs.values() if d[t])),
            )
            for t in dict.fromkeys(_terms(query))
            if doc_bag[t]
        )
        scores[key] = (1 - weight) * chunk + weight * document
    return scores


def _open(directory: Path, weight: float) -> LexicalIndex:
    return LexicalIndex.open(directory, k1=K1, b=B, doc_weight=weight, check_interval_ms=0)


def _indexed(directory: Path, chunks: tuple[tuple[int, str, str], ...], weight: float = 0.5) -> LexicalIndex:
    LexicalIndex.create(directory)
    lexical = _open(directory, weight)
    lexical.apply(add=[_entry(*chunk) for chunk in chunks])
    return lexical


def _documents(lexical: LexicalIndex) -> Documents:
    slot = lexical._slot()
    return slot.documents_of(slot.leaves() or [], lexical._segment_docs, BODY)


def _search(lexical: LexicalIndex, query: str) -> dict[int, float]:
    return dict(lexical.search(query, 10, tenant="t", reader_tokens=("*",)))


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_chunk_scores_blend_their_documents_bm25(tmp_path: Path, weight: float) -> None:
    LexicalIndex.create(tmp_path)
    writer = _open(tmp_path, weight)
    writer.apply(add=[_entry(*chunk) for chunk in CHUNKS[:3]])  # two segments: d1 spans one, d2 the other
    writer.apply(add=[_entry(*chunk) for chunk in CHUNKS[3:]])
    lexical = _open(tmp_path, weight)
    for query in ("backup tapes offsite", "offsite vault", "weekly"):
        found, expected = _search(lexical, query), reference(query, CHUNKS, weight)
        assert found.keys() == expected.keys()  # only chunks that match: the candidates never change
        for key, score in expected.items():
            assert math.isclose(found[key], score, rel_tol=1e-9), (query, key)
    writer.close()
    lexical.close()


def test_the_document_vote_lifts_the_chunk_whose_document_holds_the_rest(tmp_path: Path) -> None:
    lexical = _indexed(tmp_path, CHUNKS)
    alone = _open(tmp_path, 0.0)
    query = "backup offsite"  # d1 has both words, one per chunk; d2's one chunk has "offsite" alone
    chunks_alone = _search(alone, query)
    assert max(chunks_alone, key=chunks_alone.__getitem__) == 3
    blended = _search(lexical, query)
    assert max(blended, key=blended.__getitem__) in (1, 2) and blended[1] > blended[3]
    lexical.close()
    alone.close()


def test_deleted_chunks_leave_their_document(tmp_path: Path) -> None:
    lexical = _indexed(tmp_path, CHUNKS)
    replaced = (2, "d1", "the cartridges are kept in the office")
    lexical.apply(add=[_entry(6, *replaced[1:])], delete=[2])  # d1 re-ingested: chunk 2 deleted, 6 added
    live = (*(c for c in CHUNKS if c[0] != 2), (6, *replaced[1:]))
    documents = _documents(lexical)
    assert documents.documents == 4 and int((documents.of_docnum >= 0).sum()) == len(live)
    fresh = _indexed(tmp_path / "fresh", live)
    ours = _documents(fresh)
    assert sorted(documents.lengths.tolist()) == sorted(ours.lengths.tolist())
    assert math.isclose(documents.average, ours.average)
    lexical.close()
    fresh.close()


def test_document_lengths_are_the_exact_token_counts(tmp_path: Path) -> None:
    words = " ".join(f"word{n}" for n in range(1, 998))  # 997 terms: a length byte would round it
    lexical = _indexed(tmp_path, ((1, "d1", words), (2, "d1", "alpha beta"), (3, "d2", "gamma")))
    slot = lexical._slot()
    documents = _documents(lexical)
    assert sorted(documents.lengths.tolist()) == [1.0, 999.0]
    assert slot.field_lengths("body", slot.leaves() or [])[0] != 997.0  # what Whoosh's length byte keeps
    lexical.close()


def test_cached_document_impacts_follow_deletions(tmp_path: Path) -> None:
    lexical = _indexed(tmp_path, CHUNKS)
    query = "rotate vault"  # chunk 1 has "rotate", its document d1 also "vault" (chunk 2)
    before = _search(lexical, query)
    assert _search(lexical, query) == before and lexical.postings.documents.bytes > 0  # cached, same
    lexical.apply(delete=[2])
    after = _search(lexical, query)
    assert 2 not in after and after[1] < before[1]  # d1 lost "vault": its vote for chunk 1 shrank
    lexical.close()
