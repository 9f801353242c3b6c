"""Whoosh 3's posting blocks and term index, written and read with numpy.

- posting blocks of at most BLOCK_LIMIT postings, as Whoosh's W3PostingsWriter cuts them, each written as
  the block-length int, the pickled block info (count, last id, max weight, compression 0, min and max
  length bytes) and the pickled (delta-coded ids, weights, packed frequencies) tuple: records of a fixed
  layout per (count, weights, values, first block) shape, filled column-wise and scattered to their
  offsets. The pickles use a fixed width for every number (BININT, BINFLOAT) so a layout has one size;
  Whoosh reads them with `loads` like its own. Blocks are not compressed (compression 0 is recorded per
  block; reading skips zlib);
- the term index (`.trm`): Whoosh's OrderedHashWriter layout (CDB-style: ordered key/value records, 256
  hash tables of (hash, position), their directory, the pickled extras with the field map, the position
  index) with hash type 1 (crc32, one of the three the reader knows), the tables placed with numpy;
- reading blocks back (`decode_postings`): every posting of a set of terms in a few array operations.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

BLOCK_LIMIT = 128  # postings a block, W3Codec's default blocklimit
HASH_TYPE = 1  # crc32 in whoosh.filedb.filetables._hash_functions
HASH_MAGIC = b"HSH3"
BLOCK_MAGIC = b"W3Bl"
SCATTER_CHUNK_BYTES = 16 << 20  # bytes of destination indices built at once when placing records
POINTER_CHASE_TERMS = 64  # fewer terms than this with blocks left: their blocks are found one by one

_JINT = np.dtype([("op", "u1"), ("v", "<i4")])  # pickle BININT: 'J' + int32 little-endian
_GFLOAT = np.dtype([("op", "u1"), ("v", ">f8")])  # pickle BINFLOAT: 'G' + float64 big-endian
TERM_INFO = np.dtype(
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
RECORD_HEAD = np.dtype([("keylen", ">i4"), ("vallen", ">i4")])  # filetables._lengths "!ii"
_POINTER = np.dtype([("hash", ">u4"), ("pos", ">i8")])  # filetables._pointer "!Iq"
_DIRECTORY = np.dtype([("pos", ">i8"), ("slots", ">i4")])  # filetables._dir_entry "!qi"
_HASH_HEADER_BYTES = 13  # magic, hash type byte, two unused ints


@dataclass
class FieldPostings:
    """One field's postings sorted by (term bytes, docnum): `starts[t]:starts[t + 1]` are term t's."""

    name: str
    terms: list[bytes]
    starts: npt.NDArray[np.int64]
    docs: npt.NDArray[np.int64]
    freqs: npt.NDArray[np.int64] | None  # None: an Existence field (weight 1.0, no value bytes)
    length_codes: npt.NDArray[np.uint8] | None  # per document, for a scorable field


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
class Postings:
    """All fields' postings concatenated in term order (the file order)."""

    docs: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    freqs: npt.NDArray[np.int64]  # 0 for Existence postings
    lengths: npt.NDArray[np.int64]  # length byte of the posting's document (0: none)
    starts: npt.NDArray[np.int64]  # per global term, plus the end
    has_values: npt.NDArray[np.bool_]  # per global term: a Frequency field's


def concatenate(fields: Sequence[FieldPostings]) -> Postings:
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
    return Postings(
        docs=np.concatenate(docs), weights=np.concatenate(weights), freqs=np.concatenate(freqs),
        lengths=np.concatenate(lengths), starts=np.concatenate(starts), has_values=np.concatenate(has_values),
    )  # fmt: skip


def _block_stats(p: Postings, b: _Blocks) -> dict[str, npt.NDArray[Any]]:
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
    p: Postings,
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
    p: Postings, offsets: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], extra: dict[str, Any]
) -> npt.NDArray[Any]:
    """Each term's W3TermInfo bytes (fixed size: no term is inlined, as with W3Codec's inlinelimit 1)."""
    b: _Blocks = extra["blocks"]
    stats = extra["stats"]
    starts = p.starts[:-1]
    info = np.zeros(len(starts), dtype=TERM_INFO)
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
    heads = np.zeros(count, dtype=RECORD_HEAD)
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
