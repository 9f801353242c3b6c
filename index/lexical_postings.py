"""Posting lists for the vectorised BM25 scorer (index.lexical): decoded once, cached, weighed with numpy.

    cache = PostingsCache()                                   # shared by an index's searching threads
    docnums, tf = cache.get(found, "body", term)              # one segment's list (segment docnums, tf)
    docnums, impacts = cache.weighed(segments, "body", term, Weigh(lengths, avg, k1, b))  # index docnums

A bulk segment's posting blocks (index.lexical_segment) decode all at once with numpy; a segment Whoosh's
writer made is read a block at a time through its matcher. Both caches are LRU past their byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
from whoosh.codec.whoosh3 import W3LeafMatcher
from whoosh.reading import SegmentReader, TermInfo

from index.lexical_codec import decode_postings

POSTINGS_CACHE_BYTES = 256 << 20  # decoded posting lists kept per index (12 bytes a posting)


class SegmentTerm(NamedTuple):
    leaf: SegmentReader
    offset: int  # the segment's first docnum in the index
    info: TermInfo
    bulk: bool  # written by index.lexical_segment: its posting blocks decode with numpy


Postings = tuple[npt.NDArray[np.int32], npt.NDArray[np.floating]]  # docnums, weights (tf x boost) or impacts


K = TypeVar("K", bound=Hashable)


class _Lru(Generic[K]):
    """Arrays by key, least recently used out past `max_bytes`; shared by every searching thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[K, Postings] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, compute: Callable[[], Postings]) -> Postings:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        value = compute()
        size = value[0].nbytes + value[1].nbytes
        with self._lock:
            if key not in self._entries and size <= self.max_bytes:
                self._entries[key] = value
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (ids, weights) = self._entries.popitem(last=False)
                    self.bytes -= ids.nbytes + weights.nbytes
        return value


class PostingsCache:
    """Decoded posting lists by (segment, field, term), and their BM25 impacts by the statistics they were
    weighed with (the field's average length, k1, b, the segment's offset), each LRU past its byte budget.

    Segments are immutable (a deletion only marks documents), so a posting list never goes stale; impacts
    change only when a commit changes the average length or the segments, and then are weighed again from
    the cached lists. A term's impacts over all its segments are one array: a query costs one gather-add
    per term (an index built in batches has tens of segments).
    """

    def __init__(self, max_bytes: int = POSTINGS_CACHE_BYTES) -> None:
        self.lists: _Lru[tuple[str, str, str]] = _Lru(max_bytes // 3)
        # a term's document-level impacts (index.lexical_docs): by the documents' fingerprint, k1, b
        self.documents: _Lru[tuple[Hashable, str, float, float]] = _Lru(max_bytes // 6)
        self.impacts: _Lru[tuple[tuple[tuple[str, int], ...], str, str, float, float, float]] = _Lru(
            max_bytes - max_bytes // 3 - max_bytes // 6
        )

    @property
    def bytes(self) -> int:
        return self.lists.bytes + self.impacts.bytes + self.documents.bytes

    @property
    def max_bytes(self) -> int:
        return self.lists.max_bytes + self.impacts.max_bytes + self.documents.max_bytes

    def get(self, found: SegmentTerm, field: str, term: str) -> Postings:
        key = (found.leaf.segment().segment_id(), field, term)
        return self.lists.get(key, lambda: _read_postings(found, field))

    def weighed(self, segments: Sequence[SegmentTerm], field: str, term: str, weigh: Weigh) -> Postings:
        """(index docnums, BM25 impact without idf) of the term over all its segments, for `weigh`'s
        statistics: one array pair per term, so a query pays per term, not per term and segment."""
        placed = tuple((found.leaf.segment().segment_id(), found.offset) for found in segments)
        key = (placed, field, term, *weigh.statistics)
        return self.impacts.get(key, lambda: self._weigh_all(segments, field, term, weigh))

    def _weigh_all(self, segments: Sequence[SegmentTerm], field: str, term: str, weigh: Weigh) -> Postings:
        parts = [weigh(*self.get(found, field, term), found.offset) for found in segments]
        return np.concatenate([ids for ids, _ in parts]), np.concatenate([impacts for _, impacts in parts])


class Weigh(NamedTuple):
    """BM25's term-frequency part, tf (k1 + 1) / (tf + k1 (1 - b + b len / avg_len)), over index docnums."""

    lengths: npt.NDArray[np.float64]
    avg_length: float
    k1: float
    b: float

    @property
    def statistics(self) -> tuple[float, float, float]:
        return (self.avg_length, self.k1, self.b)

    def __call__(self, ids: npt.NDArray[np.int32], tf: npt.NDArray[np.float32], offset: int) -> Postings:
        docnums = ids + np.int32(offset)
        norm = self.k1 * ((1 - self.b) + self.b * self.lengths[docnums] / self.avg_length)
        weight = tf.astype(np.float64)  # stored as float32; weighed in float64, as Whoosh does
        return docnums, (weight * (self.k1 + 1)) / (weight + norm)


def _read_postings(found: SegmentTerm, field: str) -> Postings:
    """One segment's posting list of a term: segment docnums and weights (tf; a bulk segment's fields have
    no boost), decoded all at once from a bulk segment, else read a block at a time."""
    terms = found.leaf._terms
    if found.bulk and not found.info.is_inlined():
        offset, length = found.info.extent()
        length = length[0] if isinstance(length, tuple) else length  # W3TermInfo.from_bytes leaves a tuple
        raw = np.frombuffer(terms._postfile.get(offset, length), dtype=np.uint8)
        docs, freqs, _ = decode_postings(raw, np.zeros(1, np.int64), np.array([found.info.doc_frequency()]))
        return docs.astype(np.int32), freqs.astype(np.float32)
    matcher = terms._codec.postings_reader(terms._postfile, found.info, found.leaf.schema[field].format)
    ids: list[npt.NDArray[np.int32]] = []
    weights: list[npt.NDArray[np.float32]] = []
    if isinstance(matcher, W3LeafMatcher) and not matcher._byteids:
        while matcher.is_active():
            if matcher._data is None:
                matcher._read_data()
            block_ids, block_weights = matcher._data[0], matcher._data[1]
            ids.append(np.cumsum(np.asarray(block_ids, dtype=np.int64)).astype(np.int32))  # delta-coded
            if block_weights is None:
                weights.append(np.ones(len(block_ids), dtype=np.float32))
            elif isinstance(block_weights, float):
                weights.append(np.full(len(block_ids), block_weights, dtype=np.float32))
            else:
                weights.append(np.asarray(block_weights, dtype=np.float32))
            matcher._next_block()
    else:  # postings inlined in the term info (a handful): the generic matcher
        inline: list[tuple[int, float]] = []
        while matcher.is_active():
            inline.append((matcher.id(), matcher.weight()))
            matcher.next()
        ids.append(np.asarray([i for i, _ in inline], dtype=np.int32))
        weights.append(np.asarray([w for _, w in inline], dtype=np.float32))
    if not ids:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    return np.concatenate(ids), np.concatenate(weights)
