"""Who may read which chunk of an index version: the `allowed(keys)` mask both retrievers apply.

    access = AccessMap(catalog, version)                    # one per Searcher (index version)
    allowed = AccessFilter(catalog, version, principal, filters, access=access)
    mask = allowed(keys)                                    # visible, this tenant, a shared reader token

The catalog (store.catalog) is the source of truth. Asking it per candidate list (`readable_keys`: an
SQL `IN (...)` over a hundred keys and a JSON decode a row) was a quarter of a hybrid query's time at 100K
chunks, so an `AccessMap` holds the version's visible rows as numpy arrays instead: the keys, sorted, and
each row's tenant and readers as small integer codes (an enterprise has few distinct reader lists, many
chunks each). A candidate list is then one `searchsorted` and two gathers.

Freshness: every `snapshot()` (once per query) compares `catalog.change_stamp()` (SQLite's data_version:
any commit, by any process) with the one the arrays were built at and rebuilds them when it moved, so a
commit, a delete or a readers change is seen by the very next query, as with the per-query SQL. A rebuild
reads (key, tenant, readers) of every visible row from a covering index: ~0.1 CPU s at 100K chunks, once
per catalog commit and query process (so ~1 s at 1M: a shard that takes commits every few seconds wants an
incremental refresh, not written yet).
A query keeps the snapshot it started with, so both retrievers and the final check agree.

With metadata filters, `AccessFilter` asks the catalog as before (`readable_keys` with the filters, which
re-checks visibility and the ACL in the same query), memoised over the query's rounds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from index.keys import Keys
from index.types import Principal
from store.catalog import Catalog
from store.metadata import Filters, all_of

READER_CACHE_SIZE = 256  # (tenant, reader tokens) -> the reader lists they open, per snapshot
Mask = npt.NDArray[np.bool_]


class AccessSnapshot:
    """The visible rows of one version at one catalog state: keys (sorted) with tenant and readers codes."""

    def __init__(self, stamp: int, rows: list[tuple[int, str, str]], catalog: Catalog) -> None:
        self.stamp = stamp
        self.keys: Keys = np.fromiter((row[0] for row in rows), dtype=np.uint64, count=len(rows))
        tenants: dict[str, int] = {}
        readers: dict[str, int] = {}
        self.tenant_of = np.fromiter(
            (tenants.setdefault(row[1], len(tenants)) for row in rows), dtype=np.int32, count=len(rows)
        )
        self.readers_of = np.fromiter(
            (readers.setdefault(row[2], len(readers)) for row in rows), dtype=np.int32, count=len(rows)
        )
        self.tenants = tenants
        self.reader_lists = [frozenset(catalog.decode_readers(stored)) for stored in readers]
        self._opened: OrderedDict[tuple[str, frozenset[str]], Mask | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def _readers_open(self, tenant: str, tokens: frozenset[str]) -> Mask | None:
        """By readers code: whether that reader list shares a token with `tokens`; None: no tenant row."""
        if tenant not in self.tenants:
            return None
        key = (tenant, tokens)
        with self._lock:
            if key in self._opened:
                self._opened.move_to_end(key)
                return self._opened[key]
        opened = np.fromiter(
            (not tokens.isdisjoint(listed) for listed in self.reader_lists), dtype=bool,
            count=len(self.reader_lists),
        )  # fmt: skip
        with self._lock:
            self._opened[key] = opened
            while len(self._opened) > READER_CACHE_SIZE:
                self._opened.popitem(last=False)
        return opened

    def allowed(self, keys: Keys, tenant: str, tokens: frozenset[str]) -> Mask:
        """For each key: visible, of `tenant`, and readable through one of `tokens`."""
        opened = self._readers_open(tenant, tokens)
        keys = np.asarray(keys, dtype=np.uint64)
        if opened is None or not len(self.keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        mine = self.tenant_of[at] == self.tenants[tenant]
        return found & mine & opened[self.readers_of[at]]  # type: ignore[no-any-return]


class AccessMap:
    """The current `AccessSnapshot` of one index version, rebuilt when the catalog has changed."""

    def __init__(self, catalog: Catalog, version: str) -> None:
        self.catalog = catalog
        self.version = version
        self._snapshot: AccessSnapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> AccessSnapshot:
        stamp = self.catalog.change_stamp()
        current = self._snapshot
        if current is not None and current.stamp == stamp:
            return current
        with self._lock:  # one rebuild at a time; the others wait for it rather than rebuild too
            current = self._snapshot
            if current is None or current.stamp != stamp:
                stamp = self.catalog.change_stamp()  # read before the rows: a later commit rebuilds again
                current = AccessSnapshot(stamp, self.catalog.visible_access(self.version), self.catalog)
                self._snapshot = current
            return current


class AccessFilter:
    """`allowed(keys)` for one query: visible in the version, readable by the principal and, with
    `filters`, of a document matching them (catalog; the filters are ANDed, so they only narrow).

    Both retrievers grow their candidate lists until k keys pass (index.vectors, index.lexical), so a
    filter is a mask inside retrieval, never a trim of a shared top k. Without filters and with an
    `access` map the mask comes from the query's snapshot; otherwise from the catalog, memoised, so the
    retrievers' oversampling rounds and the two retrievers share the lookups.
    """

    def __init__(
        self,
        catalog: Catalog,
        version: str,
        principal: Principal,
        filters: Filters = None,
        *,
        access: AccessMap | None = None,
    ) -> None:
        self.catalog = catalog
        self.version = version
        self.principal = principal
        self.filters = all_of(filters)
        self.tokens = principal.reader_tokens()
        self._token_set = frozenset(self.tokens)
        self._snapshot = access.snapshot() if access is not None and not self.filters else None
        self._known: dict[int, bool] = {}

    def __call__(self, keys: Keys) -> Mask:
        if self._snapshot is not None:
            return self._snapshot.allowed(keys, self.principal.tenant, self._token_set)
        unknown = [int(key) for key in keys if int(key) not in self._known]
        if unknown:
            readable = self.catalog.readable_keys(
                self.version, unknown, self.principal.tenant, self.tokens, self.filters
            )
            self._known.update((key, key in readable) for key in unknown)
        return np.fromiter((self._known[int(key)] for key in keys), dtype=bool, count=len(keys))
