"""One thread's view of a Whoosh index and BM25 ranking over it with numpy (used by index.lexical).

`ReaderSlot` holds a thread's searcher (Whoosh searchers are not thread-safe) and what is derived from
its generation: the docnum -> key map (from the bulk segments' keys sidecars, else stored fields), each
term's info per segment, each field's decoded length bytes, the per-term docnum masks the ACL is combined
from, and the document map of the document-level blend. `refresh()` drops all of it when a commit made a
newer generation. `Ranking` accumulates a query's BM25 scores over every docnum and takes the top k.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from whoosh import query as Q
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, W3Segment
from whoosh.idsets import DocIdSet
from whoosh.reading import IndexReader, SegmentReader, TermNotFound
from whoosh.searching import Searcher as WhooshSearcher
from whoosh.util.numeric import byte_to_length

from index.keys import Scored
from index.lexical_docs import Documents, SegmentDocsCache
from index.lexical_postings import SegmentTerm

MASK_CACHE_TERMS = 32  # per thread; a mask is one byte per document
TERM_CACHE_SIZE = 4096  # (field, term) -> term info per segment, per thread
KEY_CACHE_SIZE = 200_000  # docnum -> key, per thread (cleared when full or when the index changes)
# Whoosh stores a field's length per document as one byte; this decodes all 256 values at once.
LENGTH_OF_BYTE = np.array([byte_to_length(b) for b in range(256)], dtype=np.float64)


class DocMask(DocIdSet):
    """A set of Whoosh docnums backed by a numpy mask (Whoosh's filter only asks `in` and `len`)."""

    def __init__(self, mask: npt.NDArray[np.bool_]) -> None:
        self.mask = mask
        self._len = int(mask.sum())

    def __len__(self) -> int:
        return self._len

    def __contains__(self, docnum: object) -> bool:
        return isinstance(docnum, int) and 0 <= docnum < len(self.mask) and bool(self.mask[docnum])

    def __iter__(self) -> Iterator[int]:
        return iter(np.flatnonzero(self.mask).tolist())


SegmentKeys = Callable[[W3Segment], "npt.NDArray[np.int64] | None"]


class ReaderSlot:
    """One thread's searcher, when it was last checked for a newer generation, and its term masks."""

    def __init__(self, searcher: WhooshSearcher, segment_keys: SegmentKeys) -> None:
        self.searcher = searcher
        self.segment_keys = segment_keys
        self.checked_at = time.monotonic()
        self.masks: OrderedDict[tuple[str, str], npt.NDArray[np.bool_]] = OrderedDict()
        self.lengths: dict[str, npt.NDArray[np.float64]] = {}
        self.documents: Documents | None = None  # index.lexical_docs, built on the first blended query
        self.terms: OrderedDict[tuple[str, str], list[SegmentTerm]] = OrderedDict()
        self.keys: dict[int, int] = {}  # docnum -> key (a stored-field read is ~25 us)
        self.key_array: npt.NDArray[np.int64] | None = None  # every docnum's key, from the sidecars
        self.readable = self.leaves() is not None
        self._load_keys()

    def _load_keys(self) -> None:
        """Every docnum's key when every segment has its keys sidecar (bulk-written), else None."""
        parts = [self.segment_keys(leaf.segment()) for leaf, _ in self.searcher.reader().leaf_readers()]
        found = [part for part in parts if part is not None]
        self.key_array = None
        if len(found) == len(parts):
            self.key_array = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def key_of(self, docnum: int) -> int:
        key = self.keys.get(docnum)
        if key is None:
            if len(self.keys) >= KEY_CACHE_SIZE:
                self.keys.clear()
            key = self.keys[docnum] = int(self.searcher.stored_fields(docnum)["key"])
        return key

    def keys_of(self, docnums: npt.NDArray[np.int64]) -> list[int]:
        if self.key_array is not None:
            return self.key_array[docnums].tolist()  # type: ignore[no-any-return]
        return [self.key_of(int(docnum)) for docnum in docnums]

    def refresh(self) -> None:
        fresh = self.searcher.refresh()
        if fresh is not self.searcher:
            self.searcher = fresh
            self.masks.clear()  # docnums change with the index generation
            self.lengths.clear()
            self.documents = None
            self.terms.clear()
            self.keys.clear()
            self.readable = self.leaves() is not None
            self._load_keys()
        self.checked_at = time.monotonic()

    def segment_terms(self, field: str, term: str) -> list[SegmentTerm]:
        """The segments holding (field, term), with its term info in each (cached: one hash lookup per
        segment is ~4 us, and an index written in batches has tens of segments)."""
        key = (field, term)
        found = self.terms.get(key)
        if found is None:
            found = []
            for leaf, offset in self.leaves() or ():
                try:
                    info = leaf._terms.term_info(field, leaf._text_to_bytes(field, term))
                except TermNotFound:
                    continue
                found.append(SegmentTerm(leaf, offset, info, self.segment_keys(leaf.segment()) is not None))
            self.terms[key] = found
            while len(self.terms) > TERM_CACHE_SIZE:
                self.terms.popitem(last=False)
        else:
            self.terms.move_to_end(key)
        return found

    def doc_frequency(self, field: str, term: str) -> int:
        """Documents (deleted ones too, as Whoosh's idf counts them) whose `field` has `term`."""
        if not self.readable:
            return int(self.searcher.doc_frequency(field, term))
        return sum(found.info.doc_frequency() for found in self.segment_terms(field, term))

    def leaves(self) -> list[tuple[SegmentReader, int]] | None:
        """The segments (reader, first docnum) when all are Whoosh 3 segments the fast scorer can read."""
        reader: IndexReader = self.searcher.reader()
        leaves = reader.leaf_readers()
        if all(isinstance(leaf, SegmentReader) and hasattr(leaf, "_perdoc") for leaf, _ in leaves):
            return leaves
        return None

    def field_lengths(self, field: str, leaves: list[tuple[SegmentReader, int]]) -> npt.NDArray[np.float64]:
        """Every document's length of `field` as Whoosh scores it (decoded length bytes, by docnum)."""
        lengths = self.lengths.get(field)
        if lengths is None:
            codes = np.zeros(self.searcher.doc_count_all(), dtype=np.uint8)
            for leaf, offset in leaves:
                column = leaf._perdoc._cached_reader(f"_{field}_len", LENGTHS_COLUMN)
                if column is None:
                    continue
                count = min(column._count, leaf.doc_count_all())
                raw = column._dbfile.get(column._basepos, count)
                codes[offset : offset + count] = np.frombuffer(raw, dtype=np.uint8)
            lengths = LENGTH_OF_BYTE[codes]
            lengths[codes == 0] = 1.0  # Whoosh's default for a document without a stored length
            self.lengths[field] = lengths
        return lengths

    def documents_of(
        self, leaves: list[tuple[SegmentReader, int]], cache: SegmentDocsCache, field: str
    ) -> Documents:
        """Which document each docnum belongs to, and the documents' lengths of `field`
        (index.lexical_docs)."""
        if self.documents is None:
            self.documents = Documents.of(leaves, self.field_lengths(field, leaves), cache)
            cache.keep({leaf.segment().segment_id() for leaf, _ in leaves})
        return self.documents

    def term_mask(self, field: str, value: str) -> npt.NDArray[np.bool_]:
        key = (field, value)
        mask = self.masks.get(key)
        if mask is None:
            mask = np.zeros(self.searcher.doc_count_all(), dtype=bool)
            docnums = np.fromiter(self.searcher.docs_for_query(Q.Term(field, value)), dtype=np.int64)
            mask[docnums] = True
            self.masks[key] = mask
            while len(self.masks) > MASK_CACHE_TERMS:
                self.masks.popitem(last=False)
        else:
            self.masks.move_to_end(key)
        return mask

    def acl(self, tenant: str, reader_tokens: Sequence[str]) -> DocMask | None:
        """Docnums of this tenant readable through any of the tokens; None when there are none."""
        readable = np.zeros(self.searcher.doc_count_all(), dtype=bool)
        for token in reader_tokens:
            readable |= self.term_mask("readers", token)
        readable &= self.term_mask("tenant", tenant)
        return DocMask(readable) if readable.any() else None


class Ranking:
    """BM25 scores of every document a query's terms match, computed with numpy from the posting lists.

    The same formula and statistics as Whoosh's BM25F with `LuceneBM25`'s idf (the field boost folded
    into the stored weights, byte-quantised field lengths), without Whoosh's per-posting matcher tree.
    Deleted documents are never in an ACL mask (built from live postings), so they never rank.
    """

    def __init__(self, doc_count_all: int) -> None:
        self.scores = np.zeros(doc_count_all)
        self.docnums = np.zeros(0, dtype=np.int64)
        self.found = np.zeros(0)

    def add(self, idf: float, docnums: npt.NDArray[np.int32], impacts: npt.NDArray[np.floating]) -> None:
        self.scores[docnums] += idf * impacts  # a term occurs once per document: no repeated docnums

    def within(self, acl: DocMask) -> Ranking:
        self.docnums = np.flatnonzero((self.scores > 0) & acl.mask)  # a match always scores above 0
        self.found = self.scores[self.docnums]
        return self

    def top(self, slot: ReaderSlot, limit: int) -> tuple[list[Scored], bool]:
        """The `limit` best (key, score), best first (ties: lower docnum first, as Whoosh), and whether
        that is every match."""
        docnums, scores = self.docnums, self.found
        if len(scores) > limit:
            threshold = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            chosen = scores >= threshold
            docnums, scores = docnums[chosen], scores[chosen]
        order = np.lexsort((docnums, -scores))[:limit]
        hits = list(zip(slot.keys_of(docnums[order]), scores[order].tolist(), strict=True))
        return hits, len(self.docnums) <= limit
