"""Document metadata given at ingest, and the search filters over it.

    metadata = DocumentMetadata(author="Ada", path="hr/leave.md", tags=("hr", "policy"), modified_ms=...)
    filters = parse_filters(b'{"tags_any": ["hr"], "modified_from_ms": 1700000000000}')   # BadFilter?
    clause, params = filter_clause(filters, "d")      # SQL over the catalog's `documents` row aliased d

Metadata is typed and bounded: a few named fields (author, path, tags, created/modified dates as epoch
ms) and up to MAX_FIELDS other string key/values (`fields`), at most MAX_METADATA_BYTES encoded. The
document's `source` is a catalog column of its own and is filterable too.

Filters select documents; every given filter must hold (AND), a list filter's items are ORed
(`tags_any`, `doc_ids`) or ANDed (`tags_all`). They narrow what a principal may read and can never
widen it: the catalog ANDs the clause with visibility, the tenant and the reader tokens (store.catalog
`readable_keys`), inside both retrievers. An unknown filter name, a wrong type or an over-long list is a
`BadFilter` (code `bad_filter`) naming the field, and nothing is searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from store.exceptions import BadFilter, InputError

MAX_TAGS = 32
MAX_FIELDS = 32
MAX_FILTER_ITEMS = 100
MAX_TEXT_CHARS = 500
MAX_PATH_CHARS = 1000
MAX_METADATA_BYTES = 8192
TAG_PATTERN = r"^[^\x00-\x1f,]{1,64}$"
FIELD_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"

Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Path_ = Annotated[str, msgspec.Meta(max_length=MAX_PATH_CHARS)]
Tag = Annotated[str, msgspec.Meta(pattern=TAG_PATTERN)]
FieldKey = Annotated[str, msgspec.Meta(pattern=FIELD_KEY_PATTERN)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=MAX_TAGS)]
Fields = Annotated[dict[FieldKey, Text], msgspec.Meta(max_length=MAX_FIELDS)]


class DocumentMetadata(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Key/value metadata of one document (what the catalog stores and the documents API returns)."""

    author: Text = ""
    path: Path_ = ""  # where the file is under its source (a folder sync sets it)
    tags: Tags = ()
    created_ms: EpochMs | None = None
    modified_ms: EpochMs | None = None
    fields: Fields = {}

    def is_empty(self) -> bool:
        return self == EMPTY_METADATA


EMPTY_METADATA = DocumentMetadata()

Items = Annotated[tuple[Text, ...], msgspec.Meta(min_length=1, max_length=MAX_FILTER_ITEMS)]
TagItems = Annotated[tuple[Tag, ...], msgspec.Meta(min_length=1, max_length=MAX_TAGS)]


class SearchFilters(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Which documents a search (or a documents listing) may draw from; None / empty = no condition."""

    doc_ids: Items | None = None
    source: Path_ | None = None
    source_prefix: Path_ | None = None
    path_prefix: Path_ | None = None
    author: Text | None = None
    tags_any: TagItems | None = None
    tags_all: TagItems | None = None
    created_from_ms: EpochMs | None = None
    created_before_ms: EpochMs | None = None
    modified_from_ms: EpochMs | None = None
    modified_before_ms: EpochMs | None = None
    fields: Annotated[dict[FieldKey, Text], msgspec.Meta(max_length=MAX_FIELDS)] = {}

    def is_empty(self) -> bool:
        return self == NO_FILTERS


NO_FILTERS = SearchFilters()
# What a search takes: one set of filters, several that must all hold (an ask's and a tool call's), or none.
Filters = SearchFilters | tuple[SearchFilters, ...] | None


def all_of(filters: Filters) -> tuple[SearchFilters, ...]:
    """The non-empty filter sets in `filters` (every one must hold)."""
    given = () if filters is None else (filters,) if isinstance(filters, SearchFilters) else filters
    return tuple(f for f in given if not f.is_empty())


_metadata_encoder = msgspec.json.Encoder()
_metadata_decoder = msgspec.json.Decoder(DocumentMetadata)
_filters_decoder = msgspec.json.Decoder(SearchFilters)


def _field_of(error: msgspec.ValidationError) -> str:
    message = str(error)
    if "unknown field `" in message:
        return message.split("unknown field `", 1)[1].split("`", 1)[0]
    if "`$." in message:
        return message.split("`$.", 1)[1].split("`", 1)[0].split("[", 1)[0].split(".", 1)[0]
    return "filters"


def parse_filters(raw: bytes | str | dict[str, Any] | None) -> SearchFilters:
    """Filters from JSON (or a decoded object); BadFilter names the offending field."""
    if raw is None:
        return NO_FILTERS
    try:
        if isinstance(raw, dict):
            return msgspec.convert(raw, SearchFilters)
        return _filters_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadFilter(f"bad search filter: {exc}", field=_field_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadFilter(f"search filters are not JSON: {exc}", field="filters") from None


def parse_metadata(raw: bytes | str | dict[str, Any]) -> DocumentMetadata:
    """Metadata from JSON (or a decoded object): InputError naming the field when it is not valid."""
    try:
        if isinstance(raw, dict):
            metadata = msgspec.convert(raw, DocumentMetadata)
        else:
            metadata = _metadata_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InputError(f"bad document metadata: {exc}", field="metadata") from None
    return check_metadata(metadata)


NAMED_TEXT_KEYS = ("author", "path")
DATE_KEYS = {"created": "created_ms", "modified": "modified_ms", "created_ms": "created_ms",
             "modified_ms": "modified_ms"}  # fmt: skip


def metadata_from_pairs(pairs: Sequence[str]) -> DocumentMetadata:
    """Metadata from `key=value` strings (`docent ingest --meta`): `author`, `path`; `tags` (comma-separated,
    repeatable); `created` / `modified` (ISO 8601, UTC unless it says otherwise) or `created_ms` /
    `modified_ms` (epoch ms); any other key is one of `fields`. InputError naming the pair otherwise."""
    raw: dict[str, Any] = {}
    tags: list[str] = []
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"metadata must be key=value, not {pair[:80]!r}", field="metadata")
        if key in NAMED_TEXT_KEYS:
            raw[key] = value
        elif key == "tags":
            tags.extend(t.strip() for t in value.split(",") if t.strip())
        elif key in DATE_KEYS:
            raw[DATE_KEYS[key]] = _epoch_ms(key, value)
        else:
            fields[key] = value
    if tags:
        raw["tags"] = tags
    if fields:
        raw["fields"] = fields
    return parse_metadata(raw)


def _epoch_ms(key: str, value: str) -> int:
    if key.endswith("_ms"):
        if not value.strip().isdigit():
            raise InputError(f"metadata {key} must be epoch milliseconds, not {value[:40]!r}", field=key)
        return int(value)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"metadata {key} must be an ISO 8601 date, not {value[:40]!r}", field=key) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def check_metadata(metadata: DocumentMetadata) -> DocumentMetadata:
    """The bounds the struct's types cannot say: the encoded size (and a struct built in code re-checked)."""
    encoded = encode_metadata(metadata)
    if len(encoded) > MAX_METADATA_BYTES:
        raise InputError(f"document metadata is over {MAX_METADATA_BYTES} bytes", field="metadata")
    try:
        _metadata_decoder.decode(encoded)
    except msgspec.ValidationError as exc:
        raise InputError(f"bad document metadata: {exc}", field="metadata") from None
    return metadata


def encode_metadata(metadata: DocumentMetadata) -> str:
    return _metadata_encoder.encode(metadata).decode()


def decode_metadata(text: str | None) -> DocumentMetadata:
    return _metadata_decoder.decode(text) if text and text != "{}" else EMPTY_METADATA


def _prefix(expression: str, value: str) -> tuple[str, list[object]]:
    return f"substr({expression}, 1, ?) = ?", [len(value), value]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def filter_clause(filters: Filters, alias: str) -> tuple[str, list[object]]:
    """A SQL condition (with its parameters) over the catalog's documents row `alias`; "1" for none.

    Every value is a bound parameter; the only text put into the SQL is the alias and fixed JSON paths
    (field keys are validated by FIELD_KEY_PATTERN and also passed as parameters). Several filter sets
    are ANDed."""
    clauses = [_one_clause(f, alias) for f in all_of(filters)]
    sql = " AND ".join(f"({clause})" for clause, _ in clauses) or "1"
    return sql, [param for _, params in clauses for param in params]


def _one_clause(filters: SearchFilters, alias: str) -> tuple[str, list[object]]:
    meta = f"{alias}.metadata"
    parts: list[str] = []
    params: list[object] = []

    def add(sql: str, values: Sequence[object]) -> None:
        parts.append(sql)
        params.extend(values)

    if filters.doc_ids:
        add(f"{alias}.doc_id IN ({_marks(len(filters.doc_ids))})", list(filters.doc_ids))
    if filters.source is not None:
        add(f"{alias}.source = ?", [filters.source])
    if filters.source_prefix is not None:
        add(*_prefix(f"{alias}.source", filters.source_prefix))
    if filters.path_prefix is not None:
        add(*_prefix(f"COALESCE(json_extract({meta}, '$.path'), '')", filters.path_prefix))
    if filters.author is not None:
        add(f"json_extract({meta}, '$.author') = ?", [filters.author])
    if filters.tags_any:
        tags = list(filters.tags_any)
        add(f"EXISTS (SELECT 1 FROM json_each({meta}, '$.tags') WHERE value IN ({_marks(len(tags))}))", tags)
    for tag in filters.tags_all or ():
        add(f"EXISTS (SELECT 1 FROM json_each({meta}, '$.tags') WHERE value = ?)", [tag])
    for name, op, value in (
        ("created_ms", ">=", filters.created_from_ms),
        ("created_ms", "<", filters.created_before_ms),
        ("modified_ms", ">=", filters.modified_from_ms),
        ("modified_ms", "<", filters.modified_before_ms),
    ):
        if value is not None:
            add(f"json_extract({meta}, '$.{name}') {op} ?", [value])
    for key, text in filters.fields.items():
        add(f"json_extract({meta}, ?) = ?", [f'$.fields."{key}"', text])
    return (" AND ".join(parts) or "1"), params
