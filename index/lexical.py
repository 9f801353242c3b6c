"""The Whoosh (BM25F) index of one version: `<version>/whoosh/`.

Schema: key (ID, stored, unique: the entry's 63-bit key, shared with USearch and the catalog), chunk_id
(ID, stored), doc_id (ID), tenant (ID), readers (KEYWORD, comma-separated reader tokens), title (TEXT,
stemming, boosted), heading (TEXT, stemming, boosted), body (TEXT, stemming: context prefix + chunk text).
No positions are stored: queries are bags of terms, never phrases.

Queries. A natural-language question becomes an OR of its analysed terms over title, heading and body,
minus the terms found in more than max(`max_df` x chunks, `prune_floor_df`) chunks (they carry little
BM25 weight; the floor keeps small collections from losing most of their query terms to a pure share
rule), and within a postings budget: rarest first, terms are kept while their postings (summed over the
fields) fit in `postings_budget`, so the work per query is bounded whatever the collection size. The
`MIN_KEPT_TERMS` rarest terms are always kept, so a query never becomes empty.

Scoring. Whoosh's own search walks a tree of per-posting matchers in Python (~10 us a posting: p95 1.15 s
at 100K chunks, DESIGN.md; block-max "quality" skipping made it slower, not faster, on the 100K bench).
`_Ranking` instead reads the kept terms' posting lists a block at a time from Whoosh's segment files and
computes the same BM25F (idf, field-boosted weights, byte-quantised lengths, K1 1.2, B 0.75) with numpy:
scores equal Whoosh's to 1e-13 (tests/test_indexes.py checks it, with segments, deletions and ACLs).
Measured on the bench's 100K-chunk index (20 segments, 373 eval queries, retrieve_k 100, 2 shared cores):
p50 10 ms / p95 21 ms, against Whoosh's p50 109 ms / p95 266 ms for the same terms. `vectorised=False`
(or an index that is not Whoosh 3 segments) falls back to Whoosh's search.

Access control is inside the retriever, two ways:
- the ACL (tenant AND any of the principal's reader tokens) is Whoosh's `filter=`, so a forbidden chunk
  never takes one of the top-k slots. The filter is a docnum mask combined with numpy from per-term masks
  cached with the searcher (rebuilt when a commit refreshes it), so it costs ~nothing per query; building
  it per query costs a pass over the tenant's postings (12 ms at 20K chunks). Alternatives measured and
  rejected on Whoosh 2.7.4: `Require(query, acl)` silently loses matches (RequireMatcher.replace keeps a
  stale matcher), and `And(query, acl)` adds the ACL terms' weights to the scores. An empty mask returns
  nothing at once: Whoosh would read an empty filter as "no filter";
- visibility comes from the catalog: the `allowed(keys)` callback drops hidden keys (entries written ahead
  of a switch, or waiting for collection) and the limit grows 4x until k keys survive or the matches run
  out. The catalog check repeats the ACL too, so the index and the catalog must both agree.

Writing: `apply(add=..., delete=...)` takes one writer and commits once per batch. Searching reuses one
Whoosh searcher per thread (they are not thread-safe), refreshed at most every `check_interval_ms`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from whoosh import index as whoosh_index
from whoosh import query as Q
from whoosh.analysis import StemmingAnalyzer
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, W3LeafMatcher
from whoosh.fields import ID, KEYWORD, TEXT, Schema
from whoosh.idsets import DocIdSet
from whoosh.index import FileIndex, LockError
from whoosh.reading import IndexReader, SegmentReader, TermInfo, TermNotFound
from whoosh.scoring import BM25F
from whoosh.searching import Searcher as WhooshSearcher
from whoosh.util.numeric import byte_to_length

from index.keys import AllowedFn, Scored, as_keys
from store.exceptions import IndexCorrupt, IndexError_, IndexNotFound, InputError

WHOOSH_DIR = "whoosh"
TITLE_BOOST = 2.0
HEADING_BOOST = 1.5
TEXT_FIELDS = ("title", "heading", "body")
MIN_KEPT_TERMS = 2
# Posting lists this short cost little whatever the share of the index, and small collections would lose
# most of their query terms to a pure share rule.
PRUNE_FLOOR_DF = 1000
OVERSAMPLE_FACTOR = 4
WRITER_TIMEOUT_S = 60.0
WRITER_LIMIT_MB = 128
SEARCHER_CHECK_MS = 200
MASK_CACHE_TERMS = 32  # per thread; a mask is one byte per document
TERM_CACHE_SIZE = 4096  # (field, term) -> term info per segment, per thread
# Postings (summed over title, heading and body) a query may read: terms are kept rarest first until the
# next one would exceed it (the MIN_KEPT_TERMS rarest always stay). ~25 ms of scoring on 2 cores.
POSTINGS_BUDGET = 200_000
BM25_K1 = 1.2  # Whoosh's BM25F defaults, which the vectorised scorer reproduces
BM25_B = 0.75
# Whoosh stores a field's length per document as one byte; this decodes all 256 values at once.
LENGTH_OF_BYTE = np.array([byte_to_length(b) for b in range(256)], dtype=np.float64)


def schema() -> Schema:
    stemming = StemmingAnalyzer()
    return Schema(
        key=ID(stored=True, unique=True),
        chunk_id=ID(stored=True),
        doc_id=ID,
        tenant=ID,
        readers=KEYWORD(commas=True),
        title=TEXT(analyzer=stemming, phrase=False, field_boost=TITLE_BOOST),
        heading=TEXT(analyzer=stemming, phrase=False, field_boost=HEADING_BOOST),
        body=TEXT(analyzer=stemming, phrase=False),
    )


class LexicalEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: int
    chunk_id: str
    doc_id: str
    tenant: str
    readers: tuple[str, ...]
    title: str
    heading: str
    body: str


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


class _Slot:
    """One thread's searcher, when it was last checked for a newer generation, and its term masks."""

    def __init__(self, searcher: WhooshSearcher) -> None:
        self.searcher = searcher
        self.checked_at = time.monotonic()
        self.masks: OrderedDict[tuple[str, str], npt.NDArray[np.bool_]] = OrderedDict()
        self.lengths: dict[str, npt.NDArray[np.float64]] = {}
        self.terms: OrderedDict[tuple[str, str], list[_SegmentTerm]] = OrderedDict()
        self.readable = self.leaves() is not None

    def refresh(self) -> None:
        fresh = self.searcher.refresh()
        if fresh is not self.searcher:
            self.searcher = fresh
            self.masks.clear()  # docnums change with the index generation
            self.lengths.clear()
            self.terms.clear()
            self.readable = self.leaves() is not None
        self.checked_at = time.monotonic()

    def segment_terms(self, field: str, term: str) -> list[_SegmentTerm]:
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
                found.append(_SegmentTerm(leaf, offset, info))
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


class LexicalIndex:
    def __init__(
        self,
        directory: Path,
        *,
        max_df: float = 0.05,
        prune_floor_df: int = PRUNE_FLOOR_DF,
        postings_budget: int = POSTINGS_BUDGET,
        check_interval_ms: int = SEARCHER_CHECK_MS,
        vectorised: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_df = max_df
        self.prune_floor_df = prune_floor_df
        self.postings_budget = postings_budget
        self.vectorised = vectorised  # False: Whoosh's own (per-posting) search, same scores
        self.check_interval_ms = check_interval_ms
        if not whoosh_index.exists_in(str(self.directory)):
            raise IndexNotFound(f"no Whoosh index in {self.directory}")
        try:
            self.ix: FileIndex = whoosh_index.open_dir(str(self.directory))
        except Exception as exc:  # Whoosh raises bare Exceptions for unreadable tables of contents
            raise IndexCorrupt(f"cannot open the Whoosh index in {self.directory}: {exc}") from exc
        self.analyzer = self.ix.schema["body"].analyzer
        self._local = threading.local()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    @classmethod
    def create(cls, version_dir: Path) -> None:
        directory = Path(version_dir) / WHOOSH_DIR
        directory.mkdir(parents=True, exist_ok=True)
        whoosh_index.create_in(str(directory), schema())

    @classmethod
    def open(cls, version_dir: Path, **options: float | int) -> LexicalIndex:
        return cls(Path(version_dir) / WHOOSH_DIR, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.searcher.close()

    # -- writing -----------------------------------------------------------------------------------

    def apply(self, *, add: Sequence[LexicalEntry] = (), delete: Sequence[int] = ()) -> None:
        """Delete then add (replacing an entry with the same key) in one writer and ONE commit."""
        if not add and not delete:
            return
        try:
            writer = self.ix.writer(timeout=WRITER_TIMEOUT_S, limitmb=WRITER_LIMIT_MB)
        except LockError as exc:
            raise IndexError_(f"the Whoosh index in {self.directory} is locked by another writer") from exc
        try:
            # One searcher for all the deletions: update_document would open one per document.
            with writer.searcher() as existing:
                for key in dict.fromkeys([*delete, *(entry.key for entry in add)]):
                    writer.delete_by_term("key", str(key), searcher=existing)
            for entry in add:
                writer.add_document(
                    key=str(entry.key), chunk_id=entry.chunk_id, doc_id=entry.doc_id,
                    tenant=entry.tenant, readers=",".join(entry.readers), title=entry.title,
                    heading=entry.heading, body=entry.body,
                )  # fmt: skip
        except BaseException:
            writer.cancel()
            raise
        writer.commit()

    # -- searching ---------------------------------------------------------------------------------

    def _slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = _Slot(self.ix.searcher(weighting=BM25F()))
            self._local.slot = slot
            with self._lock:
                self._slots.append(slot)
        elif (time.monotonic() - slot.checked_at) * 1000 >= self.check_interval_ms:
            slot.refresh()
        return slot

    def _searcher(self) -> WhooshSearcher:
        return self._slot().searcher

    def doc_count(self) -> int:
        return int(self._searcher().doc_count())

    def analyse(self, text: str) -> list[str]:
        """The query's distinct terms as the index analysed them (lower-cased, stop words out, stemmed)."""
        return list(dict.fromkeys(token.text for token in self.analyzer(text)))

    def query_terms(self, text: str) -> list[str]:
        """The terms a query keeps (in query order; empty when no term occurs at all).

        Rarest first (by postings summed over the fields), a term is kept when no field has it in more
        than max(`max_df` x chunks, `prune_floor_df`) chunks and its postings fit in what is left of
        `postings_budget`; the first MIN_KEPT_TERMS terms under the cap are kept whatever their cost, and
        when every term is over the cap the MIN_KEPT_TERMS rarest stay.
        """
        return self._select(text, self._slot())

    def _select(self, text: str, slot: _Slot) -> list[str]:
        frequencies = {
            term: [slot.doc_frequency(field, term) for field in TEXT_FIELDS] for term in self.analyse(text)
        }
        present = sorted(
            (term for term, dfs in frequencies.items() if max(dfs) > 0),
            key=lambda term: (sum(frequencies[term]), term),
        )
        cap = max(self.max_df * slot.searcher.doc_count_all(), self.prune_floor_df)
        kept: set[str] = set()
        used = 0
        for term in present:
            if max(frequencies[term]) > cap:
                continue
            cost = sum(frequencies[term])
            if len(kept) >= MIN_KEPT_TERMS and used + cost > self.postings_budget:
                break  # the rest are at least as costly
            kept.add(term)
            used += cost
        if not kept:
            kept = set(present[:MIN_KEPT_TERMS])
        return [term for term in frequencies if term in kept]

    def search(
        self,
        text: str,
        k: int,
        *,
        tenant: str,
        reader_tokens: Sequence[str],
        allowed: AllowedFn | None = None,
    ) -> list[Scored]:
        """The k best BM25F matches this tenant and these reader tokens may see, that `allowed` keeps."""
        if k < 1:
            raise InputError("k must be positive", field="k")
        slot = self._slot()
        terms = self._select(text, slot)
        acl = slot.acl(tenant, reader_tokens) if terms else None
        if acl is None:
            return []
        ranking = _Ranking.score(slot, terms, acl) if self.vectorised and slot.readable else None
        query = Q.Or([Q.Term(field, term) for term in terms for field in TEXT_FIELDS])
        limit = k
        while True:
            if ranking is not None:
                hits, exhausted = ranking.top(slot.searcher, limit)
            else:
                results = slot.searcher.search(query, limit=limit, filter=acl)
                hits = [(int(hit["key"]), float(hit.score)) for hit in results]
                exhausted = results.scored_length() < limit
            if allowed is not None and hits:
                mask = allowed(as_keys([key for key, _ in hits]))
                hits = [hit for hit, keep in zip(hits, mask, strict=True) if keep]
            if len(hits) >= k or exhausted:
                return hits[:k]
            limit *= OVERSAMPLE_FACTOR

    def keys(self) -> set[int]:
        """Every key in the index (for tests and consistency checks; a full scan)."""
        reader = self._searcher().reader()
        return {int(fields["key"]) for _, fields in reader.iter_docs()}


class _SegmentTerm(NamedTuple):
    leaf: SegmentReader
    offset: int  # the segment's first docnum in the index
    info: TermInfo


def _postings(found: _SegmentTerm, field: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """One segment's posting list of a term: segment docnums and weights, read a block at a time."""
    terms = found.leaf._terms
    matcher = terms._codec.postings_reader(terms._postfile, found.info, found.leaf.schema[field].format)
    ids: list[npt.NDArray[np.int64]] = []
    weights: list[npt.NDArray[np.float64]] = []
    if isinstance(matcher, W3LeafMatcher) and not matcher._byteids:
        while matcher.is_active():
            if matcher._data is None:
                matcher._read_data()
            block_ids, block_weights = matcher._data[0], matcher._data[1]
            ids.append(np.cumsum(np.asarray(block_ids, dtype=np.int64)))  # delta-coded within the block
            if block_weights is None:
                weights.append(np.ones(len(block_ids)))
            elif isinstance(block_weights, float):
                weights.append(np.full(len(block_ids), block_weights))
            else:
                weights.append(np.asarray(block_weights, dtype=np.float64))
            matcher._next_block()
    else:  # postings inlined in the term info (a handful): the generic matcher
        inline_ids: list[int] = []
        inline_weights: list[float] = []
        while matcher.is_active():
            inline_ids.append(matcher.id())
            inline_weights.append(matcher.weight())
            matcher.next()
        ids.append(np.asarray(inline_ids, dtype=np.int64))
        weights.append(np.asarray(inline_weights, dtype=np.float64))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(ids), np.concatenate(weights)


class _Ranking:
    """BM25F scores of every document a query's terms match, computed with numpy from the posting lists.

    The same formula and statistics as Whoosh's BM25F over an Or of Terms (idf = log(N / (df + 1)) + 1,
    the field boost folded into the stored weights, byte-quantised field lengths), without Whoosh's
    per-posting matcher tree, which costs ~10 us a posting (DESIGN.md: p95 1.15 s at 100K chunks).
    Deleted documents are never in an ACL mask (built from live postings), so they never rank.
    """

    def __init__(self, docnums: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> None:
        self.docnums = docnums
        self.scores = scores

    @classmethod
    def score(cls, slot: _Slot, terms: Sequence[str], acl: DocMask) -> _Ranking | None:
        """The matches of an Or of the terms over TEXT_FIELDS within the ACL; None when the segments
        are not Whoosh 3 segments (then Whoosh searches)."""
        leaves = slot.leaves()
        if leaves is None:
            return None
        searcher = slot.searcher
        scores = np.zeros(searcher.doc_count_all())
        matched = np.zeros(len(scores), dtype=bool)
        for term in terms:
            for field in TEXT_FIELDS:
                segments = slot.segment_terms(field, term)
                df = sum(found.info.doc_frequency() for found in segments)
                if df == 0:
                    continue
                idf = math.log(len(scores) / (df + 1)) + 1  # whoosh.scoring.WeightingModel.idf
                avg_length = searcher.avg_field_length(field) or 1
                lengths = slot.field_lengths(field, leaves)
                for found in segments:
                    ids, tf = _postings(found, field)
                    ids += found.offset
                    norm = BM25_K1 * ((1 - BM25_B) + BM25_B * lengths[ids] / avg_length)
                    scores[ids] += idf * (tf * (BM25_K1 + 1)) / (tf + norm)
                    matched[ids] = True
        docnums = np.flatnonzero(matched & acl.mask)
        return cls(docnums, scores[docnums])

    def top(self, searcher: WhooshSearcher, limit: int) -> tuple[list[Scored], bool]:
        """The `limit` best (key, score), best first (ties: lower docnum first, as Whoosh), and whether
        that is every match."""
        docnums, scores = self.docnums, self.scores
        if len(scores) > limit:
            threshold = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            chosen = scores >= threshold
            docnums, scores = docnums[chosen], scores[chosen]
        order = np.lexsort((docnums, -scores))[:limit]
        hits = [(int(searcher.stored_fields(int(docnums[i]))["key"]), float(scores[i])) for i in order]
        return hits, len(self.docnums) <= limit
