"""The vectors written since a version's last USearch base file: a flat, exactly searched delta.

A commit used to rewrite the whole USearch file (index.vectors): at 1M chunks, ~190 commits of 4,096
documents, each writing and fsyncing up to ~0.9 GB. Instead, once the base file is large, a commit writes
only a delta: the entries added since the base (keys and vectors, unit-normalised, float16 for the f16 and
i8 indexes, float32 for f32) and the base keys removed or replaced since (`removed`, sorted). A query
searches the base (HNSW) without the removed keys, and the delta exactly (a brute-force scan), and merges
the two lists by similarity. When the delta reaches DELTA_MAX_VECTORS entries, the writer folds it into
the base (one batched USearch add) and saves a new base file: each vector is inserted into the graph once,
and the bytes written per commit are bounded by the delta's size.

One file per delta, `vectors-<generation>.delta` (numpy's npz layout, uncompressed), immutable once the
generation pointer names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from usearch.index import MetricKind
from usearch.index import search as exact_search

from index.keys import Keys, as_keys
from store.exceptions import IndexCorrupt

# Entries (added + removed) a delta holds before the writer folds it into a new base file. An exact scan
# of 384-d float16 vectors took 4.5 ms at 16K and 17 ms at 64K on the shared 2-core box (USearch's kernel);
# a base of fewer entries is rewritten instead (cheap: <= 25 MB).
DELTA_MAX_VECTORS = 32_768
Matrix = npt.NDArray[np.floating]


def delta_file(directory: Path, generation: int) -> Path:
    return directory / f"vectors-{generation}.delta"


def storage_dtype(dtype: str) -> type[np.floating]:
    """The numpy dtype a delta stores its vectors in for an index of USearch dtype `dtype`."""
    return np.float32 if dtype == "f32" else np.float16


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class Delta:
    """Immutable: every change returns a new Delta (a reader may be scanning the old one)."""

    __slots__ = ("_order", "keys", "removed", "vectors")

    def __init__(self, keys: Keys, vectors: Matrix, removed: Keys) -> None:
        self.keys = keys
        self.vectors = vectors
        self.removed = removed  # sorted, unique: base keys no longer live
        self._order = np.argsort(keys, kind="stable")

    @classmethod
    def empty(cls, ndim: int, dtype: str) -> Delta:
        return cls(as_keys([]), np.zeros((0, ndim), dtype=storage_dtype(dtype)), as_keys([]))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def entries(self) -> int:
        """What the delta holds: added entries and removed base keys (the fold threshold counts both)."""
        return len(self.keys) + len(self.removed)

    # -- lookups -----------------------------------------------------------------------------------

    def _positions(self, keys: Keys) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """(present mask, row of each present key) for `keys` in this delta's added entries."""
        if not len(self.keys):
            return np.zeros(len(keys), bool), np.zeros(0, np.intp)
        sorted_keys = self.keys[self._order]
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        present = sorted_keys[at] == keys
        return present, self._order[at[present]]

    def contains(self, keys: Keys) -> npt.NDArray[np.bool_]:
        return self._positions(keys)[0]

    def is_removed(self, keys: Keys) -> npt.NDArray[np.bool_]:
        if not len(self.removed):
            return np.zeros(len(keys), bool)
        at = np.minimum(np.searchsorted(self.removed, keys), len(self.removed) - 1)
        return np.asarray(self.removed[at] == keys)

    def get(self, keys: Keys) -> dict[int, npt.NDArray[np.float32]]:
        present, rows = self._positions(keys)
        return {
            int(key): self.vectors[row].astype(np.float32)
            for key, row in zip(keys[present], rows, strict=True)
        }

    # -- changes -----------------------------------------------------------------------------------

    def with_added(
        self, keys: Keys, vectors: npt.NDArray[np.float32], in_base: npt.NDArray[np.bool_]
    ) -> Delta:
        """These entries added (replacing any of the same key); `in_base`: which keys the base holds."""
        stay = ~np.isin(self.keys, keys)
        return Delta(
            np.concatenate([self.keys[stay], keys]),
            np.concatenate([self.vectors[stay], _unit(vectors).astype(self.vectors.dtype)]),
            np.union1d(self.removed, keys[in_base]).astype(np.uint64),
        )

    def without(self, keys: Keys, in_base: npt.NDArray[np.bool_]) -> tuple[Delta, int]:
        """These keys removed; `in_base`: which keys the base holds. Returns (delta, how many were live)."""
        stay = ~np.isin(self.keys, keys)
        newly_removed = keys[in_base & ~self.is_removed(keys)]
        live = int(len(self.keys) - stay.sum()) + len(np.unique(newly_removed))
        removed = np.union1d(self.removed, newly_removed).astype(np.uint64)
        return Delta(self.keys[stay], self.vectors[stay], removed), live

    # -- search ------------------------------------------------------------------------------------

    def search(self, query: npt.NDArray[np.float32], count: int) -> tuple[Keys, npt.NDArray[np.float32]]:
        """The `count` most similar added entries, exactly: (keys, cosine similarities), best first."""
        count = min(count, len(self.keys))
        if count <= 0:
            return as_keys([]), np.zeros(0, np.float32)
        found = exact_search(
            self.vectors, query.astype(self.vectors.dtype), count, MetricKind.Cos, exact=True
        )
        rows = np.asarray(found.keys, dtype=np.int64)[:count]
        similarities = 1.0 - np.asarray(found.distances, dtype=np.float32)[:count]
        return self.keys[rows], similarities

    # -- files -------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write to `path` (through a temporary file), fsynced; the caller fsyncs the directory."""
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, keys=self.keys, vectors=self.vectors, removed=self.removed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, ndim: int) -> Delta:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, vectors, removed = data["keys"], data["vectors"], data["removed"]
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorrupt(f"unreadable vector delta {path}: {exc}") from None
        if vectors.ndim != 2 or vectors.shape[1] != ndim or len(vectors) != len(keys):
            raise IndexCorrupt(f"{path} holds vectors of shape {vectors.shape}, the manifest says {ndim}-d")
        return cls(as_keys(keys), vectors, as_keys(removed))
