"""The document catalog: one SQLite file (WAL) holding documents and, per index version, their chunks.

The catalog is the source of truth for what search may return. Every chunk row of an index version has a
`visible` flag; the USearch and Whoosh files of that version may hold more entries than are visible
(new entries written ahead of a switch, old ones waiting for garbage collection), and search drops every
key the catalog does not show as visible and readable. Replacing a document is therefore:

1. `add_hidden_chunks`: the new rows, invisible, are recorded before any index file is written, so a crash
   leaves a trail of what to clean up;
2. the index files gain the new entries;
3. `commit_documents`: ONE transaction makes the new rows visible, the old ones invisible and records the
   document (metadata, per-version ingest hash, plain text);
4. the index files drop the hidden entries, then `purge_hidden` deletes their rows.

Every change that hides or re-permissions chunks (`commit_documents` of a replaced document, `hide_document`,
`delete_everywhere`, `set_readers`) also records their ids in the `chunk_changes` journal, in the same
transaction: what was derived from them (the answer cache, `index.answer_cache`) reads it and drops its
entries, whoever made the change (ingest, sync, the documents API, reindex).

Tables: `documents` (one row per document, version-independent metadata), `document_texts` (the plain
text `read_document` shows), `version_documents` (what each index version holds of a document: the ingest
hash that makes re-ingesting unchanged content a no-op), `chunks` (version, key, ...; key is the 63-bit
USearch key, also the Whoosh unique id).

This module is blocking (sqlite3): async callers go through `store.blocking.run_blocking`. A `Catalog`
may be shared between threads: each thread gets its own connection. Only stdlib and msgspec are imported.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from store.catalog_schema import ADDED_COLUMNS, CHUNK_COLUMNS, DOCUMENT_COLUMNS, SCHEMA
from store.catalog_types import (
    CatalogDocument,
    ChunkChange,
    ChunkRow,
    DocumentCommit,
    DocumentFilter,
    IngestOutcome,
)
from store.clock import now_ms
from store.exceptions import ForbiddenError, IndexError_, InputError
from store.metadata import (
    Filters,
    all_of,
    decode_metadata,
    encode_metadata,
    filter_clause,
)

CATALOG_FILE = "catalog.sqlite"
BUSY_TIMEOUT_MS = 30_000
WAL_RETRY_MS = 10  # between attempts at the switch to WAL while another process holds the file
SQL_BATCH = 500  # keys per `IN (...)`: well under SQLite's variable limit
MAX_LIST_LIMIT = 1000
# The change journal (`chunk_changes`) keeps a row this long: longer than anything derived from a chunk may
# live (the answer cache's TTL is capped by it); each change trims at most JOURNAL_TRIM_ROWS old rows.
JOURNAL_KEEP_MS = 8 * 24 * 3600 * 1000
JOURNAL_TRIM_ROWS = 100

_readers_encoder = msgspec.json.Encoder()
_readers_decoder = msgspec.json.Decoder(tuple[str, ...])


def _batches(keys: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(keys), SQL_BATCH):
        yield keys[start : start + SQL_BATCH]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunk_row(row: tuple) -> ChunkRow:
    key, chunk_id, doc_id, ordinal, text, context, title, heading, tenant, readers, visible = row
    return ChunkRow(
        key=key, chunk_id=chunk_id, doc_id=doc_id, ordinal=ordinal, text=text, context=context, title=title,
        heading=heading, tenant=tenant, readers=_readers_decoder.decode(readers), visible=bool(visible),
    )  # fmt: skip


def _document(row: tuple) -> CatalogDocument:
    doc_id, title, source, fmt, content_hash, tenant, readers, size, updated_at, deleted, metadata = row
    return CatalogDocument(
        doc_id=doc_id, title=title, source=source, format=fmt, content_hash=content_hash, tenant=tenant,
        readers=_readers_decoder.decode(readers), size_bytes=size, updated_at_ms=updated_at,
        deleted=bool(deleted), metadata=decode_metadata(metadata),
    )  # fmt: skip


def _document_clause(where: DocumentFilter) -> tuple[str, list[object]]:
    parts: list[str] = ["deleted = 0"]
    params: list[object] = []
    for column, value in (("tenant", where.tenant), ("source", where.source)):
        if value is not None:
            parts.append(f"{column} = ?")
            params.append(value)
    if where.title_prefix:
        parts.append("substr(title, 1, ?) = ?")
        params += [len(where.title_prefix), where.title_prefix]
    if where.reader is not None:
        parts.append("EXISTS (SELECT 1 FROM json_each(documents.readers) WHERE value = ?)")
        params.append(where.reader)
    if where.updated_since_ms is not None:
        parts.append("updated_at >= ?")
        params.append(where.updated_since_ms)
    if all_of(where.metadata):
        clause, extra = filter_clause(where.metadata, "documents")
        parts.append(f"({clause})")
        params += extra
    return " AND ".join(parts), params


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not version:
        raise InputError("an index version name is required", field="version")
    return version


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL. Racing another process's first open, SQLite answers the switch with
    "database is locked" at once, without calling the busy handler, so it is retried up to BUSY_TIMEOUT_MS."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_MS / 1000)


def _journal(db: sqlite3.Connection, where: str, params: Sequence[object]) -> None:
    """Record the chunks a change touches, in the change's own transaction (`chunk_changes`)."""
    db.execute(
        f"INSERT INTO chunk_changes (tenant, chunk_id, at) SELECT DISTINCT tenant, chunk_id, ? FROM chunks "
        f"WHERE {where}",
        [now_ms(), *params],
    )
    db.execute(  # bounded work per change: the oldest rows, once older than what a reader may still need
        "DELETE FROM chunk_changes WHERE seq IN (SELECT seq FROM chunk_changes ORDER BY seq LIMIT ?) "
        "AND at < ?",
        (JOURNAL_TRIM_ROWS, now_ms() - JOURNAL_KEEP_MS),
    )


class Catalog:
    """The SQLite catalog. Blocking; thread-safe by giving every thread its own connection."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._watch: sqlite3.Connection | None = None  # reads only PRAGMA data_version (change_stamp)
        self._create_schema()

    @classmethod
    def for_data_dir(cls, data_path: Path) -> Catalog:
        return cls(Path(data_path) / CATALOG_FILE)

    # -- connections -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise IndexError_("the catalog is closed")
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        try:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            _use_wal(db)
            # FULL: a committed switch must survive power loss, because the next step deletes the old
            # entries from the index files.
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open the catalog {self.path}: {exc}") from exc
        with self._lock:
            self._connections.append(db)
        self._local.db = db
        return db

    def _create_schema(self) -> None:
        try:
            db = self._connection()
            db.executescript(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot create the catalog schema: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so it never deadlocks on an upgrade."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise IndexError_(f"catalog unavailable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise IndexError_(f"catalog commit failed: {exc}") from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise IndexError_(f"catalog read failed: {exc}") from exc

    def change_stamp(self) -> int:
        """A number that differs after any commit to the catalog file, by any process or connection (what
        a cache derived from the rows, e.g. index.access.AccessMap, compares before it is used): SQLite's
        data_version, read on a connection of its own that never writes, so every commit is another's."""
        with self._lock:
            if self._closed:
                raise IndexError_("the catalog is closed")
            try:
                if self._watch is None:
                    self._watch = sqlite3.connect(self.path, check_same_thread=False)
                    self._connections.append(self._watch)
                (version,) = self._watch.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error as exc:
                raise IndexError_(f"catalog read failed: {exc}") from exc
            return int(version)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    # -- documents ---------------------------------------------------------------------------------

    def get_document(self, doc_id: str) -> CatalogDocument | None:
        rows = self._read(f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE doc_id = ?", (doc_id,))
        return _document(rows[0]) if rows else None

    def list_documents(
        self, *, tenant: str | None = None, include_deleted: bool = False, limit: int = 100, offset: int = 0
    ) -> list[CatalogDocument]:
        if not 1 <= limit <= MAX_LIST_LIMIT or offset < 0:
            raise InputError(f"limit must be 1..{MAX_LIST_LIMIT} and offset >= 0", field="limit")
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if not include_deleted:
            where.append("deleted = 0")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {DOCUMENT_COLUMNS} FROM documents {clause} ORDER BY doc_id LIMIT ? OFFSET ?"
        return [_document(r) for r in self._read(sql, [*params, limit, offset])]

    def find_documents(
        self, where: DocumentFilter, *, limit: int = 100, offset: int = 0
    ) -> list[CatalogDocument]:
        """Live documents matching `where`, by doc id (readers are filtered here: JSON in the row)."""
        if not 1 <= limit <= MAX_LIST_LIMIT or offset < 0:
            raise InputError(f"limit must be 1..{MAX_LIST_LIMIT} and offset >= 0", field="limit")
        clause, params = _document_clause(where)
        sql = f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE {clause} ORDER BY doc_id LIMIT ? OFFSET ?"
        return [_document(r) for r in self._read(sql, [*params, limit, offset])]

    def document_versions(self, doc_id: str) -> dict[str, int]:
        """The index versions holding the document, with its visible chunks in each."""
        rows = self._read("SELECT version, chunks FROM version_documents WHERE doc_id = ?", (doc_id,))
        return {version: int(chunks) for version, chunks in rows}

    def set_readers(self, doc_id: str, readers: Sequence[str]) -> int:
        """ONE transaction: the document's readers and those of its chunk rows in every version (visible or
        not); the next search checks these. Returns the chunk rows changed."""
        encoded = _readers_encoder.encode(tuple(readers)).decode()
        with self._write() as db:
            _journal(db, "doc_id = ?", [doc_id])
            db.execute("UPDATE documents SET readers = ?, updated_at = ? WHERE doc_id = ?",
                       (encoded, now_ms(), doc_id))  # fmt: skip
            return db.execute("UPDATE chunks SET readers = ? WHERE doc_id = ?", (encoded, doc_id)).rowcount

    def delete_everywhere(self, doc_id: str) -> int:
        """`hide_document` in every version at once, in ONE transaction. Returns the rows hidden."""
        with self._write() as db:
            _journal(db, "doc_id = ? AND visible = 1", [doc_id])
            hidden = db.execute(
                "UPDATE chunks SET visible = 0 WHERE doc_id = ? AND visible = 1", (doc_id,)
            ).rowcount
            db.execute("DELETE FROM version_documents WHERE doc_id = ?", (doc_id,))
            db.execute("DELETE FROM document_texts WHERE doc_id = ?", (doc_id,))
            db.execute(
                "UPDATE documents SET deleted = 1, updated_at = ? WHERE doc_id = ?", (now_ms(), doc_id)
            )
        return hidden

    def record_outcomes(self, outcomes: Iterable[IngestOutcome]) -> None:
        values = [
            (o.doc_id, o.version, o.status, o.error_code, o.error, o.at_ms or now_ms()) for o in outcomes
        ]
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO ingest_outcomes VALUES (?, ?, ?, ?, ?, ?)", values)

    def last_outcome(self, doc_id: str) -> IngestOutcome | None:
        rows = self._read("SELECT * FROM ingest_outcomes WHERE doc_id = ?", (doc_id,))
        if not rows:
            return None
        doc, version, status, code, error, at = rows[0]
        return IngestOutcome(
            doc_id=doc, version=version, status=status, error_code=code, error=error, at_ms=at
        )

    def document_text(self, doc_id: str) -> str | None:
        rows = self._read("SELECT text FROM document_texts WHERE doc_id = ?", (doc_id,))
        return rows[0][0] if rows else None

    def check_owner(self, doc_id: str, tenant: str) -> None:
        """A live document id belongs to one tenant: another tenant may not overwrite it."""
        current = self.get_document(doc_id)
        if current is not None and not current.deleted and current.tenant != tenant:
            raise ForbiddenError(f"document {doc_id!r} belongs to another tenant", doc_id=doc_id)

    # -- one index version -------------------------------------------------------------------------

    def ingest_hash(self, version: str, doc_id: str) -> str | None:
        sql = "SELECT ingest_hash FROM version_documents WHERE version = ? AND doc_id = ?"
        rows = self._read(sql, (_check_version(version), doc_id))
        return rows[0][0] if rows else None

    def visible_chunks(self, version: str, doc_id: str) -> list[ChunkRow]:
        # INDEXED BY: left to itself SQLite's planner picks chunks_access (version, visible), a scan of
        # every visible row of the version for each document planned: ingest quadratic in the version's
        # size (119 ms a document at 15K rows, 0.06 ms through chunks_by_doc).
        sql = (
            f"SELECT {CHUNK_COLUMNS} FROM chunks INDEXED BY chunks_by_doc "
            "WHERE version = ? AND doc_id = ? AND visible = 1 ORDER BY ordinal"
        )
        return [_chunk_row(r) for r in self._read(sql, (_check_version(version), doc_id))]

    def hidden_keys(self, version: str) -> list[int]:
        """Keys of rows that are not visible: new entries of an unfinished switch, or old ones to collect."""
        sql = "SELECT key FROM chunks WHERE version = ? AND visible = 0"
        return [r[0] for r in self._read(sql, (_check_version(version),))]

    def add_hidden_chunks(self, version: str, rows: Sequence[ChunkRow]) -> None:
        """Record entries about to be written to the index files; a row already present is left alone."""
        _check_version(version)
        values = [
            (version, r.key, r.doc_id, r.chunk_id, r.ordinal, r.text, r.context, r.title, r.heading, r.tenant,
             _readers_encoder.encode(r.readers).decode())
            for r in rows
        ]  # fmt: skip
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO chunks (version, key, doc_id, chunk_id, ordinal, text, context, "
                "title, heading, tenant, readers, visible) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                values,
            )

    def commit_documents(self, version: str, commits: Sequence[DocumentCommit]) -> None:
        """The atomic switch, for every document in `commits` at once, in ONE transaction."""
        _check_version(version)
        updated_at = now_ms()
        with self._write() as db:
            for commit in commits:
                doc = commit.document
                missing = self._missing_keys(db, version, doc.doc_id, [k for k, _ in commit.visible])
                if missing:
                    raise IndexError_(
                        f"cannot show chunks that were never recorded: {sorted(missing)[:3]}",
                        doc_id=doc.doc_id,
                    )
                _journal(db, "version = ? AND doc_id = ? AND visible = 1", [version, doc.doc_id])
                db.execute(
                    "UPDATE chunks SET visible = 0 WHERE version = ? AND doc_id = ?", (version, doc.doc_id)
                )
                db.executemany(
                    "UPDATE chunks SET visible = 1, ordinal = ? WHERE version = ? AND key = ?",
                    [(ordinal, version, key) for key, ordinal in commit.visible],
                )
                db.execute(
                    "INSERT OR REPLACE INTO version_documents "
                    "(version, doc_id, ingest_hash, chunks, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (version, doc.doc_id, commit.ingest_hash, len(commit.visible), updated_at),
                )
                self._upsert_document(db, doc, updated_at)
                if commit.text is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO document_texts (doc_id, text) VALUES (?, ?)",
                        (doc.doc_id, commit.text),
                    )

    @staticmethod
    def _missing_keys(db: sqlite3.Connection, version: str, doc_id: str, keys: Sequence[int]) -> set[int]:
        found: set[int] = set()
        for batch in _batches(keys):
            sql = f"SELECT key FROM chunks WHERE version = ? AND doc_id = ? AND key IN ({_marks(len(batch))})"
            found.update(r[0] for r in db.execute(sql, [version, doc_id, *batch]))
        return set(keys) - found

    @staticmethod
    def _upsert_document(db: sqlite3.Connection, doc: CatalogDocument, updated_at: int) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO documents ({DOCUMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (doc.doc_id, doc.title, doc.source, doc.format, doc.content_hash, doc.tenant,
             _readers_encoder.encode(doc.readers).decode(), doc.size_bytes, updated_at,
             encode_metadata(doc.metadata)),
        )  # fmt: skip

    def hide_document(self, version: str, doc_id: str) -> int:
        """Delete a document: its rows in `version` become hidden (to be collected), it is marked deleted
        and its text is dropped. Returns how many rows were hidden."""
        _check_version(version)
        with self._write() as db:
            _journal(db, "version = ? AND doc_id = ? AND visible = 1", [version, doc_id])
            hidden = db.execute(
                "UPDATE chunks SET visible = 0 WHERE version = ? AND doc_id = ? AND visible = 1",
                (version, doc_id),
            ).rowcount
            db.execute("DELETE FROM version_documents WHERE version = ? AND doc_id = ?", (version, doc_id))
            db.execute("DELETE FROM document_texts WHERE doc_id = ?", (doc_id,))
            db.execute(
                "UPDATE documents SET deleted = 1, updated_at = ? WHERE doc_id = ?", (now_ms(), doc_id)
            )
        return hidden

    def purge_hidden(self, version: str, keys: Sequence[int]) -> int:
        """Forget hidden rows once the index files no longer hold them. Visible rows are never touched."""
        _check_version(version)
        purged = 0
        with self._write() as db:
            for batch in _batches(list(keys)):
                sql = (
                    f"DELETE FROM chunks WHERE version = ? AND visible = 0 AND key IN ({_marks(len(batch))})"
                )
                purged += db.execute(sql, [version, *batch]).rowcount
        return purged

    # -- the change journal -----------------------------------------------------------------------

    def last_change_seq(self) -> int:
        """The journal's highest sequence number yet (AUTOINCREMENT: it never goes back, even trimmed)."""
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'chunk_changes'")
        return int(rows[0][0]) if rows else 0

    def chunk_changes_after(self, seq: int, limit: int = SQL_BATCH) -> list[ChunkChange]:
        """Journal rows after `seq`, oldest first: chunks hidden (delete, replace) or re-permissioned."""
        sql = "SELECT seq, tenant, chunk_id FROM chunk_changes WHERE seq > ? ORDER BY seq LIMIT ?"
        return [ChunkChange(seq=q, tenant=t, chunk_id=c) for q, t, c in self._read(sql, (seq, limit))]

    # -- search side -------------------------------------------------------------------------------

    def readable_keys(
        self,
        version: str,
        keys: Sequence[int],
        tenant: str,
        reader_tokens: Iterable[str],
        filters: Filters = None,
    ) -> set[int]:
        """The subset of `keys` visible in `version` and readable by this tenant and these reader tokens,
        and, with `filters`, whose document matches them (ANDed: a filter only ever narrows)."""
        tokens = set(reader_tokens)
        readable: set[int] = set()
        join, condition, extra = "", "", list[object]()
        if all_of(filters):
            clause, extra = filter_clause(filters, "d")
            join = "JOIN documents d ON d.doc_id = c.doc_id AND d.deleted = 0 AND d.tenant = c.tenant"
            condition = f" AND ({clause})"
        for batch in _batches(list(keys)):
            sql = (
                f"SELECT c.key, c.readers FROM chunks c {join} WHERE c.version = ? AND c.visible = 1 "
                f"AND c.tenant = ? AND c.key IN ({_marks(len(batch))}){condition}"
            )
            for key, readers in self._read(sql, [version, tenant, *batch, *extra]):
                if not tokens.isdisjoint(_readers_decoder.decode(readers)):
                    readable.add(key)
        return readable

    def visible_access(self, version: str) -> list[tuple[int, str, str]]:
        """(key, tenant, readers as stored JSON) of every visible row of `version`, by key: what an
        access map (index.access) is built from."""
        sql = "SELECT key, tenant, readers FROM chunks WHERE version = ? AND visible = 1 ORDER BY key"
        return self._read(sql, (_check_version(version),))

    @staticmethod
    def decode_readers(readers: str) -> tuple[str, ...]:
        """A row's stored readers (as `visible_access` returns them)."""
        return _readers_decoder.decode(readers)

    def chunk_rows(self, version: str, keys: Sequence[int]) -> dict[int, ChunkRow]:
        """Visible rows for `keys` (hidden or unknown keys are absent)."""
        rows: dict[int, ChunkRow] = {}
        for batch in _batches(list(keys)):
            sql = (
                f"SELECT {CHUNK_COLUMNS} FROM chunks "
                f"WHERE version = ? AND visible = 1 AND key IN ({_marks(len(batch))})"
            )
            rows.update((r[0], _chunk_row(r)) for r in self._read(sql, [version, *batch]))
        return rows

    def chunks_by_id(self, chunk_ids: Sequence[str]) -> list[ChunkRow]:
        """Rows of any version, visible or not, whose chunk id is one of `chunk_ids` (what a log names)."""
        rows: list[ChunkRow] = []
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), SQL_BATCH):
            batch = ids[start : start + SQL_BATCH]
            sql = f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE chunk_id IN ({_marks(len(batch))})"
            rows.extend(_chunk_row(r) for r in self._read(sql, batch))
        return rows

    def visible_by_chunk_id(self, version: str, chunk_ids: Sequence[str]) -> dict[str, ChunkRow]:
        """Visible rows of `version` whose chunk id is one of `chunk_ids`, by chunk id."""
        _check_version(version)
        rows: dict[str, ChunkRow] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), SQL_BATCH):
            batch = ids[start : start + SQL_BATCH]
            sql = (
                f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE version = ? AND visible = 1 "
                f"AND chunk_id IN ({_marks(len(batch))})"
            )
            rows.update((row.chunk_id, row) for row in map(_chunk_row, self._read(sql, [version, *batch])))
        return rows

    def counts(self, version: str) -> tuple[int, int]:
        """(documents, visible chunks) held by a version."""
        sql = "SELECT COUNT(*), COALESCE(SUM(chunks), 0) FROM version_documents WHERE version = ?"
        documents, chunks = self._read(sql, (version,))[0]
        return int(documents), int(chunks)

    def version_doc_ids(self, version: str) -> list[str]:
        return [
            r[0] for r in self._read("SELECT doc_id FROM version_documents WHERE version = ?", (version,))
        ]

    def drop_version(self, version: str) -> None:
        """Forget every row of an index version (its files are removed by the caller)."""
        _check_version(version)
        with self._write() as db:
            db.execute("DELETE FROM chunks WHERE version = ?", (version,))
            db.execute("DELETE FROM version_documents WHERE version = ?", (version,))
