"""A bulk writer of Whoosh 3 segments: a batch of lexical entries analysed once and written with numpy.

Whoosh's own writer spends ~1 ms a chunk in Python (the analyser chain per token, a posting pool sorted
and merged item by item, a length-column read per posting, a pickle and a zlib call per posting block),
~1,000 chunks/s. `write_segment` produces the same segment files from arrays:

- analysis: the index's analyser is a RegexTokenizer, LowercaseFilter, StopFilter and StemFilter chain
  (`FastAnalysis` checks it and takes its pattern, stop list, sizes and stemmer); each text is split by the
  same regular expression, and each distinct surface token is lower-cased, stopped and stemmed once (a
  dict from surface token to term number), so a token costs a dict lookup;
- postings: (term, docnum, frequency) triples sorted with numpy; posting blocks of at most BLOCK_LIMIT
  postings, as Whoosh's W3PostingsWriter cuts them, each written as the block-length int, the pickled
  block info (count, last id, max weight, compression 0, min and max length bytes) and the pickled
  (delta-coded ids, weights, packed frequencies) tuple: records of a fixed layout per (count, weights,
  values, first block) shape, filled column-wise and scattered to their offsets. The pickles use a fixed
  width for every number (BININT, BINFLOAT) so a layout has one size; Whoosh reads them with `loads`
  like its own. Blocks are not compressed (compression 0 is recorded per block; reading skips zlib);
- the term index (`.trm`): Whoosh's OrderedHashWriter layout (CDB-style: ordered key/value records, 256
  hash tables of (hash, position), their directory, the pickled extras with the field map, the position
  index) with hash type 1 (crc32, one of the three the reader knows), the tables placed with numpy;
- per-document columns: the stored fields through Whoosh's own column writer (STORED_COLUMN), the
  length bytes of each scorable field (LENGTHS_COLUMN: `length_to_byte` of the token count);
- the segment's sidecar `<segment>.keys.npy`: each docnum's entry key, so deletions and a hit's key are
  array lookups instead of a term lookup or a stored-field read per document (Whoosh ignores the file and
  deletes it with the segment).

The segment is one compound file (`.seg`, laid out as Whoosh assembles it, memory-mapped by its readers);
the caller adds it to the table of contents through a Whoosh writer's commit (its lock, generation and
file cleaning), see index.lexical.
tests/test_lexical_segment.py checks term by term and posting by posting that a bulk segment reads back
as Whoosh's writer's, and that both score alike through Whoosh's search and ours.
"""

from __future__ import annotations

import io
import pickle
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.analysis import (
    CompositeAnalyzer,
    IDTokenizer,
    LowercaseFilter,
    RegexTokenizer,
    StemFilter,
    StopFilter,
)
from whoosh.codec.whoosh3 import W3Codec, W3Segment
from whoosh.fields import Schema
from whoosh.filedb.filestore import Storage
from whoosh.filedb.structfile import StructFile
from whoosh.formats import Existence, Frequency
from whoosh.util.numeric import _length_byte_cache

BLOCK_LIMIT = 128  # postings a block, W3Codec's default blocklimit
COMPOUND_HEADER_BYTES = 12  # CompoundStorage: the directory's position (long) and length (int)
HASH_TYPE = 1  # crc32 in whoosh.filedb.filetables._hash_functions
HASH_MAGIC = b"HSH3"
BLOCK_MAGIC = b"W3Bl"
KEYS_EXT = ".keys.npy"
LENGTHS_EXT = ".lengths.npy"  # after the field's name
LENGTH_LIMIT = 106374  # whoosh.util.numeric.length_to_byte: this length and above is byte 255
SURFACE_CACHE_SIZE = 1 << 20  # surface tokens remembered with their term
SENTINEL = "docentendoftext"  # + a number, so that no text contains it
ANALYSIS_CHUNK_DOCS = 2048  # texts tokenised at once (bounds the token strings held)
SCATTER_CHUNK_BYTES = 16 << 20  # bytes of destination indices built at once when placing records
VAR_BYTES_OFFSETS_ROWS = 2**15  # VarBytesColumn's write_offsets_cutoff
POINTER_CHASE_TERMS = 64  # fewer terms than this with blocks left: their blocks are found one by one
# Whoosh's default word pattern has a capturing group (findall would return it). The same words: its group's
# optional dot can only be empty after a maximal run of word characters, so each repeat is a dot and a run.
WHOOSH_WORDS = r"\w+(\.?\w+)*"
WORDS = r"\w+(?:\.\w+)*"

_JINT = np.dtype([("op", "u1"), ("v", "<i4")])  # pickle BININT: 'J' + int32 little-endian
_GFLOAT = np.dtype([("op", "u1"), ("v", ">f8")])  # pickle BINFLOAT: 'G' + float64 big-endian
_TERM_INFO = np.dtype(
    [
        ("flags", "u1"),
        ("weight", ">f4"),
        ("df", ">u4"),
        ("minlength", "u1"),
        ("maxlength", "u1"),
        ("maxweight", ">f4"),
        ("minid", ">u4"),
        ("maxid", ">u4"),
        ("offset", ">i8"),
        ("length", ">i4"),
    ]
)  # fmt: skip  (W3TermInfo._struct "!BfIBBfII", then pack_long(offset) + pack_int(length))
_RECORD_HEAD = np.dtype([("keylen", ">i4"), ("vallen", ">i4")])  # filetables._lengths "!ii"
_POINTER = np.dtype([("hash", ">u4"), ("pos", ">i8")])  # filetables._pointer "!Iq"
_DIRECTORY = np.dtype([("pos", ">i8"), ("slots", ">i4")])  # filetables._dir_entry "!qi"
_HASH_HEADER_BYTES = 13  # magic, hash type byte, two unused ints


def length_bytes(lengths: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """whoosh.util.numeric.length_to_byte over an array."""
    cache = np.frombuffer(_length_byte_cache, dtype=np.int32)
    codes = np.searchsorted(cache, lengths, side="left")
    return np.where(lengths >= LENGTH_LIMIT, 255, codes).astype(np.uint8)


# -- analysis ------------------------------------------------------------------------------------------


STOPPED = -1  # the term number of a stop word (or a token outside the stop filter's sizes)
ENDED = -2  # the term number of the sentinel that ends each text when texts are tokenised together


class FastAnalysis(dict[str, int]):
    """Whoosh's StemmingAnalyzer chain with each distinct surface token analysed once: the mapping from
    surface token to term number (into `terms`; STOPPED for a stop word), kept across batches (up to
    SURFACE_CACHE_SIZE tokens). `terms_of(text)` equals `[t.text for t in analyzer(text)]`."""

    def __init__(self, analyzer: CompositeAnalyzer) -> None:
        super().__init__()
        tokenizer, _lower, stop, stem = analyzer.items
        self.pattern = re.compile(WORDS, tokenizer.expression.flags)
        self.stops = stop.stops
        self.min, self.max = stop.min, stop.max
        self.ignore = stem.ignore
        self.stem: Callable[[str], str] = stem.stemfn
        self.terms: list[str] = []
        self.numbers: dict[str, int] = {}  # term -> its number in `terms`

    @staticmethod
    def supports(analyzer: object) -> bool:
        if not isinstance(analyzer, CompositeAnalyzer) or len(analyzer.items) != 4:
            return False
        tokenizer, lower, stop, stem = analyzer.items
        return (
            type(tokenizer) is RegexTokenizer
            and not tokenizer.gaps
            and tokenizer.expression.pattern == WHOOSH_WORDS
            and type(lower) is LowercaseFilter
            and type(stop) is StopFilter
            and type(stem) is StemFilter
            and not stem.lang
        )

    def __missing__(self, token: str) -> int:
        term = self.term_of(token)
        number = STOPPED
        if term is not None:
            number = self.numbers.setdefault(term, len(self.terms))
            if number == len(self.terms):
                self.terms.append(term)
        self[token] = number
        return number

    def term_of(self, token: str) -> str | None:
        """LowercaseFilter, StopFilter, StemFilter on one token."""
        lowered = token.lower()
        size = len(lowered)
        if size < self.min or (self.max is not None and size > self.max) or lowered in self.stops:
            return None
        return lowered if lowered in self.ignore else self.stem(lowered)

    def terms_of(self, text: str) -> list[str]:
        return [self.terms[n] for n in map(self.__getitem__, self.tokens(text)) if n >= 0]

    def tokens(self, text: str) -> list[str]:
        return self.pattern.findall(text)

    def start_batch(self, sentinel: str) -> None:
        if len(self) >= SURFACE_CACHE_SIZE:
            self.clear()
            self.terms.clear()
            self.numbers.clear()
        self[sentinel] = ENDED

    def end_batch(self, sentinel: str) -> None:
        self.pop(sentinel, None)


@dataclass
class FieldPostings:
    """One field's postings sorted by (term bytes, docnum): `starts[t]:starts[t + 1]` are term t's."""

    name: str
    terms: list[bytes]
    starts: npt.NDArray[np.int64]
    docs: npt.NDArray[np.int64]
    freqs: npt.NDArray[np.int64] | None  # None: an Existence field (weight 1.0, no value bytes)
    length_codes: npt.NDArray[np.uint8] | None  # per document, for a scorable field


def _ranked(vocabulary: Sequence[str]) -> tuple[list[bytes], npt.NDArray[np.int64]]:
    """The vocabulary's UTF-8 terms in byte order, and each term number's rank in it."""
    encoded = [term.encode("utf-8") for term in vocabulary]
    order = sorted(range(len(encoded)), key=encoded.__getitem__)
    rank = np.empty(len(encoded), dtype=np.int64)
    rank[order] = np.arange(len(encoded))
    return [encoded[i] for i in order], rank


def _postings(
    name: str, vocabulary: Sequence[str], term_ids: npt.NDArray[np.int64], docs: npt.NDArray[np.int64],
    doc_count: int, *, frequencies: bool, length_codes: npt.NDArray[np.uint8] | None = None,
) -> FieldPostings:  # fmt: skip
    """(term, doc) occurrences (repeats allowed) into sorted postings with their frequencies."""
    terms, rank = _ranked(vocabulary)
    pairs, freqs = np.unique(rank[term_ids] * doc_count + docs, return_counts=True)
    term_of = pairs // doc_count
    starts = np.searchsorted(term_of, np.arange(len(terms) + 1), side="left").astype(np.int64)
    return FieldPostings(
        name=name, terms=terms, starts=starts, docs=pairs % doc_count,
        freqs=freqs.astype(np.int64) if frequencies else None, length_codes=length_codes,
    )  # fmt: skip


def _sentinel(texts: Sequence[str]) -> str:
    """A word that occurs in none of the texts (it ends each text when they are tokenised together)."""
    joined = "\n".join(texts)
    n = 0
    while f"{SENTINEL}{n}" in joined:
        n += 1
    return f"{SENTINEL}{n}"


def text_postings(
    name: str, texts: Sequence[str], analysis: FastAnalysis
) -> tuple[FieldPostings, npt.NDArray[np.int64]]:
    """A scorable Frequency field's postings and each document's length (tokens after stop words).

    The texts are tokenised together (one regular-expression call per ANALYSIS_CHUNK_DOCS texts, 2-3x
    faster than a call per text), each followed by a sentinel word on a line of its own: no token spans
    a line break, so each text's tokens are exactly its own, and the sentinels mark where texts end."""
    sentinel = _sentinel(texts)
    separator = f"\n{sentinel}\n"
    ids: list[npt.NDArray[np.int64]] = []
    analysis.start_batch(sentinel)
    try:
        for lo in range(0, len(texts), ANALYSIS_CHUNK_DOCS):
            tokens = analysis.tokens(separator.join(texts[lo : lo + ANALYSIS_CHUNK_DOCS]) + separator)
            ids.append(np.fromiter(map(analysis.__getitem__, tokens), dtype=np.int64, count=len(tokens)))
    finally:
        analysis.end_batch(sentinel)
    numbers = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    ends = numbers == ENDED
    docs = np.cumsum(ends) - ends  # texts ended before each token
    kept = numbers >= 0
    used, term_ids = np.unique(numbers[kept], return_inverse=True)
    docs = docs[kept]
    lengths = np.bincount(docs, minlength=len(texts)).astype(np.int64)
    codes = length_codes(lengths)
    vocabulary = [analysis.terms[n] for n in used.tolist()]
    postings = _postings(name, vocabulary, term_ids, docs, len(texts), frequencies=True, length_codes=codes)
    return postings, lengths


def id_postings(name: str, values: Sequence[str]) -> FieldPostings:
    """An ID field (the whole value is the one term, Existence format)."""
    vocabulary = {value: n for n, value in enumerate(dict.fromkeys(values))}
    ids = np.fromiter(map(vocabulary.__getitem__, values), dtype=np.int64, count=len(values))
    docs = np.arange(len(values), dtype=np.int64)
    return _postings(name, list(vocabulary), ids, docs, len(values), frequencies=False)


def analysed_postings(
    name: str, values: Sequence[str], analyse: Callable[[str], Iterable[str]]
) -> FieldPostings:
    """A non-scorable Frequency field (KEYWORD) through its own analyser, once per distinct value."""
    vocabulary: dict[str, int] = {}
    per_value: dict[str, list[int]] = {}
    term_ids: list[int] = []
    docs: list[int] = []
    for n, value in enumerate(values):
        found = per_value.get(value)
        if found is None:
            found = per_value[value] = [vocabulary.setdefault(t, len(vocabulary)) for t in analyse(value)]
        term_ids.extend(found)
        docs.extend([n] * len(found))
    return _postings(
        name, list(vocabulary), np.asarray(term_ids, dtype=np.int64), np.asarray(docs, dtype=np.int64),
        len(values), frequencies=True,
    )  # fmt: skip


# -- posting blocks ----------------------------------------------------------------------------------------


@dataclass
class _Blocks:
    """Every posting block of a segment (all fields, term order), as parallel arrays."""

    term: npt.NDArray[np.int64]  # global term number
    start: npt.NDArray[np.int64]  # first posting (index into the concatenated postings)
    count: npt.NDArray[np.int64]
    first: npt.NDArray[np.bool_]
    last: npt.NDArray[np.bool_]


def _blocks(starts: npt.NDArray[np.int64]) -> _Blocks:
    df = np.diff(starts)
    per_term = (df + BLOCK_LIMIT - 1) // BLOCK_LIMIT
    term = np.repeat(np.arange(len(df), dtype=np.int64), per_term)
    first_block = np.concatenate([[0], np.cumsum(per_term)[:-1]]).astype(np.int64)
    within = np.arange(len(term), dtype=np.int64) - first_block[term]
    start = starts[term] + within * BLOCK_LIMIT
    count = np.minimum(BLOCK_LIMIT, starts[term + 1] - start)
    return _Blocks(term=term, start=start, count=count, first=within == 0, last=within == per_term[term] - 1)


def _scatter(out: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], records: npt.NDArray[Any]) -> None:
    """Copy fixed-size records into `out` at their byte offsets."""
    size = records.dtype.itemsize
    raw = records.view(np.uint8).reshape(len(records), size)
    step = max(1, SCATTER_CHUNK_BYTES // (8 * size))
    span = np.arange(size, dtype=np.int64)
    for lo in range(0, len(records), step):
        out[(offsets[lo : lo + step, None] + span).ravel()] = raw[lo : lo + step].ravel()


@dataclass
class _Postings:
    """All fields' postings concatenated in term order (the file order)."""

    docs: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    freqs: npt.NDArray[np.int64]  # 0 for Existence postings
    lengths: npt.NDArray[np.int64]  # length byte of the posting's document (0: none)
    starts: npt.NDArray[np.int64]  # per global term, plus the end
    has_values: npt.NDArray[np.bool_]  # per global term: a Frequency field's


def _concatenate(fields: Sequence[FieldPostings]) -> _Postings:
    docs, weights, freqs, lengths, starts, has_values = [], [], [], [], [np.zeros(1, dtype=np.int64)], []
    base = 0
    for field in fields:
        docs.append(field.docs)
        freq = field.freqs if field.freqs is not None else np.zeros(len(field.docs), dtype=np.int64)
        freqs.append(freq)
        weights.append(
            freq.astype(np.float32).astype(np.float64) if field.freqs is not None else np.ones(len(freq))
        )
        codes = field.length_codes
        lengths.append(
            codes[field.docs].astype(np.int64) if codes is not None else np.zeros(len(freq), np.int64)
        )
        starts.append(field.starts[1:] + base)
        has_values.append(np.full(len(field.terms), field.freqs is not None))
        base += len(field.docs)
    return _Postings(
        docs=np.concatenate(docs), weights=np.concatenate(weights), freqs=np.concatenate(freqs),
        lengths=np.concatenate(lengths), starts=np.concatenate(starts), has_values=np.concatenate(has_values),
    )  # fmt: skip


def _block_stats(p: _Postings, b: _Blocks) -> dict[str, npt.NDArray[Any]]:
    at = b.start
    lengths = p.lengths
    big = np.where(lengths > 0, lengths, 256)
    return {
        "maxw": np.maximum.reduceat(p.weights, at),
        "minl": np.minimum.reduceat(big, at),  # 256: no lengths in the block
        "maxl": np.maximum.reduceat(lengths, at),
        "unit": np.minimum.reduceat((p.weights == 1.0).astype(np.int8), at).astype(bool),
        "last_id": p.docs[at + b.count - 1],
    }


_INFO = np.dtype(
    [
        ("head", "S3"),
        ("n", _JINT),
        ("last", _JINT),
        ("maxw", _GFLOAT),
        ("comp", _JINT),
        ("minl", _JINT),
        ("maxl", _JINT),
        ("tail", "S2"),
    ]
)  # fmt: skip  (the block info pickle: PROTO 2, MARK, 6 numbers, TUPLE, STOP)
_DATA_HEAD = b"\x80\x03(("  # PROTO 3, MARK (the data tuple), MARK (its ids)
_INFO_OFFSET = 4  # after the block length
_DATA_OFFSET = _INFO_OFFSET + _INFO.itemsize


def _put(out: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], piece: bytes) -> None:
    """The same bytes at each offset."""
    raw = np.frombuffer(piece, dtype=np.uint8)
    out[(offsets[:, None] + np.arange(len(raw))).ravel()] = np.tile(raw, len(offsets))


def write_postings(
    p: _Postings,
) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.int64], dict[str, Any]]:
    """The `.pst` file's bytes, each term's (offset, length) in it, and the block statistics.

    A block is [W3Bl for a term's first] int32 length, the info pickle (fixed size), then the data pickle:
    PROTO MARK MARK (J id-delta)*n TUPLE, weights (N, or MARK (G weight)*n TUPLE), values (N, or
    SHORT_BINBYTES/BINBYTES of the packed frequencies), TUPLE STOP. Each piece is placed for all blocks
    (or all postings) at once."""
    b = _blocks(p.starts)
    stats = _block_stats(p, b)
    n = b.count
    weighted = ~stats["unit"]
    valued = p.has_values[b.term]
    short = 4 * n < 256
    w_size = np.where(weighted, 2 + 9 * n, 1)
    v_size = np.where(valued, np.where(short, 2, 5) + 4 * n, 1)
    data_size = len(_DATA_HEAD) + 5 * n + 1 + w_size + v_size + 2
    head = np.where(b.first, len(BLOCK_MAGIC), 0)
    sizes = head + _DATA_OFFSET + data_size
    at = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    _put(out, at[b.first], BLOCK_MAGIC)
    body = at + head
    blen = np.zeros(len(n), dtype=">i4")
    blen[:] = np.where(b.last, -1, 1) * (_INFO.itemsize + data_size)
    _scatter(out, body, blen)
    minl = np.where(stats["minl"] == 256, 0, stats["minl"])
    info = np.zeros(len(n), dtype=_INFO)
    info["head"], info["tail"] = b"\x80\x02(", b"t."
    for name, value in (
        ("n", n),
        ("last", stats["last_id"]),
        ("comp", 0),
        ("minl", minl),
        ("maxl", stats["maxl"]),
    ):
        info[name]["op"], info[name]["v"] = ord("J"), value
    info["maxw"]["op"], info["maxw"]["v"] = ord("G"), stats["maxw"]
    _scatter(out, body + _INFO_OFFSET, info)
    data = body + _DATA_OFFSET
    _put(out, data, _DATA_HEAD)
    within = np.arange(len(p.docs), dtype=np.int64) - np.repeat(b.start, n)  # posting's place in its block
    deltas = np.diff(p.docs, prepend=0)
    deltas[b.start] = p.docs[b.start]  # every block's first id is absolute
    ids = np.zeros(len(p.docs), dtype=_JINT)
    ids["op"], ids["v"] = ord("J"), deltas
    id_at = np.repeat(data + len(_DATA_HEAD), n) + 5 * within
    _scatter(out, id_at, ids)
    after_ids = data + len(_DATA_HEAD) + 5 * n
    _put(out, after_ids, b"t")
    w_at = after_ids + 1
    _put(out, w_at[~weighted], b"N")
    _put(out, w_at[weighted], b"(")
    _put(out, (w_at + 1 + 9 * n)[weighted], b"t")
    posting_weighted = np.repeat(weighted, n)
    weights = np.zeros(int(posting_weighted.sum()), dtype=_GFLOAT)
    weights["op"], weights["v"] = ord("G"), p.weights[posting_weighted]
    _scatter(out, (np.repeat(w_at + 1, n) + 9 * within)[posting_weighted], weights)
    v_at = w_at + w_size
    _put(out, v_at[~valued], b"N")
    for short_form, op, length_type in ((True, b"C", "u1"), (False, b"B", "<u4")):
        chosen = valued & (short == short_form)
        _put(out, v_at[chosen], op)
        lengths = (4 * n[chosen]).astype(length_type)
        _scatter(out, v_at[chosen] + 1, lengths)
    value_start = v_at + np.where(short, 2, 5)
    posting_valued = np.repeat(valued, n)
    freqs = p.freqs[posting_valued].astype(">u4")
    _scatter(out, (np.repeat(value_start, n) + 4 * within)[posting_valued], freqs)
    _put(out, v_at + v_size, b"t.")
    term_offset = at[b.first]
    term_end = np.zeros(len(p.starts) - 1, dtype=np.int64)
    term_end[b.term[b.last]] = (at + sizes)[b.last]
    return out.tobytes(), term_offset, term_end - term_offset, {"blocks": b, "stats": stats}


def term_infos(
    p: _Postings, offsets: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], extra: dict[str, Any]
) -> npt.NDArray[Any]:
    """Each term's W3TermInfo bytes (fixed size: no term is inlined, as with W3Codec's inlinelimit 1)."""
    b: _Blocks = extra["blocks"]
    stats = extra["stats"]
    starts = p.starts[:-1]
    info = np.zeros(len(starts), dtype=_TERM_INFO)
    info["weight"] = np.add.reduceat(p.weights, starts)
    info["df"] = np.diff(p.starts)
    big_min = np.full(len(starts), 256, dtype=np.int64)
    np.minimum.at(big_min, b.term, stats["minl"])
    info["minlength"] = np.where(big_min == 256, 0, big_min)
    info["maxlength"] = np.maximum.reduceat(p.lengths, starts)
    info["maxweight"] = np.maximum.reduceat(p.weights, starts)
    info["minid"] = p.docs[starts]
    info["maxid"] = p.docs[p.starts[1:] - 1]
    info["offset"] = offsets
    info["length"] = lengths
    return info


# -- the term index (filetables.OrderedHashWriter) -----------------------------------------------------------


def write_term_index(keys: Sequence[bytes], values: npt.NDArray[Any], fieldmap: dict[str, int]) -> bytes:
    """An OrderedHashWriter file of (key, value) records, keys strictly increasing, values fixed-size."""
    count = len(keys)
    value_size = values.dtype.itemsize
    keylens = np.fromiter(map(len, keys), dtype=np.int64, count=count)
    record = 8 + keylens + value_size
    positions = _HASH_HEADER_BYTES + np.concatenate([[0], np.cumsum(record)[:-1]]).astype(np.int64)
    data = np.zeros(int(record.sum()), dtype=np.uint8)
    heads = np.zeros(count, dtype=_RECORD_HEAD)
    heads["keylen"], heads["vallen"] = keylens, value_size
    local = positions - _HASH_HEADER_BYTES
    _scatter(data, local, heads)
    _scatter(data, local + 8 + keylens, values)
    blob = np.frombuffer(b"".join(keys), dtype=np.uint8)
    key_starts = np.concatenate([[0], np.cumsum(keylens)[:-1]]).astype(np.int64)
    data[np.repeat(local + 8 - key_starts, keylens) + np.arange(len(blob))] = blob
    hashes = np.fromiter(map(zlib.crc32, keys), dtype=np.int64, count=count)
    tables, directory = _hash_tables(hashes, positions, _HASH_HEADER_BYTES + len(data))
    header = HASH_MAGIC + bytes([HASH_TYPE]) + bytes(8)
    index_type = _index_type(int(positions.max()) if count else 0)
    extras = pickle.dumps({"fieldmap": fieldmap, "indextype": index_type, "indexlen": count}, -1)
    index = positions.astype(np.dtype(index_type).newbyteorder(">")).tobytes()
    tail = extras + index
    return b"".join([header, data.tobytes(), tables, directory, tail, np.array([len(tail)], ">i4").tobytes()])


def _index_type(largest: int) -> str:
    """GrowableArray("H")'s type after holding these positions."""
    if largest < 2**16:
        return "H"
    if largest < 2**31:
        return "i"
    return "I" if largest < 2**32 else "q"


def _hash_tables(
    hashes: npt.NDArray[np.int64], positions: npt.NDArray[np.int64], start: int
) -> tuple[bytes, bytes]:
    """HashWriter._write_hashes and _write_directory: 256 open-addressing tables of twice their entries,
    an entry found by probing forward (wrapping around) from slot (hash >> 8) % slots to it with no empty
    slot between. Placed with numpy: each table is rotated to start just after the slot where the running
    sum of (entries homed at a slot - 1) is lowest, past which no run of occupied slots can carry (a table
    is half full); in that order entries sorted by home go to max(home, previous place + 1)."""
    bucket = hashes & 255
    sizes = np.bincount(bucket, minlength=256).astype(np.int64)
    slots = 2 * sizes
    table_starts = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    n = slots[bucket]
    home = np.where(n > 0, (hashes >> 8) % np.maximum(n, 1), 0)
    rotation = _rotations(table_starts[bucket] + home, slots, table_starts)
    turned = (home - rotation[bucket]) % np.maximum(n, 1)
    order = np.lexsort((turned, bucket))
    b_sorted, t_sorted = bucket[order], turned[order]
    first_of_bucket = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rank = np.arange(len(order), dtype=np.int64) - first_of_bucket[b_sorted]
    apart = b_sorted * (4 * len(order) + 4)  # keeps each bucket's running maximum to itself
    place = np.maximum.accumulate(t_sorted - rank + apart) - apart + rank  # max(home, previous + 1)
    assert not np.any(place >= slots[b_sorted])
    at = table_starts[b_sorted] + (place + rotation[b_sorted]) % slots[b_sorted]
    table = np.zeros(int(slots.sum()), dtype=_POINTER)
    table["hash"][at] = hashes[order]
    table["pos"][at] = positions[order]
    directory = np.zeros(256, dtype=_DIRECTORY)
    directory["pos"] = start + table_starts * _POINTER.itemsize
    directory["slots"] = slots
    return table.tobytes(), directory.tobytes()


def _rotations(
    homes: npt.NDArray[np.int64], slots: npt.NDArray[np.int64], table_starts: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Per table, the slot after the lowest running sum of (entries homed there - 1): no probe run
    crosses from that slot to the next."""
    total = int(slots.sum())
    rotation = np.zeros(256, dtype=np.int64)
    if total == 0:
        return rotation
    excess = np.bincount(homes, minlength=total).astype(np.int64) - 1
    table_of = np.repeat(np.arange(256), slots)
    running = np.cumsum(excess)
    first = np.minimum(table_starts, total - 1)  # (an empty table's start may be the end)
    running -= np.repeat(running[first] - excess[first], slots)  # restart per table
    lowest = np.lexsort((np.arange(total), running, table_of))  # per table: lowest sum, first slot
    used = np.flatnonzero(slots > 0)
    rotation[used] = (lowest[table_starts[used]] - table_starts[used] + 1) % slots[used]
    return rotation


# -- reading posting blocks back ----------------------------------------------------------------------------


def gather(
    buffer: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """Fixed-size records at byte offsets."""
    size = dtype.itemsize
    return buffer[(offsets[:, None] + np.arange(size)).ravel()].reshape(-1, size).copy().view(dtype).ravel()


def decode_postings(
    pst: npt.NDArray[np.uint8], offsets: npt.NDArray[np.integer], dfs: npt.NDArray[np.integer]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(docnum, frequency, term number) of every posting of the terms whose blocks start at `offsets` (with
    `dfs` postings each) in posting blocks this module wrote, in term then docnum order (frequency 1 for
    an Existence field's postings, which carry no values)."""
    if len(offsets) == 1 and dfs[0] <= BLOCK_LIMIT:
        return _decode_block(pst, int(offsets[0]) + len(BLOCK_MAGIC), int(dfs[0]))
    block_at, block_term = _block_starts(
        pst, np.asarray(offsets, dtype=np.int64), np.asarray(dfs, dtype=np.int64)
    )
    info = gather(pst, block_at + _INFO_OFFSET, _INFO)
    n = info["n"]["v"].astype(np.int64)
    data = block_at + _DATA_OFFSET
    block_first = np.cumsum(n) - n
    within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(block_first, n)
    ids = gather(pst, np.repeat(data + len(_DATA_HEAD) + 1, n) + 5 * within, np.dtype("<i4")).astype(np.int64)
    totals = np.cumsum(ids)
    docs = totals - np.repeat(totals[block_first] - ids[block_first], n)  # delta-decoded per block
    weights_at = data + len(_DATA_HEAD) + 5 * n + 1
    weighted = pst[weights_at] == ord("(")
    values_at = weights_at + np.where(weighted, 2 + 9 * n, 1)
    op = pst[values_at]
    freq_start = values_at + np.where(op == ord("C"), 2, 5)
    valued = np.repeat(op != ord("N"), n)
    freqs = np.ones(len(docs), dtype=np.int64)
    freq_at = (np.repeat(freq_start, n) + 4 * within)[valued]
    freqs[valued] = gather(pst, freq_at, np.dtype(">u4")).astype(np.int64)
    return docs, freqs, np.repeat(block_term, n)


def _decode_block(
    pst: npt.NDArray[np.uint8], at: int, n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """decode_postings of one term of one block (most terms): its records read in place."""
    data = at + _DATA_OFFSET + len(_DATA_HEAD)
    docs = np.cumsum(np.frombuffer(pst, dtype=_JINT, count=n, offset=data)["v"], dtype=np.int64)
    weights_at = data + 5 * n + 1
    values_at = weights_at + (2 + 9 * n if pst[weights_at] == ord("(") else 1)
    op = pst[values_at]
    freqs = np.ones(n, dtype=np.int64)
    if op != ord("N"):
        freqs = np.frombuffer(pst, dtype=">u4", count=n, offset=values_at + (2 if op == ord("C") else 5))
    return docs, freqs.astype(np.int64), np.zeros(n, dtype=np.int64)


def _block_starts(
    pst: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], dfs: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where each block's length field is, and its term: a term's blocks follow each other from its
    offset (the first after the W3Bl magic), each as long as its int32 length says. Located one block of
    every term a round while many terms have more; the last few long lists block by block."""
    at = offsets + len(BLOCK_MAGIC)
    remaining = dfs.copy()
    starts: list[npt.NDArray[np.int64]] = []
    terms: list[npt.NDArray[np.int64]] = []
    active = np.arange(len(offsets), dtype=np.int64)
    while len(active) > POINTER_CHASE_TERMS:
        starts.append(at[active])
        terms.append(active)
        at[active] += 4 + np.abs(gather(pst, at[active], np.dtype(">i4")).astype(np.int64))
        remaining[active] -= np.minimum(remaining[active], BLOCK_LIMIT)
        active = active[remaining[active] > 0]
    raw = pst.data
    for term in active.tolist():
        position, left, found = int(at[term]), int(remaining[term]), []
        while left > 0:
            found.append(position)
            position += 4 + abs(int.from_bytes(raw[position : position + 4], "big", signed=True))
            left -= BLOCK_LIMIT
        starts.append(np.asarray(found, dtype=np.int64))
        terms.append(np.full(len(found), term, dtype=np.int64))
    block_at = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    block_term = np.concatenate(terms) if terms else np.zeros(0, dtype=np.int64)
    order = np.lexsort((block_at, block_term))  # a term's blocks in file order
    return block_at[order], block_term[order]


# -- the segment ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Documents as columns: each schema field's value per document (as Whoosh's add_document takes
    them: strings, a KEYWORD field's tokens comma-separated), and each document's entry key."""

    keys: Sequence[int]
    values: Mapping[str, Sequence[str]]

    def __len__(self) -> int:
        return len(self.keys)


def bulk_supported(schema: Schema) -> bool:
    """Whether every field of the schema is one `write_segment` writes exactly like Whoosh."""
    for name in schema.names():
        field = schema[name]
        if field.vector or field.column_type or field.separate_spelling() or field.format.field_boost != 1.0:
            return False
        if type(field.format) is Existence:
            if type(field.analyzer) is not IDTokenizer:
                return False
            continue
        if type(field.format) is not Frequency:
            return False
        if field.scorable and not FastAnalysis.supports(field.analyzer):
            return False
    return True


class BulkWriter:
    """Writes segments of a schema's documents; keeps each text field's analysis cache across batches."""

    def __init__(self, schema: Schema) -> None:
        if not bulk_supported(schema):
            raise ValueError("this schema has fields the bulk writer does not write")
        self.schema = schema
        self.analysis = {
            name: FastAnalysis(schema[name].analyzer)
            for name in schema.names()
            if type(schema[name].format) is Frequency and schema[name].scorable
        }

    def write(self, storage: Storage, indexname: str, batch: Batch) -> W3Segment:
        """A new (not yet committed) segment of these documents, docnums in their order."""
        return write_analysed(storage, indexname, self.schema, self.analyse(batch))

    def analyse(self, batch: Batch) -> Analysed:
        fields: list[FieldPostings] = []
        lengths: dict[str, npt.NDArray[np.int64]] = {}
        for name in sorted(self.schema.names()):
            field, values = self.schema[name], batch.values[name]
            if type(field.format) is Existence:
                fields.append(id_postings(name, values))
            elif name in self.analysis:
                postings, lengths[name] = text_postings(name, values, self.analysis[name])
                fields.append(postings)
            else:
                fields.append(analysed_postings(name, values, _term_texts(field.analyzer)))
        names = sorted(name for name in self.schema.names() if self.schema[name].stored)  # as add_document
        rows = zip(*(batch.values[name] for name in names), strict=True)
        stored = [zlib_stored(pickle.dumps(dict(zip(names, row, strict=True)), 2)) for row in rows]
        keys = np.asarray(batch.keys, dtype=np.int64)
        return Analysed(keys=keys, fields=fields, stored=stored, lengths=lengths)


@dataclass
class Analysed:
    """A segment's content before it is written: what the bulk writer analysed, or a merge read back."""

    keys: npt.NDArray[np.int64]  # by docnum
    fields: list[FieldPostings]  # by field name (a field without terms is left out when written)
    stored: Sequence[bytes]  # each document's value in the stored column (STORED_COLUMN's encoding)
    lengths: dict[str, npt.NDArray[np.int64]]  # each scorable field's exact length (tokens) by docnum


def write_analysed(storage: Storage, indexname: str, schema: Schema, analysed: Analysed) -> W3Segment:
    """Write the segment's compound file and its sidecars (keys; each scorable field's exact lengths)."""
    segment = W3Segment(W3Codec(), indexname, doccount=len(analysed.keys))
    codes = {name: length_codes(lengths) for name, lengths in analysed.lengths.items()}
    for field in analysed.fields:
        field.length_codes = codes.get(field.name)
    files = _terms_files(segment, [f for f in analysed.fields if f.terms])
    files.update(_column_files(segment, analysed.stored, codes))
    _write_compound(storage, segment, files)
    _write_file(storage, segment.make_filename(KEYS_EXT), _npy(analysed.keys))
    for name, lengths in analysed.lengths.items():
        _write_file(storage, segment.make_filename(f".{name}{LENGTHS_EXT}"), _npy(lengths.astype(np.int64)))
    segment._fieldlengths = defaultdict(
        int, {n: int(lengths.sum()) for n, lengths in analysed.lengths.items()}
    )
    return segment


def length_codes(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """The length byte Whoosh stores for each document (0: no tokens, no length stored)."""
    codes = length_bytes(lengths)
    codes[lengths == 0] = 0
    return codes


def _term_texts(analyzer: Callable[[str], Iterable[Any]]) -> Callable[[str], list[str]]:
    return lambda value: [token.text for token in analyzer(value)]


def _terms_files(segment: W3Segment, fields: Sequence[FieldPostings]) -> dict[str, bytes]:
    """The posting blocks (`.pst`) and the term index (`.trm`)."""
    fieldmap = {f.name: number for number, f in enumerate(fields)}
    postings = _concatenate(fields)
    data, offsets, lengths, extra = write_postings(postings)
    infos = term_infos(postings, offsets, lengths, extra)
    keys = [
        prefix + term for f in fields for prefix in (fieldmap[f.name].to_bytes(2, "big"),) for term in f.terms
    ]
    return {
        segment.make_filename(W3Codec.POSTS_EXT): data,
        segment.make_filename(W3Codec.TERMS_EXT): write_term_index(keys, infos, fieldmap),
    }


def _column_files(
    segment: W3Segment, stored: Sequence[bytes], lengths: dict[str, npt.NDArray[np.uint8]]
) -> dict[str, bytes]:
    """The stored fields (STORED_COLUMN: a pickled dict a document, each a zlib stream, in a VarBytes
    column) and each scorable field's length bytes (LENGTHS_COLUMN, trailing zeros left out as
    NumericColumn does)."""
    files = {W3Codec.column_filename(segment, "_stored"): var_bytes_column(stored)}
    for name, codes in lengths.items():
        nonzero = np.flatnonzero(codes)
        used = int(nonzero[-1]) + 1 if len(nonzero) else 0
        files[W3Codec.column_filename(segment, f"_{name}_len")] = codes[:used].tobytes()
    return files


def var_bytes_column(values: Sequence[bytes]) -> bytes:
    """VarBytesColumn.Writer's bytes: the values, their lengths array, past VAR_BYTES_OFFSETS_ROWS rows
    their offsets array too (big-endian, each of GrowableArray's type for its largest number), then the
    type codes (and "X" when offsets were written)."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parts = [b"".join(values)]
    codes = [_growable_type(lengths)]
    parts.append(lengths.astype(np.dtype(codes[0]).newbyteorder(">")).tobytes())
    if len(values) > VAR_BYTES_OFFSETS_ROWS:
        codes.append(_growable_type(offsets))
        parts.append(offsets.astype(np.dtype(codes[1]).newbyteorder(">")).tobytes())
        codes.append("X")
    return b"".join(parts) + "".join(codes).encode("ascii")


def _growable_type(numbers: npt.NDArray[np.int64]) -> str:
    """The type code of a GrowableArray("B", allow_longs=False) after these numbers were appended."""
    largest = int(numbers.max()) if len(numbers) else 0
    if largest < 2**8:
        return "B"
    if largest < 2**16:
        return "H"
    return "i" if largest < 2**31 else "I"


def _write_compound(storage: Storage, segment: W3Segment, files: Mapping[str, bytes]) -> None:
    """The segment's `.seg` file as CompoundStorage.assemble lays it out (directory position and length,
    the files, the pickled directory and options), which Whoosh's readers memory-map."""
    directory: dict[str, dict[str, Any]] = {}
    offset = COMPOUND_HEADER_BYTES
    modified = time.time()
    for name, data in files.items():
        directory[name] = {"offset": offset, "length": len(data), "modified": modified}
        offset += len(data)
    tail = pickle.dumps(directory, -1) + pickle.dumps({}, -1)
    head = offset.to_bytes(8, "big", signed=True) + len(tail).to_bytes(4, "big", signed=True)
    _write_file(storage, segment.make_filename(segment.COMPOUND_EXT), b"".join([head, *files.values(), tail]))
    segment.compound = True


def zlib_stored(data: bytes) -> bytes:
    """`data` as a zlib stream of one stored (uncompressed) deflate block: what zlib.decompress reads,
    without zlib.compress's ~25 us of set-up a call (a stored field is ~60 bytes)."""
    assert len(data) < 1 << 16
    size = len(data).to_bytes(2, "little")
    inverse = (len(data) ^ 0xFFFF).to_bytes(2, "little")
    return b"\x78\x01\x01" + size + inverse + data + zlib.adler32(data).to_bytes(4, "big")


def _npy(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_file(storage: Storage, name: str, data: bytes) -> None:
    f: StructFile = storage.create_file(name)
    f.write(data)
    f.close()


def read_keys(storage: Storage, segment: W3Segment) -> npt.NDArray[np.int64] | None:
    """The keys sidecar of a segment this module wrote (None for a segment Whoosh's writer wrote)."""
    return read_sidecar(storage, segment, KEYS_EXT)


def read_lengths(storage: Storage, segment: W3Segment, field: str) -> npt.NDArray[np.int64] | None:
    """A scorable field's exact length by docnum (None for a segment Whoosh's writer wrote)."""
    return read_sidecar(storage, segment, f".{field}{LENGTHS_EXT}")


def read_sidecar(storage: Storage, segment: W3Segment, ext: str) -> npt.NDArray[np.int64] | None:
    name = segment.make_filename(ext)
    if not storage.file_exists(name):
        return None
    f = storage.open_file(name)
    try:
        raw = f.read()
    finally:
        f.close()
    found = np.load(io.BytesIO(raw), allow_pickle=False)
    return found if len(found) == segment.doc_count_all() else None
