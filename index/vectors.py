"""The USearch vectors of one index version, saved as immutable generations.

Files in the version directory:

    generation              {"generation": n, "count": ..., "saved_at_ms": ..., "base": b, "delta": ...},
                            replaced atomically
    vectors-<b>.usearch     the base: the HNSW graph saved at generation b, never modified once named
    vectors-<n>.delta       generation n's delta (index.vector_delta): the entries added and the base keys
                            removed since b, searched exactly beside the base; absent when "delta" is false

Writer (ingest; one per version, under `index.versions.write_lock`):

    vectors = VectorIndex.open_writer(directory, ndim=384, dtype="f16")
    vectors.refresh()                 # another writer may have saved since: reload then
    vectors.add(keys, matrix); vectors.remove(old_keys)
    vectors.save()                    # a new delta file (or, once the delta is large or the base small,
                                      # the delta folded into a new base file), fsync, flip the pointer,
                                      # delete superseded files after a grace
    vectors.compact()                 # fold whatever delta there is into a new base (after a bulk load)

A commit therefore writes at most DELTA_MAX_VECTORS entries' worth of delta, not the whole graph (at 1M
chunks the base file is ~0.9 GB, and a bulk load commits ~190 times), and each vector is inserted into the
HNSW graph once, in the batched add of a fold.

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
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from usearch.index import Index

from index.keys import AllowedFn, Keys, Scored, as_keys
from index.vector_delta import DELTA_MAX_VECTORS, Delta, delta_file
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
FILE_PATTERN = re.compile(r"^vectors-(\d+)\.(usearch|delta)$")


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    count: int
    saved_at_ms: int
    base: int = 0  # the generation whose .usearch file is the base; 0 (older pointers): this one
    delta: bool = False  # whether vectors-<generation>.delta exists

    @property
    def base_generation(self) -> int:
        return self.base or self.generation


_generation_decoder = msgspec.json.Decoder(Generation)


def vector_file(directory: Path, generation: int) -> Path:
    return directory / f"vectors-{generation}.usearch"


class VectorIndex:
    """One version's vectors: a base USearch index (in memory for the writer, memory-mapped for readers)
    and the delta since it (index.vector_delta)."""

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
        self._base_generation = -1
        self._pointer_stat: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        # (base, delta), swapped as one: a search reads both from the same generation
        self._state: tuple[Index, Delta] = (self._empty(), Delta.empty(ndim, dtype))
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

    @property
    def delta_entries(self) -> int:
        """Entries held by the delta (added + removed since the base file)."""
        return self._state[1].entries

    def __len__(self) -> int:
        base, delta = self._state
        return len(base) - len(delta.removed) + len(delta)

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
            self._generation, self._base_generation, self._pointer_stat = -1, -1, None
            self._load_current(self._stat_pointer())

    def _load_current(self, stat: tuple[int, int, int] | None) -> bool:
        for _ in range(OPEN_ATTEMPTS):
            pointer = self._read_pointer()
            if pointer is None:
                if self._generation == 0:
                    return False
                self._state = (self._empty(), Delta.empty(self.ndim, self.dtype))
                self._generation, self._base_generation, self._pointer_stat = 0, 0, stat
                return True
            if pointer.generation == self._generation:
                self._pointer_stat = stat
                return False
            base_generation = pointer.base_generation
            try:
                base = self._state[0]
                if base_generation != self._base_generation:  # a delta alone keeps the mapped base
                    base = self._open(vector_file(self.directory, base_generation))
                delta = Delta.empty(self.ndim, self.dtype)
                if pointer.delta:
                    delta = Delta.load(delta_file(self.directory, pointer.generation), self.ndim)
            except FileNotFoundError:
                stat = self._stat_pointer()  # superseded and collected meanwhile: read the pointer again
                continue
            self._state = (base, delta)
            self._generation, self._base_generation = pointer.generation, base_generation
            self._pointer_stat = stat
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

    def save(self, *, fold: bool | None = None) -> Generation:
        """Write the next generation, make it durable, point at it, then collect superseded files.

        `fold` (default: when the delta holds DELTA_MAX_VECTORS entries or the base fewer): the delta is
        folded into a new base file; otherwise only the delta is written."""
        self._require_writer()
        with self._lock:
            generation = max(self._generation, 0) + 1
            base, delta = self._state
            if fold is None:
                fold = delta.entries >= DELTA_MAX_VECTORS or len(base) < DELTA_MAX_VECTORS
            if fold:
                self._save_base(generation)
            else:
                delta.save(delta_file(self.directory, generation))
                fsync_dir(self.directory)
            pointer = Generation(
                generation=generation, count=len(self), saved_at_ms=time.time_ns() // 10**6,
                base=self._base_generation if not fold else generation, delta=not fold,
            )  # fmt: skip
            atomic_write(self.pointer_path, msgspec.json.encode(pointer))
            self._generation, self._pointer_stat = generation, self._stat_pointer()
            self._base_generation = pointer.base_generation
        self.collect_generations()
        return pointer

    def compact(self) -> Generation | None:
        """Fold the delta into a new base file (after a bulk load: queries then search one graph)."""
        self._require_writer()
        return self.save(fold=True) if self._state[1].entries else None

    def _save_base(self, generation: int) -> None:
        """The delta folded into the in-memory base (one batched add), saved as generation's base file."""
        base, delta = self._state
        if len(delta.removed):
            base.remove(delta.removed)
        if len(delta):
            base.add(delta.keys, delta.vectors.astype(np.float32))
        self._state = (base, Delta.empty(self.ndim, self.dtype))
        self._base_generation = -1  # the in-memory base no longer matches any file until this one is named
        path = vector_file(self.directory, generation)
        tmp = path.with_name(f".{path.name}.tmp")
        base.save(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)

    def collect_generations(self, *, grace_s: float = GENERATION_GRACE_S) -> list[Path]:
        """Delete files older than the previous generation and the grace period, but the current base."""
        removed = []
        cutoff = time.time() - grace_s
        for path in self.directory.iterdir():
            match = FILE_PATTERN.match(path.name)
            stale_tmp = path.name.startswith(".vectors-") and path.name.endswith(".tmp")
            if match and (
                int(match.group(1)) >= self._generation - 1
                or (match.group(2) == "usearch" and int(match.group(1)) == self._base_generation)
            ):
                continue
            if not (stale_tmp or match):
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

    def _in_base(self, keys: Keys) -> npt.NDArray[np.bool_]:
        base = self._state[0]
        if not len(base) or not len(keys):
            return np.zeros(len(keys), bool)
        return np.asarray(base.contains(keys), dtype=bool).reshape(-1)

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
        base, delta = self._state
        self._state = (base, delta.with_added(keys_arr, matrix, self._in_base(keys_arr)))

    def remove(self, keys: Sequence[int] | Keys) -> int:
        """Remove entries; unknown keys are ignored. Returns how many were present."""
        self._require_writer()
        keys_arr = np.unique(as_keys(keys))
        if len(keys_arr) == 0 or len(self) == 0:
            return 0
        base, delta = self._state
        delta, live = delta.without(keys_arr, self._in_base(keys_arr))
        self._state = (base, delta)
        return live

    def keys(self) -> set[int]:
        """Every key held (for tests and consistency checks)."""
        base, delta = self._state
        removed = {int(key) for key in delta.removed}
        held = {int(key) for key in np.asarray(base.keys)} - removed
        return held | {int(key) for key in delta.keys}

    def get(self, keys: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        """Stored vectors (as float32) of the keys present."""
        base, delta = self._state
        keys_arr = as_keys(keys)
        found = delta.get(keys_arr)
        rest = keys_arr[~delta.contains(keys_arr) & ~delta.is_removed(keys_arr)]
        for key in rest.tolist():
            if base.contains(key):
                found[int(key)] = np.asarray(base.get(key, dtype="f32"), dtype=np.float32)
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
        base, delta = self._state  # a reload during this search does not affect it
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.ndim:
            raise InputError(f"query vector has dimension {query.shape[0]}, the index {self.ndim}")
        base_allowed = allowed
        if len(delta.removed):
            base_allowed = _without_removed(delta, allowed)
        size = len(base)
        small = size <= EXACT_SEARCH_MAX_VECTORS

        def in_base(count: int) -> tuple[Keys, npt.NDArray[np.float32]]:
            matches = base.search(query, count, exact=count >= size or small)
            keys = np.asarray(matches.keys, dtype=np.uint64)
            return keys, 1.0 - np.asarray(matches.distances, dtype=np.float32)

        found = _allowed_top(in_base, size, k, base_allowed)
        if not len(delta):
            return found
        from_delta = _allowed_top(lambda count: delta.search(query, count), len(delta), k, allowed)
        merged = sorted([*found, *from_delta], key=lambda hit: -hit[1])
        return merged[:k]


Candidates = Callable[[int], tuple[Keys, npt.NDArray[np.float32]]]  # count -> (keys, similarities)


def _allowed_top(candidates: Candidates, size: int, k: int, allowed: AllowedFn | None) -> list[Scored]:
    """The k best allowed of a list that grows k, 4k, 16k, ... until k pass or all `size` were seen."""
    count = min(k, size)
    while count > 0:
        exhaustive = count >= size
        keys, similarities = candidates(size if exhaustive else count)
        mask = np.ones(len(keys), bool) if allowed is None else allowed(keys)
        if int(mask.sum()) >= k or exhaustive:
            return [
                (int(key), float(s)) for key, s in zip(keys[mask][:k], similarities[mask][:k], strict=True)
            ]
        count = min(count * OVERSAMPLE_FACTOR, size)
    return []


def _without_removed(delta: Delta, allowed: AllowedFn | None) -> AllowedFn:
    """`allowed` that also refuses the base keys the delta removed."""

    def check(keys: Keys) -> npt.NDArray[np.bool_]:
        live = ~delta.is_removed(keys)
        return live if allowed is None else live & allowed(keys)

    return check
