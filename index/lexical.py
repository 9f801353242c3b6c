"""The Whoosh (BM25) index of one version: `<version>/whoosh/`.

Schema (LEXICAL_VERSION, recorded in the manifest): key (ID, stored, unique: the entry's 63-bit key,
shared with USearch and the catalog), chunk_id (ID, stored), doc_id (ID), tenant (ID), readers (KEYWORD,
comma-separated reader tokens), body (TEXT: the chunk's indexed text, i.e. its contextual prefix — title and
heading path — then the chunk, exactly what the embedder sees). One text field, no boosts: with the title and
the headings in boosted fields of their own (the first schema), sections whose headings share a question's
words outvoted the untitled answers, BM25 nDCG@10 .12 on debfaq against .38 for the one field
(`docent eval`). No positions are stored: queries are bags of terms, never phrases.

Analysis: Whoosh's StemmingAnalyzer (regex words, lower case, Porter stemmer) with Whoosh's stop words plus
QUESTION_WORDS — the function words of questions ("how", "do", "should", "my" …), which are not in a
classic stop list and in a question collection match every other section. Measured over the same chunks
(BM25 k1 1.2, b .75, nDCG@10): debfaq +.032, perlfaq +.013, vaswani, cranfield and the demo set +.007 each.

Scoring: BM25 (Lucene's idf, log(1 + (N - df + .5) / (df + .5)), instead of Whoosh's log(N / (df + 1)) + 1,
whose +1 floor gives every common question word a full vote), K1 and B from settings (1.2 and .75, chosen
leave-one-collection-out by bench/retrieval_quality.py). Exhaustive: every query term present in the index
is scored over all its postings, no pruning. Whoosh's own search walks a tree of per-posting matchers in
Python (~10 us a posting); `Ranking` instead scores the posting lists as numpy arrays: read a block at a
time from Whoosh's segment files once, then kept in a cache shared by the index's threads
(index.lexical_postings: POSTINGS_CACHE_BYTES, LRU, keyed by immutable segment), so a query costs a few
numpy operations per term. With `doc_weight` > 0 (settings.bm25_doc_weight) a matching chunk's score is
blended with its whole document's BM25 (index.lexical_docs; the vectorised path only).
`vectorised=False` (or an index that is not Whoosh 3 segments) falls back to Whoosh's search with the same
weighting (`LuceneBM25`); tests/test_indexes.py checks both give the same scores, with segments, deletions
and ACLs. An index of the first schema (title, heading, body with field boosts) is scored over its fields as
before, the boosts folded into Whoosh's stored weights.

Access control is inside the retriever, two ways:
- the ACL (tenant AND any of the principal's reader tokens) is a docnum mask combined with numpy from
  per-term masks cached with the searcher (rebuilt when a commit refreshes it), so a forbidden chunk never
  takes one of the top-k slots. An empty mask returns nothing at once (Whoosh would read an empty filter as
  "no filter");
- visibility comes from the catalog: the `allowed(keys)` callback drops hidden keys (entries written ahead
  of a switch, or waiting for collection) and the limit grows 4x until k keys survive or the matches run
  out. The catalog check repeats the ACL too, so the index and the catalog must both agree.

Writing: `apply(add=..., delete=...)` takes one Whoosh writer (its lock and generation) and commits once
per batch. With today's schema the batch becomes one new segment written in bulk with numpy
(index.lexical_segment: the same segment files Whoosh's writer makes, ~10x less CPU), deletions are array
tests against each segment's keys sidecar, and index.lexical_merge merges eight segments of a tier into one
(Whoosh's MERGE_SMALL would rewrite them in Python); `bulk=False`, a first-schema index, or a segment
Whoosh wrote (no sidecar) keep Whoosh's own writer, term deletions and merges. Bulk segments are also read
faster: posting lists decoded in place, hits' keys from the sidecar. Searching reuses one Whoosh searcher
per thread (they are not thread-safe), refreshed at most every `check_interval_ms`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from whoosh import index as whoosh_index
from whoosh import query as Q
from whoosh.analysis import STOP_WORDS, StemmingAnalyzer
from whoosh.codec.whoosh3 import W3Segment
from whoosh.fields import ID, KEYWORD, TEXT, Schema
from whoosh.index import FileIndex, LockError
from whoosh.reading import SegmentReader
from whoosh.scoring import BM25F
from whoosh.searching import Searcher as WhooshSearcher
from whoosh.writing import MERGE_SMALL, SegmentWriter

from index import lexical_merge
from index.keys import AllowedFn, Scored, as_keys
from index.lexical_docs import Documents, SegmentDocsCache, blend
from index.lexical_postings import Postings, PostingsCache, Weigh
from index.lexical_reader import DocMask, Ranking, ReaderSlot
from index.lexical_segment import Batch, BulkWriter, bulk_supported, read_keys
from store.exceptions import IndexCorrupt, IndexError_, IndexNotFound, InputError

LEXICAL_VERSION = "bm25-body-1"
WHOOSH_DIR = "whoosh"
BODY = "body"
TEXT_FIELDS = ("title", "heading", "body")
BULK_FIELDS = {
    "key",
    "chunk_id",
    "doc_id",
    "tenant",
    "readers",
    BODY,
}  # today's schema: `_batch` fills them  # the first schema's text fields; today's has only "body"
QUESTION_WORDS = frozenset(
    """how what why when where which who whom whose do does did doing done can could would should shall
    will may might must i me my mine we our you your is are was were be been being am get gets got there
    here it its this that these those a an the of to in on for with at by from as or and not no if then
    than so any some""".split()  # noqa: SIM905 (a word list reads better as prose)
)
OVERSAMPLE_FACTOR = 4
WRITER_TIMEOUT_S = 60.0
WRITER_LIMIT_MB = 128
SEARCHER_CHECK_MS = 200
BM25_K1 = 1.2
BM25_B = 0.75


def analyzer() -> StemmingAnalyzer:
    return StemmingAnalyzer(stoplist=STOP_WORDS | QUESTION_WORDS)


def schema() -> Schema:
    return Schema(
        key=ID(stored=True, unique=True),
        chunk_id=ID(stored=True),
        doc_id=ID,
        tenant=ID,
        readers=KEYWORD(commas=True),
        body=TEXT(analyzer=analyzer(), phrase=False),
    )


def lucene_idf(doc_count: int, doc_frequency: int) -> float:
    return math.log(1 + (doc_count - doc_frequency + 0.5) / (doc_frequency + 0.5))


class LuceneBM25(BM25F):
    """Whoosh's BM25F with Lucene's idf: what `Ranking` computes, for Whoosh's own search path."""

    def idf(self, searcher: WhooshSearcher, fieldname: str, text: str) -> float:
        return lucene_idf(searcher.doc_count_all(), searcher.doc_frequency(fieldname, text))


class LexicalEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: int
    chunk_id: str
    doc_id: str
    tenant: str
    readers: tuple[str, ...]
    body: str
    title: str = ""  # indexed only by an index of the first schema
    heading: str = ""


MergePolicy = Callable[[SegmentWriter, list[W3Segment]], list[W3Segment]]


def _replace_segments(
    segments: list[W3Segment], _writer: SegmentWriter, _existing: list[W3Segment]
) -> list[W3Segment]:
    """The merge policy of a bulk commit: the segments `LexicalIndex._merged` chose (merged already)."""
    return segments


def _batch(entries: Sequence[LexicalEntry]) -> Batch:
    """Entries as the bulk writer takes them: the current schema's fields, valued as `_fields_of`."""
    keys = [entry.key for entry in entries]
    return Batch(
        keys=keys,
        values={
            "key": [str(key) for key in keys],
            "chunk_id": [entry.chunk_id for entry in entries],
            "doc_id": [entry.doc_id for entry in entries],
            "tenant": [entry.tenant for entry in entries],
            "readers": [",".join(entry.readers) for entry in entries],
            BODY: [entry.body for entry in entries],
        },
    )


class LexicalIndex:
    def __init__(
        self,
        directory: Path,
        *,
        k1: float = BM25_K1,
        b: float = BM25_B,
        doc_weight: float = 0.0,
        check_interval_ms: int = SEARCHER_CHECK_MS,
        vectorised: bool = True,
        bulk: bool = True,
        postings_cache: PostingsCache | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.k1, self.b = k1, b
        # > 0: a chunk's score blends its document's BM25 (index.lexical_docs; the vectorised path only)
        self.doc_weight = doc_weight
        self._segment_docs = SegmentDocsCache()
        self.vectorised = vectorised  # False: Whoosh's own (per-posting) search, same scores
        # bulk=False: Whoosh's writer (a document at a time) instead of index.lexical_segment, same index
        self.check_interval_ms = check_interval_ms
        self.postings = postings_cache or PostingsCache()
        if not whoosh_index.exists_in(str(self.directory)):
            raise IndexNotFound(f"no Whoosh index in {self.directory}")
        try:
            self.ix: FileIndex = whoosh_index.open_dir(str(self.directory))
        except Exception as exc:  # Whoosh raises bare Exceptions for unreadable tables of contents
            raise IndexCorrupt(f"cannot open the Whoosh index in {self.directory}: {exc}") from exc
        self.fields = tuple(field for field in TEXT_FIELDS if field in self.ix.schema.names())
        self.analyzer = self.ix.schema[BODY].analyzer
        bulk = bulk and set(self.ix.schema.names()) == BULK_FIELDS and bulk_supported(self.ix.schema)
        self._bulk = BulkWriter(self.ix.schema) if bulk else None  # None: Whoosh's writer adds
        self._keys_by_segment: dict[str, npt.NDArray[np.int64] | None] = {}
        self._local = threading.local()
        self._slots: list[ReaderSlot] = []
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
        """Delete then add (replacing an entry with the same key) in one writer and ONE commit.

        With the current schema the added entries become one new segment written in bulk
        (index.lexical_segment), committed without merging; otherwise Whoosh's writer adds them."""
        if not add and not delete:
            return
        try:
            writer = self.ix.writer(timeout=WRITER_TIMEOUT_S, limitmb=WRITER_LIMIT_MB)
        except LockError as exc:
            raise IndexError_(f"the Whoosh index in {self.directory} is locked by another writer") from exc
        try:
            self._delete(writer, list(dict.fromkeys([*delete, *(entry.key for entry in add)])))
            if self._bulk is not None and add:
                segment = self._bulk.write(self.ix.storage, self.ix.indexname, _batch(add))
                policy: MergePolicy = partial(_replace_segments, self._merged([*writer.segments, segment]))
            else:
                for entry in add:
                    writer.add_document(**self._fields_of(entry))
                policy = MERGE_SMALL
        except BaseException:
            writer.cancel()
            raise
        writer.commit(mergetype=policy)

    def optimize(self) -> int:
        """Merge every segment into one (index.lexical_merge; deleted documents dropped) and commit it:
        after a bulk load a query term then costs one term lookup and one posting read instead of one per
        segment (100K chunks, 6 segments: cold BM25 CPU p95 5.1-7.2 ms, one segment 3.5-4.0 ms). Only
        when every segment is a bulk one; returns the segments there are afterwards."""
        try:
            writer = self.ix.writer(timeout=WRITER_TIMEOUT_S, limitmb=WRITER_LIMIT_MB)
        except LockError as exc:
            raise IndexError_(f"the Whoosh index in {self.directory} is locked by another writer") from exc
        segments = list(writer.segments)
        if len(segments) < 2 or not all(self._mergeable(segment) for segment in segments):
            writer.cancel()
            return len(segments)
        try:
            merged = lexical_merge.merge(self.ix.storage, self.ix.indexname, self.ix.schema, segments)
        except BaseException:
            writer.cancel()
            raise
        writer.commit(mergetype=partial(_replace_segments, [merged]))
        return 1

    def _delete(self, writer: SegmentWriter, keys: Sequence[int]) -> None:
        """Mark the documents with these keys deleted: an array test per segment when every segment has
        its keys sidecar (bulk-written), else a term lookup per key."""
        if not keys:
            return
        found = [self._segment_keys(segment) for segment in writer.segments]
        if any(segment_keys is None for segment_keys in found):
            with writer.searcher() as existing:  # one searcher: update_document would open one per key
                for key in keys:
                    writer.delete_by_term("key", str(key), searcher=existing)
            return
        wanted = np.asarray(keys, dtype=np.int64)
        for segment, segment_keys in zip(writer.segments, found, strict=True):
            assert segment_keys is not None
            for docnum in np.flatnonzero(np.isin(segment_keys, wanted)).tolist():
                segment.delete_document(docnum)

    def _merged(self, segments: list[W3Segment]) -> list[W3Segment]:
        """The segments after index.lexical_merge's tiered merges (each merge writes a new segment)."""
        while groups := lexical_merge.plan(segments, self._mergeable):
            for group in groups:
                merged = lexical_merge.merge(self.ix.storage, self.ix.indexname, self.ix.schema, group)
                segments = [segment for segment in segments if segment not in group] + [merged]
        return segments

    def _mergeable(self, segment: W3Segment) -> bool:
        return segment.is_compound() and self._segment_keys(segment) is not None

    def _segment_keys(self, segment: W3Segment) -> npt.NDArray[np.int64] | None:
        """A segment's keys by docnum from its sidecar (cached: segments never change), None without."""
        segment_id = segment.segment_id()
        with self._lock:
            if segment_id in self._keys_by_segment:
                return self._keys_by_segment[segment_id]
        keys = read_keys(self.ix.storage, segment)
        with self._lock:
            self._keys_by_segment[segment_id] = keys
        return keys

    def _fields_of(self, entry: LexicalEntry) -> dict[str, str]:
        fields = {
            "key": str(entry.key), "chunk_id": entry.chunk_id, "doc_id": entry.doc_id, "tenant": entry.tenant,
            "readers": ",".join(entry.readers), "body": entry.body,
        }  # fmt: skip
        for extra in ("title", "heading"):
            if extra in self.fields:
                fields[extra] = getattr(entry, extra)
        return fields

    # -- searching ---------------------------------------------------------------------------------

    def _slot(self) -> ReaderSlot:
        slot: ReaderSlot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = ReaderSlot(
                self.ix.searcher(weighting=LuceneBM25(K1=self.k1, B=self.b)), self._segment_keys
            )
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
        """The query's analysed terms that occur in the index (in query order): all of them are scored."""
        slot = self._slot()
        return [t for t in self.analyse(text) if any(slot.doc_frequency(f, t) for f in self.fields)]

    def search(
        self,
        text: str,
        k: int,
        *,
        tenant: str,
        reader_tokens: Sequence[str],
        allowed: AllowedFn | None = None,
    ) -> list[Scored]:
        """The k best BM25 matches this tenant and these reader tokens may see, that `allowed` keeps."""
        if k < 1:
            raise InputError("k must be positive", field="k")
        slot = self._slot()
        terms = self.analyse(text)
        acl = slot.acl(tenant, reader_tokens) if terms else None
        if acl is None:
            return []
        ranking = self._rank(slot, terms, acl) if self.vectorised and slot.readable else None
        query = Q.Or([Q.Term(field, term) for term in terms for field in self.fields])
        limit = k
        while True:
            if ranking is not None:
                hits, exhausted = ranking.top(slot, limit)
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

    def _rank(self, slot: ReaderSlot, terms: Sequence[str], acl: DocMask) -> Ranking | None:
        leaves = slot.leaves()
        if leaves is None:
            return None
        scorer = Ranking(slot.searcher.doc_count_all())
        for field in self.fields:
            lengths, average = slot.field_lengths(field, leaves), slot.searcher.avg_field_length(field) or 1
            weigh = Weigh(lengths, average, self.k1, self.b)
            for term in terms:
                segments = slot.segment_terms(field, term)
                df = sum(found.info.doc_frequency() for found in segments)
                if df == 0:
                    continue
                idf = lucene_idf(len(scorer.scores), df)
                scorer.add(idf, *self.postings.weighed(segments, field, term, weigh))
        if self.doc_weight > 0 and self.fields == (BODY,):
            self._blend_documents(slot, leaves, terms, scorer)
        return scorer.within(acl)

    def _blend_documents(
        self, slot: ReaderSlot, leaves: list[tuple[SegmentReader, int]], terms: Sequence[str], scorer: Ranking
    ) -> None:
        """Each matching chunk's score blended with its document's BM25 (index.lexical_docs)."""
        documents = slot.documents_of(leaves, self._segment_docs, BODY)
        impacts = [self._document_impacts(slot, documents, term) for term in terms]
        scorer.scores = blend(
            scorer.scores, documents, documents.scores(impacts, lucene_idf), self.doc_weight
        )

    def _document_impacts(self, slot: ReaderSlot, documents: Documents, term: str) -> Postings:
        """A term's documents and their BM25 impacts without idf (cached while the documents stay)."""
        key = (documents.fingerprint, term, self.k1, self.b)
        return self.postings.documents.get(
            key, lambda: documents.impacts(*self._term_postings(slot, term), self.k1, self.b)
        )

    def _term_postings(self, slot: ReaderSlot, term: str) -> Postings:
        """A body term's posting list over all segments: index docnums and term frequencies."""
        parts = [(np.zeros(0, np.int32), np.zeros(0, np.float32))]
        for found in slot.segment_terms(BODY, term):
            ids, tf = self.postings.get(found, BODY, term)
            parts.append((ids + np.int32(found.offset), tf))
        return np.concatenate([ids for ids, _ in parts]), np.concatenate([tf for _, tf in parts])

    def keys(self) -> set[int]:
        """Every key in the index (for tests and consistency checks; a full scan)."""
        reader = self._searcher().reader()
        return {int(fields["key"]) for _, fields in reader.iter_docs()}
