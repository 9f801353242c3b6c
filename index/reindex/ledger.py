"""The build ledger `<version>/reindex.sqlite`: doc id -> the catalog content hash the version's entries
were built from. It is a rebuild's per-document checkpoint and what `verify` compares with the catalog."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from index.versions import version_path
from store.clock import now_ms
from store.exceptions import IndexError_
from store.settings import Settings

LEDGER_FILE = "reindex.sqlite"
LEDGER_BUSY_TIMEOUT_S = 30.0
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS built (doc_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
    "chunks INTEGER NOT NULL, runs INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL)"
)
_MARK = (
    "INSERT INTO built (doc_id, content_hash, chunks, runs, updated_at_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(doc_id) DO UPDATE SET content_hash = excluded.content_hash, chunks = excluded.chunks, "
    "runs = runs + excluded.runs, updated_at_ms = excluded.updated_at_ms"
)
_SEED = (
    "INSERT OR REPLACE INTO built (doc_id, content_hash, chunks, runs, updated_at_ms) VALUES (?, ?, ?, 0, ?)"
)


class Ledger:
    """`<version>/reindex.sqlite`: doc id -> the catalog content hash its entries were built from."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.path = version_path(settings, version) / LEDGER_FILE

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=LEDGER_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            yield db
        except sqlite3.Error as exc:
            raise IndexError_(f"reindex ledger {self.path}: {exc}") from exc
        finally:
            db.close()

    def all(self) -> dict[str, str]:
        with self._db() as db:
            return dict(db.execute("SELECT doc_id, content_hash FROM built").fetchall())

    def runs(self) -> dict[str, int]:
        """How often each document was embedded into this version by a build (a checkpoint audit)."""
        with self._db() as db:
            return dict(db.execute("SELECT doc_id, runs FROM built").fetchall())

    def mark(self, doc_id: str, content_hash: str, chunks: int, *, embedded: bool) -> None:
        with self._db() as db:
            db.execute(_MARK, (doc_id, content_hash, chunks, int(embedded), now_ms()))

    def mark_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        """Record entries a version already holds (not embedded by a build: `runs` stays 0)."""
        with self._db() as db:
            db.executemany(_SEED, [(doc_id, digest, chunks, now_ms()) for doc_id, digest, chunks in items])

    def record(self, marks: Sequence[tuple[str, str, int]], forgets: Sequence[str]) -> None:
        """`mark` (not embedded by a build) and `forget` for many documents in ONE transaction: a batch of
        ingested documents costs one commit, not one per document."""
        if not marks and not forgets:
            return
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_MARK, [(doc_id, digest, chunks, 0, now_ms()) for doc_id, digest, chunks in marks])
            db.executemany("DELETE FROM built WHERE doc_id = ?", [(doc_id,) for doc_id in forgets])
            db.execute("COMMIT")

    def forget(self, doc_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM built WHERE doc_id = ?", (doc_id,))
