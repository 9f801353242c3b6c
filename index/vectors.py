"""The USearch vectors of one index version, saved as immutable generations.

Files in the version directory:

    generation              {"generation": n, "count": ..., "saved_at_ms": ...}, replaced atomically
    vectors-<n>.usearch     generation n, never modified once the pointer names it

Writer (ingest; one per version, under `index.versions.write_lock`):

    vectors = VectorIndex.open_writer(directory, ndim=384, dtype="f16")
    vectors.refresh()                 # another writer may have saved since: reload then
    vectors.add(keys, matrix); vectors.remove(old_keys)
    vectors.save()                    # new file, fsync, flip the pointer, delete old files after a grace

Reader (query workers): `VectorIndex.open_reader(...)` memory-maps the current generation (view=True,
read-only, shared page cache between processes) and `refresh()` stats the pointer at most every
`check_interval_ms` (a `search` calls it), reloading when a writer has saved. A search that started on an
old generation finishes on it: the old mapping stays valid after its file is unlinked.

`search(vector, k, allowed)` enforces access control inside the retriever: `allowed(keys) -> bool mask`
(visibility + ACL, from the catalog) is applied to a candidate list that grows k, 4k, 16k, ... until k keys
are allowed or the index is exhausted (the last round is an exact scan), so forbidden chunks that dominate
the neighbourhood cannot push readable ones out of the top k.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from usearch.index import Index

from index.keys import AllowedFn, Keys, Scored, as_keys
from index.versions import atomic_write, fsync_dir
from store.exceptions import IndexCorrupt, InputError

CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 64  # USearch widens it to the requested count when that is larger
OVERSAMPLE_FACTOR = 4
# Up to this many vectors a search is exact (USearch's brute force: ~1 ms at 10K, 24 ms at 50K, 384-d f16,
# 2 cores): HNSW's approximation cost .005 nDCG@10 on debfaq's 3.6K chunks, and a small index, or one whose
# graph another tenant's data degraded, gains nothing from it.
EXACT_SEARCH_MAX_VECTORS = 20_000
GENERATION_CHECK_MS = 200
GENERATION_GRACE_S = 60.0  # a superseded file outlives this so readers that just read the pointer can open it
GENERATION_FILE = "generation"
OPEN_ATTEMPTS = 3
FILE_PATTERN = re.compile(r"^vectors-(\d+)\.usearch$")


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    count: int
    saved_at_ms: int


_generation_decoder = msgspec.json.Decoder(Generation)


def vector_file(directory: Path, generation: int) -> Path:
    return directory / f"vectors-{generation}.usearch"


class VectorIndex:
    """One version's USearch index: a mutable in-memory writer, or a memory-mapped reader."""

    def __init__(
        self,
        directory: Path,
        *,
        ndim: int,
        dtype: str,
        writable: bool,
        check_interval_ms: int = GENERATION_CHECK_MS,
    ) -> None:
        self.directory = Path(directory)
        self.ndim = ndim
        self.dtype = dtype
        self.writable = writable
        self.check_interval_ms = check_interval_ms
        self._lock = threading.Lock()
        self._generation = -1
        self._pointer_stat: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._index = self._empty()
        self.refresh(now=True)

    @classmethod
    def open_writer(cls, directory: Path, *, ndim: int, dtype: str) -> VectorIndex:
        return cls(directory, ndim=ndim, dtype=dtype, writable=True)

    @classmethod
    def open_reader(
        cls, directory: Path, *, ndim: int, dtype: str, check_interval_ms: int = GENERATION_CHECK_MS
    ) -> VectorIndex:
        return cls(directory, ndim=ndim, dtype=dtype, writable=False, check_interval_ms=check_interval_ms)

    def _empty(self) -> Index:
        return Index(
            ndim=self.ndim, metric="cos", dtype=self.dtype, connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH,
        )  # fmt: skip

    @property
    def generation(self) -> int:
        """The generation loaded (0: nothing saved yet)."""
        return self._generation

    def __len__(self) -> int:
        return len(self._index)

    # -- generations -------------------------------------------------------------------------------

    @property
    def pointer_path(self) -> Path:
        return self.directory / GENERATION_FILE

    def _read_pointer(self) -> Generation | None:
        try:
            raw = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _generation_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise IndexCorrupt(f"unreadable generation pointer in {self.directory}: {exc}") from None

    def _stat_pointer(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.pointer_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, *, now: bool = False) -> bool:
        """Load the generation the pointer names if it is not the one loaded; True when it reloaded.

        The pointer is stat-ed at most every `check_interval_ms`, unless `now`.
        """
        started = time.monotonic()
        if not now and (started - self._checked_at) * 1000 < self.check_interval_ms:
            return False
        with self._lock:
            self._checked_at = started
            stat = self._stat_pointer()
            if stat == self._pointer_stat and self._generation >= 0:
                return False
            return self._load_current(stat)

    def discard_changes(self) -> None:
        """Writer: forget everything not saved (after a failed batch) by reloading the current generation."""
        with self._lock:
            self._generation, self._pointer_stat = -1, None
            self._load_current(self._stat_pointer())

    def _load_current(self, stat: tuple[int, int, int] | None) -> bool:
        for _ in range(OPEN_ATTEMPTS):
            pointer = self._read_pointer()
            if pointer is None:
                if self._generation == 0:
                    return False
                self._index, self._generation, self._pointer_stat = self._empty(), 0, stat
                return True
            if pointer.generation == self._generation:
                self._pointer_stat = stat
                return False
            try:
                index = self._open(vector_file(self.directory, pointer.generation))
            except FileNotFoundError:
                stat = self._stat_pointer()  # superseded and collected meanwhile: read the pointer again
                continue
            self._index, self._generation, self._pointer_stat = index, pointer.generation, stat
            return True
        raise IndexCorrupt(f"the generation pointer in {self.directory} names a missing file")

    def _open(self, path: Path) -> Index:
        if not path.exists():
            raise FileNotFoundError(path)
        index = Index.restore(str(path), view=not self.writable)
        if index is None:
            raise IndexCorrupt(f"not a USearch index: {path}")
        if index.ndim != self.ndim:
            raise IndexCorrupt(f"{path} holds {index.ndim}-d vectors, the manifest says {self.ndim}")
        return index

    def save(self) -> Generation:
        """Write the next generation, make it durable, point at it, then collect superseded files."""
        self._require_writer()
        with self._lock:
            generation = max(self._generation, 0) + 1
            path = vector_file(self.directory, generation)
            tmp = path.with_name(f".{path.name}.tmp")
            self._index.save(str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.directory)
            pointer = Generation(
                generation=generation, count=len(self._index), saved_at_ms=time.time_ns() // 10**6
            )
            atomic_write(self.pointer_path, msgspec.json.encode(pointer))
            self._generation, self._pointer_stat = generation, self._stat_pointer()
        self.collect_generations()
        return pointer

    def collect_generations(self, *, grace_s: float = GENERATION_GRACE_S) -> list[Path]:
        """Delete generation files older than the previous one and older than the grace period."""
        removed = []
        cutoff = time.time() - grace_s
        for path in self.directory.iterdir():
            match = FILE_PATTERN.match(path.name)
            stale_tmp = path.name.endswith(".usearch.tmp")
            if not (stale_tmp or (match and int(match.group(1)) < self._generation - 1)):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    # -- writing -----------------------------------------------------------------------------------

    def _require_writer(self) -> None:
        if not self.writable:
            raise InputError("this vector index was opened read-only")

    def add(self, keys: Sequence[int] | Keys, vectors: npt.NDArray[np.float32]) -> None:
        """Add (or replace) entries; re-adding a key after an interrupted attempt is not an error."""
        self._require_writer()
        keys_arr = as_keys(keys)
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(keys_arr), -1)
        if matrix.shape[1] != self.ndim:
            raise InputError(f"vectors have dimension {matrix.shape[1]}, the index {self.ndim}")
        if len(keys_arr) == 0:
            return
        if len(np.unique(keys_arr)) != len(keys_arr):
            raise InputError("duplicate keys in one add")
        present = self._index.contains(keys_arr) if len(self._index) else np.zeros(len(keys_arr), bool)
        if np.any(present):
            self._index.remove(keys_arr[present])
        self._index.add(keys_arr, matrix)

    def remove(self, keys: Sequence[int] | Keys) -> int:
        """Remove entries; unknown keys are ignored. Returns how many were present."""
        self._require_writer()
        keys_arr = as_keys(keys)
        if len(keys_arr) == 0 or len(self._index) == 0:
            return 0
        return int(np.sum(self._index.remove(keys_arr)))

    def keys(self) -> set[int]:
        """Every key held (for tests and consistency checks)."""
        return {int(key) for key in np.asarray(self._index.keys)}

    def get(self, keys: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        """Stored vectors (as float32) of the keys present."""
        found: dict[int, npt.NDArray[np.float32]] = {}
        for key in keys:
            if self._index.contains(key):
                found[int(key)] = np.asarray(self._index.get(key, dtype="f32"), dtype=np.float32)
        return found

    # -- searching ---------------------------------------------------------------------------------

    def search(
        self, vector: npt.NDArray[np.float32], k: int, allowed: AllowedFn | None = None
    ) -> list[Scored]:
        """The k nearest allowed keys with cosine similarity, best first."""
        if k < 1:
            raise InputError("k must be positive", field="k")
        if not self.writable:
            self.refresh()
        index = self._index  # a reload during this search does not affect it
        size = len(index)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.ndim:
            raise InputError(f"query vector has dimension {query.shape[0]}, the index {self.ndim}")
        count = min(k, size)
        small = size <= EXACT_SEARCH_MAX_VECTORS
        while count > 0:
            exhaustive = count >= size
            matches = index.search(query, size if exhaustive else count, exact=exhaustive or small)
            keys = np.asarray(matches.keys, dtype=np.uint64)
            similarities = 1.0 - np.asarray(matches.distances, dtype=np.float32)
            mask = np.ones(len(keys), bool) if allowed is None else allowed(keys)
            if int(mask.sum()) >= k or exhaustive:
                return [
                    (int(key), float(s))
                    for key, s in zip(keys[mask][:k], similarities[mask][:k], strict=True)
                ]
            count = min(count * OVERSAMPLE_FACTOR, size)
        return []
