"""A bulk writer of Whoosh 3 segments: a batch of lexical entries analysed once and written with numpy.

Whoosh's own writer spends ~1 ms a chunk in Python (the analyser chain per token, a posting pool sorted
and merged item by item, a length-column read per posting, a pickle and a zlib call per posting block),
~1,000 chunks/s. `BulkWriter` produces the same segment files from arrays:

- analysis (index.lexical_analysis): each field's postings, sorted with numpy, and each text's length;
- the posting blocks (`.pst`) and the term index (`.trm`) in Whoosh's layout (index.lexical_codec);
- per-document columns: the stored fields through Whoosh's own column writer (STORED_COLUMN), the
  length bytes of each scorable field (LENGTHS_COLUMN: `length_to_byte` of the token count);
- the segment's sidecar `<segment>.keys.npy`: each docnum's entry key, so deletions and a hit's key are
  array lookups instead of a term lookup or a stored-field read per document (Whoosh ignores the file and
  deletes it with the segment); and `<segment>.<field>.lengths.npy`, each scorable field's exact lengths.

The segment is one compound file (`.seg`, laid out as Whoosh assembles it, memory-mapped by its readers);
the caller adds it to the table of contents through a Whoosh writer's commit (its lock, generation and
file cleaning), see index.lexical.
tests/test_lexical_segment.py checks term by term and posting by posting that a bulk segment reads back
as Whoosh's writer's, and that both score alike through Whoosh's search and ours.
"""

from __future__ import annotations

import io
import pickle
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.analysis import IDTokenizer
from whoosh.codec.whoosh3 import W3Codec, W3Segment
from whoosh.fields import Schema
from whoosh.filedb.filestore import Storage
from whoosh.filedb.structfile import StructFile
from whoosh.formats import Existence, Frequency

from index.lexical_analysis import (
    FastAnalysis,
    analysed_postings,
    id_postings,
    length_codes,
    text_postings,
)
from index.lexical_codec import FieldPostings, concatenate, term_infos, write_postings, write_term_index

COMPOUND_HEADER_BYTES = 12  # CompoundStorage: the directory's position (long) and length (int)
KEYS_EXT = ".keys.npy"
LENGTHS_EXT = ".lengths.npy"  # after the field's name
VAR_BYTES_OFFSETS_ROWS = 2**15  # VarBytesColumn's write_offsets_cutoff


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


def _term_texts(analyzer: Callable[[str], Iterable[Any]]) -> Callable[[str], list[str]]:
    return lambda value: [token.text for token in analyzer(value)]


def _terms_files(segment: W3Segment, fields: Sequence[FieldPostings]) -> dict[str, bytes]:
    """The posting blocks (`.pst`) and the term index (`.trm`)."""
    fieldmap = {f.name: number for number, f in enumerate(fields)}
    postings = concatenate(fields)
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
