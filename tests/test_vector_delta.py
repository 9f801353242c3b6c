"""Vector deltas (index.vector_delta): a commit on a large base writes only what changed since it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import index.vectors as vectors_module
from index.vector_delta import delta_file
from index.vectors import VectorIndex, vector_file

DIMENSION = 16


def _unit_rows(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rows = np.random.default_rng(seed).standard_normal((n, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _exact(held: dict[int, npt.NDArray[np.float32]], query: npt.NDArray[np.float32], k: int) -> list[int]:
    keys = sorted(held)
    scores = np.stack([held[key] for key in keys]) @ query
    return [keys[i] for i in np.argsort(-scores, kind="stable")[:k]]


def _saved_base(directory: Path, dtype: str, seed: int) -> tuple[VectorIndex, npt.NDArray[np.float32]]:
    """A writer whose first save holds keys 1..40 (a base file), and 50 unit rows (key n: row n - 1)."""
    rows = _unit_rows(50, seed=seed)
    writer = VectorIndex.open_writer(directory, ndim=DIMENSION, dtype=dtype)
    writer.add(range(1, 41), rows[:40])
    writer.save()
    return writer, rows


@pytest.fixture
def small_delta(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(vectors_module, "DELTA_MAX_VECTORS", 8)
    return 8


def test_commits_on_a_large_base_write_deltas_and_readers_see_base_plus_delta(
    tmp_path: Path, small_delta: int
) -> None:
    rows = _unit_rows(60)
    writer = VectorIndex.open_writer(tmp_path, ndim=DIMENSION, dtype="f16")
    reader = VectorIndex.open_reader(tmp_path, ndim=DIMENSION, dtype="f16", check_interval_ms=0)
    writer.add(range(1, 41), rows[:40])
    first = writer.save()  # the base is small: folded into a base file
    assert first.base == 1 and not first.delta and writer.delta_entries == 0
    base_bytes = vector_file(tmp_path, 1).stat().st_size

    writer.add(range(41, 44), rows[40:43])
    writer.remove([1, 2])  # base keys: tombstoned in the delta
    writer.add([3], rows[50:51])  # a base key replaced: its new vector lives in the delta
    second = writer.save()
    assert second.base == 1 and second.delta and writer.delta_entries == 7
    assert not vector_file(tmp_path, 2).exists() and delta_file(tmp_path, 2).stat().st_size < base_bytes

    held = {key: rows[key - 1] for key in range(3, 44)}
    held[3] = rows[50]
    assert reader.refresh(now=True)  # keys() and len() read what is loaded; a search refreshes first
    assert reader.keys() == set(held) and len(reader) == len(held) == len(writer)
    for query in _unit_rows(5, seed=9):
        assert [key for key, _ in reader.search(query, 10)] == _exact(held, query, 10)
    assert reader.search(rows[50], 1)[0][0] == 3 and reader.search(rows[0], 40)[0][0] != 1
    assert reader.get([3])[3] == pytest.approx(rows[50], abs=1e-2) and reader.get([1]) == {}

    writer.add(range(44, 47), rows[43:46])  # 10 entries now: the next save folds
    third = writer.save()
    assert third.base == 3 and not third.delta and writer.delta_entries == 0
    for key in range(44, 47):
        held[key] = rows[key - 1]
    assert reader.refresh(now=True) and reader.keys() == set(held) and reader.generation == 3
    assert reader.search(rows[44], 1)[0][0] == 45

    reopened = VectorIndex.open_writer(tmp_path, ndim=DIMENSION, dtype="f16")
    assert reopened.keys() == set(held)


def test_a_delta_search_checks_access_and_the_writer_discards_an_unsaved_delta(
    tmp_path: Path, small_delta: int
) -> None:
    writer, rows = _saved_base(tmp_path, "f32", seed=3)
    writer.add(range(41, 46), rows[40:45])
    writer.save()
    query = rows[41]  # key 42's vector
    found = writer.search(query, 3, lambda keys: keys % 2 == 0)
    assert found[0][0] == 42 and all(key % 2 == 0 for key, _ in found)

    writer.add(range(46, 49), rows[45:48])
    writer.remove([41])
    assert len(writer) == 47
    writer.discard_changes()
    assert len(writer) == 45 and writer.get([46]) == {} and {41} <= writer.keys()
    reader = VectorIndex.open_reader(tmp_path, ndim=DIMENSION, dtype="f32")
    assert reader.keys() == set(range(1, 46))


def test_compact_folds_the_delta_and_old_files_are_collected_but_the_base(
    tmp_path: Path, small_delta: int
) -> None:
    writer, rows = _saved_base(tmp_path, "f16", seed=5)
    for n in range(41, 44):  # three delta generations on base 1
        writer.add([n], rows[n - 1 : n])
        writer.save()
    writer.collect_generations(grace_s=0)
    names = sorted(p.name for p in tmp_path.glob("vectors-*"))
    assert names == ["vectors-1.usearch", "vectors-3.delta", "vectors-4.delta"]  # base + the last two
    assert writer.compact() is not None and writer.compact() is None  # nothing left to fold
    writer.collect_generations(grace_s=0)
    assert sorted(p.name for p in tmp_path.glob("vectors-*")) == ["vectors-4.delta", "vectors-5.usearch"]
    reader = VectorIndex.open_reader(tmp_path, ndim=DIMENSION, dtype="f16")
    assert reader.keys() == set(range(1, 44)) and reader.delta_entries == 0
