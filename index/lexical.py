"""The Whoosh (BM25F) index of one version: `<version>/whoosh/`.

Schema: key (ID, stored, unique: the entry's 63-bit key, shared with USearch and the catalog), chunk_id
(ID, stored), doc_id (ID), tenant (ID), readers (KEYWORD, comma-separated reader tokens), title (TEXT,
stemming, boosted), heading (TEXT, stemming, boosted), body (TEXT, stemming: context prefix + chunk text).
No positions are stored: queries are bags of terms, never phrases.

Queries. A natural-language question becomes an OR of its analysed terms over title, heading and body,
minus the terms found in more than max(`max_df` x chunks, `prune_floor_df`) chunks: such terms carry
little BM25 weight but their long posting lists dominate Whoosh's latency (DESIGN.md measured p95
1.15 s -> 84 ms at 100K chunks). The floor keeps small collections from losing most of their query terms
to a pure share rule; posting lists that short are cheap. The `MIN_KEPT_TERMS` rarest terms are always
kept, so a query never becomes empty.

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

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from whoosh import index as whoosh_index
from whoosh import query as Q
from whoosh.analysis import StemmingAnalyzer
from whoosh.fields import ID, KEYWORD, TEXT, Schema
from whoosh.idsets import DocIdSet
from whoosh.index import FileIndex, LockError
from whoosh.scoring import BM25F
from whoosh.searching import Searcher as WhooshSearcher

from index.vectors import AllowedFn, Scored, as_keys
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

    def refresh(self) -> None:
        fresh = self.searcher.refresh()
        if fresh is not self.searcher:
            self.searcher = fresh
            self.masks.clear()  # docnums change with the index generation
        self.checked_at = time.monotonic()

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
        check_interval_ms: int = SEARCHER_CHECK_MS,
    ) -> None:
        self.directory = Path(directory)
        self.max_df = max_df
        self.prune_floor_df = prune_floor_df
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

    def query_terms(self, text: str, searcher: WhooshSearcher | None = None) -> list[str]:
        """The terms a query keeps after document-frequency pruning (empty when no term occurs at all)."""
        searcher = searcher or self._searcher()
        frequencies = {
            term: max(searcher.doc_frequency(field, term) for field in TEXT_FIELDS)
            for term in self.analyse(text)
        }
        present = [term for term, df in frequencies.items() if df > 0]
        cap = max(self.max_df * searcher.doc_count_all(), self.prune_floor_df)
        kept = [term for term in present if frequencies[term] <= cap]
        return kept or sorted(present, key=lambda term: frequencies[term])[:MIN_KEPT_TERMS]

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
        terms = self.query_terms(text, slot.searcher)
        acl = slot.acl(tenant, reader_tokens) if terms else None
        if acl is None:
            return []
        query = Q.Or([Q.Term(field, term) for term in terms for field in TEXT_FIELDS])
        limit = k
        while True:
            results = slot.searcher.search(query, limit=limit, filter=acl)
            hits = [(int(hit["key"]), float(hit.score)) for hit in results]
            if allowed is not None and hits:
                mask = allowed(as_keys([key for key, _ in hits]))
                hits = [hit for hit, keep in zip(hits, mask, strict=True) if keep]
            if len(hits) >= k or results.scored_length() < limit:
                return hits[:k]
            limit *= OVERSAMPLE_FACTOR

    def keys(self) -> set[int]:
        """Every key in the index (for tests and consistency checks; a full scan)."""
        reader = self._searcher().reader()
        return {int(fields["key"]) for _, fields in reader.iter_docs()}
