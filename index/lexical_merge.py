"""Merging bulk-written Whoosh segments with numpy, and the tiered policy that decides when.

An index written a batch at a time has a segment per commit; every query term then costs a term lookup
and a posting-list read per segment (25 segments at 100K chunks of 4,096-chunk commits). Whoosh's own
merge (MERGE_SMALL, then `add_reader`) rewrites documents and postings one at a time in Python and, with
its Fibonacci rule, merges everything at once when ~23 segments pile up: the slowdown measured at 1M.

`plan` keeps segments in tiers of TIER_FACTOR: a segment's tier is log_TIER_FACTOR of its live documents
over MERGE_BASE_DOCS; when a tier holds TIER_FACTOR segments they are merged into one (of the next tier),
so a document is rewritten about log_TIER_FACTOR(N / MERGE_BASE_DOCS) times and an index of N chunks has
at most (TIER_FACTOR - 1) segments a tier. Only segments this package wrote are merged (they carry the
keys and lengths sidecars, and their posting blocks have index.lexical_codec's fixed layout); a segment
Whoosh's writer made stays as it is.

`read_live` reads such a segment back as the writer's input (`Analysed`) with its deleted documents left
out: the term index records through its position index, every posting block located by its block
length and decoded with numpy (the fixed-width ids and packed frequencies), the stored fields and the
exact lengths from their sidecar. `merge` concatenates segments' live documents and writes one segment
through index.lexical_segment.write_analysed: the same bytes as writing those documents in one batch.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.codec.whoosh3 import W3Codec, W3Segment
from whoosh.columns import VarBytesColumn
from whoosh.fields import Schema
from whoosh.filedb.filestore import Storage
from whoosh.filedb.structfile import BufferFile
from whoosh.formats import Existence

from index.lexical_codec import RECORD_HEAD, TERM_INFO, FieldPostings, decode_postings, gather
from index.lexical_segment import Analysed, read_keys, read_lengths, write_analysed

TIER_FACTOR = 8  # segments of one tier merged into one
MERGE_BASE_DOCS = 4096  # segments below this many live documents are tier 0


def tier(live_docs: int) -> int:
    return max(0, int(math.log(max(live_docs, 1) / MERGE_BASE_DOCS, TIER_FACTOR) + 1e-9))


def plan(segments: Sequence[W3Segment], mergeable: Callable[[W3Segment], bool]) -> list[list[W3Segment]]:
    """Groups of TIER_FACTOR mergeable segments of one tier (smallest tier first)."""
    tiers: dict[int, list[W3Segment]] = {}
    for segment in segments:
        if mergeable(segment):
            tiers.setdefault(tier(segment.doc_count()), []).append(segment)
    return [group[:TIER_FACTOR] for _, group in sorted(tiers.items()) if len(group) >= TIER_FACTOR]


def merge(storage: Storage, indexname: str, schema: Schema, segments: Sequence[W3Segment]) -> W3Segment:
    """One new (uncommitted) segment with the live documents of `segments`, in their order."""
    parts = [read_live(storage, segment, schema) for segment in segments]
    return write_analysed(storage, indexname, schema, concatenate(parts))


def concatenate(parts: Sequence[Analysed]) -> Analysed:
    bases = np.cumsum([0, *(len(p.keys) for p in parts)])
    names = sorted({f.name for p in parts for f in p.fields})
    fields = []
    for name in names:
        found = [next((f for f in p.fields if f.name == name), None) for p in parts]
        kept = [(f, base) for f, base in zip(found, bases, strict=False) if f is not None]
        fields.append(_merge_field(name, [f for f, _ in kept], np.array([base for _, base in kept])))
    return Analysed(
        keys=np.concatenate([p.keys for p in parts]),
        fields=fields,
        stored=[value for p in parts for value in p.stored],
        lengths={name: np.concatenate([p.lengths[name] for p in parts]) for name in parts[0].lengths},
    )


def _merge_field(name: str, fields: Sequence[FieldPostings], bases: npt.NDArray[np.int64]) -> FieldPostings:
    vocabulary = sorted(set().union(*(f.terms for f in fields)))
    rank = {term: n for n, term in enumerate(vocabulary)}
    terms, docs, freqs = [], [], []
    for field, base in zip(fields, bases, strict=False):
        ranks = np.fromiter(map(rank.__getitem__, field.terms), dtype=np.int64, count=len(field.terms))
        terms.append(np.repeat(ranks, np.diff(field.starts)))
        docs.append(field.docs + base)
        if field.freqs is not None:
            freqs.append(field.freqs)
    term_of, doc_of = np.concatenate(terms), np.concatenate(docs)
    order = np.lexsort((doc_of, term_of))
    starts = np.searchsorted(term_of[order], np.arange(len(vocabulary) + 1)).astype(np.int64)
    return FieldPostings(
        name=name, terms=vocabulary, starts=starts, docs=doc_of[order],
        freqs=np.concatenate(freqs)[order] if freqs else None, length_codes=None,
    )  # fmt: skip


# -- reading a bulk segment back --------------------------------------------------------------------------


def read_live(storage: Storage, segment: W3Segment, schema: Schema) -> Analysed:
    """A bulk-written segment's live documents (renumbered from 0) as `Analysed`."""
    keys = read_keys(storage, segment)
    assert keys is not None, "not a bulk-written segment"
    files = segment.open_compound_file(storage)
    try:
        data = {
            name: _read(files, segment.make_filename(ext)) for name, ext in (("trm", ".trm"), ("pst", ".pst"))
        }
        stored_raw = _read(files, W3Codec.column_filename(segment, "_stored"))
    finally:
        files.close()
    live = np.ones(segment.doc_count_all(), dtype=bool)
    live[list(segment.deleted_docs())] = False
    renumber = np.cumsum(live) - 1
    fields = _read_fields(data["trm"], data["pst"], schema, live, renumber)
    lengths: dict[str, npt.NDArray[np.int64]] = {}
    for name in schema.names():
        if schema[name].scorable:
            exact = read_lengths(storage, segment, name)
            assert exact is not None, "a bulk segment without its lengths sidecar"
            lengths[name] = exact[live]
    values = _column_values(stored_raw, segment.doc_count_all())
    stored = [value for value, keep in zip(values, live.tolist(), strict=True) if keep]
    return Analysed(keys=keys[live], fields=fields, stored=stored, lengths=lengths)


def _read(files: Any, name: str) -> bytes:
    f = files.open_file(name)
    try:
        return bytes(f.read())
    finally:
        f.close()


def _column_values(raw: bytes, doc_count: int) -> list[bytes]:
    """A VarBytes column's values as stored (here: the stored fields, still encoded)."""
    reader = VarBytesColumn().reader(BufferFile(raw), 0, len(raw), doc_count)
    spans = zip(reader._offsets.tolist(), reader._lengths.tolist(), strict=True)
    return [raw[offset : offset + length] for offset, length in spans]


def _term_records(
    trm: bytes,
) -> tuple[dict[str, int], list[bytes], npt.NDArray[Any], npt.NDArray[np.int64]]:
    """The term index's field map, keys, term infos and field numbers, in key order (OrderedHashReader's
    layout: a key is the field number, a big-endian ushort, then the term's bytes)."""
    buffer = np.frombuffer(trm, dtype=np.uint8)
    tail = int.from_bytes(trm[-4:], "big", signed=True)
    stream = io.BytesIO(trm[len(trm) - 4 - tail : len(trm) - 4])
    extras = pickle.load(stream)
    count = extras["indexlen"]
    positions = np.frombuffer(
        stream.read(), dtype=np.dtype(extras["indextype"]).newbyteorder(">"), count=count
    )
    positions = positions.astype(np.int64)
    heads = gather(buffer, positions, RECORD_HEAD)
    keylens = heads["keylen"].astype(np.int64)
    keys = [trm[p + 8 : p + 8 + n] for p, n in zip(positions.tolist(), keylens.tolist(), strict=True)]
    infos = gather(buffer, positions + 8 + keylens, TERM_INFO)
    field_of = gather(buffer, positions + 8, np.dtype(">u2")).astype(np.int64)
    return extras["fieldmap"], keys, infos, field_of


def _read_fields(
    trm: bytes, pst: bytes, schema: Schema, live: npt.NDArray[np.bool_], renumber: npt.NDArray[np.int64]
) -> list[FieldPostings]:
    fieldmap, keys, infos, field_of = _term_records(trm)
    names = {number: name for name, number in fieldmap.items()}
    docs, freqs, term_of = decode_postings(np.frombuffer(pst, dtype=np.uint8), infos["offset"], infos["df"])
    keep = live[docs]
    docs, freqs, term_of = renumber[docs[keep]], freqs[keep], term_of[keep]
    fields = []
    for number in sorted(names):
        name = names[number]
        in_field = np.flatnonzero(field_of == number)
        lo, hi = (int(in_field[0]), int(in_field[-1]) + 1) if len(in_field) else (0, 0)
        chosen = (term_of >= lo) & (term_of < hi)
        used, local = np.unique(term_of[chosen], return_inverse=True)  # terms left with live postings
        starts = np.searchsorted(local, np.arange(len(used) + 1)).astype(np.int64)
        field = schema[name]
        fields.append(
            FieldPostings(
                name=name, terms=[keys[t][2:] for t in used.tolist()], starts=starts, docs=docs[chosen],
                freqs=None if type(field.format) is Existence else freqs[chosen],
                length_codes=None,
            )
        )  # fmt: skip
    return fields
