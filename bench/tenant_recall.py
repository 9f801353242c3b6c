"""Can one tenant degrade another's dense search? ANN recall@10 against exact search, before and after.

    .venv/bin/python -m bench.tenant_recall [--flood 3014]

Tenant A: the vaswani eval index's real chunk vectors (11,433; built by `docent eval` when missing), added
after tenant B's one document whose `--flood` chunks are the same text (one vector, repeated, at the centre
of A's vectors), as in issue 11's finding.
Both share one USearch index, as tenants of one index version do. For A's 93 query vectors: recall@10 of the
filtered search (only A's keys allowed) against the exact top 10 of A's vectors, in four setups:
  before   B's repeats all indexed, HNSW search (the first round: no dedupe, ANN at every size);
  dedupe   B's repeats stored once (index.entries.distinct_chunks), HNSW search;
  exact    B's repeats all indexed, exact search (index.vectors.EXACT_SEARCH_MAX_VECTORS);
  after    both (what ingest and search do now).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.retrieval_quality import SHARED, prepare
from index import vectors as vector_module
from index.keys import Keys
from index.vectors import VectorIndex
from store.settings import get_settings

Matrix = npt.NDArray[np.float32]
FLOOD_KEY_BASE = 1 << 60


def tenant_a(directory: Path) -> tuple[npt.NDArray[np.uint64], Matrix, Matrix]:
    prepared = prepare(get_settings(), directory)
    reader = VectorIndex.open_reader(
        prepared.settings.index_root / prepared.version, ndim=384, dtype=prepared.settings.vector_dtype
    )
    keys = sorted(reader.keys())
    got = reader.get(keys)
    queries = prepared.embedder.embed([q.text for q in prepared.collection.queries])
    return np.asarray(keys, dtype=np.uint64), np.stack([got[k] for k in keys]), queries


def build(path: Path, keys: npt.NDArray[np.uint64], vectors: Matrix, flood: int) -> VectorIndex:
    index = VectorIndex.open_writer(path, ndim=vectors.shape[1], dtype="f16")
    centre = vectors.mean(axis=0)  # the flood lands in the middle of A's space, and comes first
    repeated = np.tile(centre / np.linalg.norm(centre), (flood, 1))
    index.add(np.arange(FLOOD_KEY_BASE, FLOOD_KEY_BASE + flood, dtype=np.uint64), repeated)
    for start in range(0, len(keys), 512):  # A's documents arrive later, in ingest-sized batches
        index.add(keys[start : start + 512], vectors[start : start + 512])
    return index


def recall(index: VectorIndex, keys: npt.NDArray[np.uint64], vectors: Matrix, queries: Matrix) -> float:
    mine = set(keys.tolist())

    def allowed(candidates: Keys) -> npt.NDArray[np.bool_]:
        return np.fromiter((int(k) in mine for k in candidates), dtype=bool, count=len(candidates))

    shares = []
    for query in queries:
        exact = set(keys[np.argsort(-(vectors @ query))[:10]].tolist())
        found = {key for key, _ in index.search(query, 10, allowed)}
        shares.append(len(found & exact) / 10)
    return statistics.mean(shares)


def measure(flood: int) -> dict[str, float]:
    keys, vectors, queries = tenant_a(SHARED / "vaswani")
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, copies, exact_max in (
            ("before", flood, 0), ("dedupe", 1, 0), ("exact", flood, None), ("after", 1, None),
        ):  # fmt: skip
            original = vector_module.EXACT_SEARCH_MAX_VECTORS
            vector_module.EXACT_SEARCH_MAX_VECTORS = original if exact_max is None else exact_max
            try:
                index = build(Path(scratch) / name, keys, vectors, copies)
                figures[name] = recall(index, keys, vectors, queries)
            finally:
                vector_module.EXACT_SEARCH_MAX_VECTORS = original
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=3014)
    args = parser.parse_args(argv)
    figures = measure(args.flood)
    print("| setup | tenant A's ANN recall@10 against exact |\n| --- | --- |")
    for name, value in figures.items():
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
