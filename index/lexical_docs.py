"""Document-level BM25 from chunk postings: each chunk's score blended with its whole document's.

    documents = Documents.of(leaves, lengths)            # per searcher: docnum -> document, their lengths
    scores = documents.scores(postings, idf_of, k1, b)   # BM25 of every document over the query's terms
    blended = blend(chunk_scores, documents, scores, weight)

A chunk is scored alone (index.lexical); a document's answer is often spread over its chunks, and a chunk's
length normalisation punishes the one long chunk that holds it. The document score treats the document
as one bag of words: a term's frequency is the sum over the document's live chunks, the document's length
the sum of their lengths, N and df count documents. A matching chunk then scores
(1 - weight) x its own BM25 + weight x its document's BM25 (weight: settings.bm25_doc_weight); a chunk
that matches none of the terms still scores 0, so the candidates are the same and the scoring stays
exhaustive (no posting skipped, nothing approximated).

Measured (bench/retrieval_quality.py, BM25 k1 1.2, b .75, 256-token chunks, nDCG@10, weight 0 -> .5):
vaswani .443 -> .443 (its documents are one chunk), cranfield .295 -> .298, perlfaq .469 -> .483, debfaq
.374 -> .388, the demo set .691 -> .724; ranking documents by their document score alone (weight 1) lost
on the demo set (.673) and perlfaq.

Which document a chunk belongs to comes from the `doc_id` field's postings, read once per segment
(segments are immutable) and cached by segment id; deleted chunks count for nothing. A term's document
impacts are cached in the index's PostingsCache (index.lexical_postings) under the documents' fingerprint
(segments, offsets, deletions), so a query pays one gather-add per term as the chunk scores do
(`python -m bench.lexical_docs`, interleaved: BM25 top 100 p50 0.32 -> 0.45 ms on vaswani's 11K chunks,
0.28 -> 0.38 ms on perlfaq's 6K; p95 within the shared machine's noise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from whoosh.reading import SegmentReader

from index.lexical_segment import read_lengths

DOC_FIELD = "doc_id"
BODY = "body"
DOC_WEIGHT = 0.5  # settings.bm25_doc_weight's default (leave-one-collection-out, bench/retrieval_quality.py)

IdfOf = Callable[[int, int], float]  # (document count, document frequency) -> idf


class SegmentDocs(NamedTuple):
    """One segment's document ids, per segment docnum the index of its id (-1: none), and its chunks'
    exact body lengths (the bulk writer's sidecar; None for a segment Whoosh's writer wrote)."""

    ids: list[str]
    of_docnum: npt.NDArray[np.int32]
    lengths: npt.NDArray[np.float64] | None


def segment_docs(leaf: SegmentReader) -> SegmentDocs:
    """Read the segment's `doc_id` postings (which document each docnum belongs to) and length sidecar."""
    of_docnum = np.full(leaf.doc_count_all(), -1, dtype=np.int32)
    ids: list[str] = []
    if DOC_FIELD in leaf.schema.names():
        for term in leaf.lexicon(DOC_FIELD):
            docnums = np.fromiter(leaf.postings(DOC_FIELD, term).all_ids(), dtype=np.int64)
            of_docnum[docnums] = len(ids)
            ids.append(term.decode() if isinstance(term, bytes) else str(term))
    exact = read_lengths(leaf._storage, leaf.segment(), BODY)
    return SegmentDocs(ids, of_docnum, None if exact is None else exact.astype(np.float64))


class SegmentDocsCache:
    """SegmentDocs by segment id, shared by an index's searching threads (segments never change)."""

    def __init__(self) -> None:
        self._found: dict[str, SegmentDocs] = {}
        self._lock = threading.Lock()

    def get(self, leaf: SegmentReader) -> SegmentDocs:
        segment_id = leaf.segment().segment_id()
        with self._lock:
            found = self._found.get(segment_id)
        if found is None:
            found = segment_docs(leaf)
            with self._lock:
                self._found[segment_id] = found
        return found

    def keep(self, segment_ids: set[str]) -> None:
        """Forget segments no longer in the index (merged away)."""
        with self._lock:
            for gone in set(self._found) - segment_ids:
                del self._found[gone]


class Documents(NamedTuple):
    """Per index docnum its document (-1: deleted or none), and each document's length and the average."""

    of_docnum: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.float64]
    average: float
    alive: int  # documents with a live chunk (BM25's N)
    fingerprint: tuple[tuple[str, int, int], ...]  # (segment id, first docnum, deletions): a cache key

    @property
    def documents(self) -> int:
        return len(self.lengths)

    @classmethod
    def of(
        cls,
        leaves: Sequence[tuple[SegmentReader, int]],
        chunk_lengths: npt.NDArray[np.float64],
        cache: SegmentDocsCache,
    ) -> Documents:
        """The documents of the live chunks in these segments (reader, first docnum); a document's length
        sums its chunks' exact lengths where the segment has them, else `chunk_lengths` (length bytes)."""
        of_docnum = np.full(len(chunk_lengths), -1, dtype=np.int64)
        lengths_of = chunk_lengths.copy()
        numbers: dict[str, int] = {}
        fingerprint = []
        for leaf, offset in leaves:
            found = cache.get(leaf)
            ordinals = np.array([numbers.setdefault(i, len(numbers)) for i in found.ids] or [0], np.int64)
            local = found.of_docnum.astype(np.int64)
            placed = np.where(local >= 0, ordinals[np.maximum(local, 0)], -1)
            segment = leaf.segment()
            deleted = np.fromiter(segment.deleted_docs() if segment.has_deletions() else (), dtype=np.int64)
            placed[deleted] = -1
            fingerprint.append((segment.segment_id(), offset, len(deleted)))
            of_docnum[offset : offset + len(placed)] = placed
            if found.lengths is not None:
                lengths_of[offset : offset + len(placed)] = found.lengths
        live = of_docnum >= 0
        lengths = np.bincount(of_docnum[live], weights=lengths_of[live], minlength=len(numbers))
        present = lengths[lengths > 0]
        average = float(present.mean()) if len(present) else 1.0
        alive = int(np.count_nonzero(lengths))
        return cls(of_docnum, lengths.astype(np.float64), average, alive, tuple(fingerprint))

    def impacts(
        self, docnums: npt.NDArray[np.int32], tf: npt.NDArray[np.floating], k1: float, b: float
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.floating]]:
        """A term's documents and BM25 term-frequency part (without idf) from its chunk postings (index
        docnums, tf): frequencies summed over each document's live chunks, its length their sum."""
        owners = self.of_docnum[docnums]
        live = owners >= 0
        frequency = np.bincount(owners[live], weights=tf[live].astype(np.float64), minlength=self.documents)
        found = np.flatnonzero(frequency)
        f = frequency[found]
        norm = k1 * ((1 - b) + b * self.lengths[found] / self.average)
        return found.astype(np.int32), f * (k1 + 1) / (f + norm)

    def scores(
        self, impacts: Sequence[tuple[npt.NDArray[np.int32], npt.NDArray[np.floating]]], idf_of: IdfOf
    ) -> npt.NDArray[np.float64]:
        """Every document's BM25 over the terms whose `impacts` are given (idf from the document counts)."""
        total = np.zeros(self.documents)
        for found, impact in impacts:
            if len(found):
                total[found] += idf_of(self.alive, len(found)) * impact
        return total


def blend(
    chunk_scores: npt.NDArray[np.float64],
    documents: Documents,
    document_scores: npt.NDArray[np.float64],
    weight: float,
) -> npt.NDArray[np.float64]:
    """(1 - weight) x chunk + weight x its document, for chunks that match (the others stay 0)."""
    matched = np.flatnonzero((chunk_scores > 0) & (documents.of_docnum >= 0))
    blended = chunk_scores * (1 - weight)
    blended[matched] += weight * document_scores[documents.of_docnum[matched]]
    return blended
