"""bench/peers.py: fusion, exact dense, the tables, and each installed peer on a toy corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.peer_systems import Bm25sIndex, LanceIndex, TantivyIndex, exact_dense, rrf
from bench.peers import quality_table
from bench.peers_speed import round_robin, speed_tables

TEXTS = [
    "the cat sat on the mat",
    "dogs are loyal animals",
    "Document: Debian.\n\nhow to install debian packages with apt",
    "apt-get install foo bar",
]


def test_rrf_sums_reciprocal_ranks() -> None:
    assert rrf([[1, 2, 3], [3, 1]]) == [1, 3, 2]  # 1: 1/61 + 1/62; 3: 1/63 + 1/61
    assert rrf([[5], []]) == [5]


def test_exact_dense_orders_by_cosine() -> None:
    matrix = np.eye(4, dtype=np.float32)
    query = np.array([0.1, 0.9, 0.4, 0.0], dtype=np.float32)
    assert exact_dense(matrix, query, 3) == [1, 2, 0]
    assert exact_dense(matrix, query, 10) == [1, 2, 0, 3]


def test_round_robin_rotates_and_times_every_system() -> None:
    order: list[tuple[int, str]] = []
    systems = {name: (lambda n, name=name: order.append((n, name))) for name in "abc"}
    samples = round_robin(systems, 3)
    assert [name for _, name in order] == list("abcbcacab")
    assert all(len(v) == 3 for v in samples.values())


def test_tables() -> None:
    runs = {"ours hybrid": {"ndcg@10": 0.5, "recall@20": 0.75}, "bm25s": {"ndcg@10": 0.25, "recall@20": 0.5}}
    table = quality_table({"collections": {"toy": {"queries": 2, "runs": runs}}})
    assert "| toy (2 q) | nDCG@10 | 0.500 | 0.250 |" in table
    latency = {
        name: {"p50": 2.0, "p95": 4.0, "mean": 2.5} for name in ("ours hybrid", "ours bm25 stage", "bm25s")
    }
    speed = speed_tables({"size": 10, "queries": 1, "build_s": {"bm25s": 0.5}, "latency_ms": latency})
    assert "| bm25s | 0.50 | 20 |" in speed and "| bm25s | 2.0 | 4.0 | 2.5 | 1.00 | 1.00 |" in speed
    run = {"ours hybrid": {"p50": 2.0, "p95": 4.0}, "bm25s+usearch RRF": {"p50": 3.0, "p95": 2.0}}
    runs = speed_tables({"size": 10, "queries": 1, "build_s": {}, "latency_ms": latency, "runs": [run, run]})
    assert "| 2 | 2.0 / 4.0 | 3.0 / 2.0 | 1.50, 0.50 |" in runs


def test_bm25s_peer() -> None:
    bm25s = pytest.importorskip("bm25s")
    assert Bm25sIndex(bm25s, TEXTS).search("installing debian packages?")[0] == 2


def test_tantivy_peer(tmp_path: Path) -> None:
    tantivy = pytest.importorskip("tantivy")
    index = TantivyIndex(tantivy, TEXTS, tmp_path / "t")
    assert index.search('install "debian (packages')[0] == 2  # unbalanced syntax is parsed leniently


def test_lancedb_peer(tmp_path: Path) -> None:
    lancedb = pytest.importorskip("lancedb")
    vectors = np.eye(4, dtype=np.float32)
    index = LanceIndex(lancedb, TEXTS, vectors, tmp_path / "l")
    assert index.fts("debian packages")[0] == 2
    assert index.hybrid("debian packages", vectors[2])[0] == 2


def test_bm25s_stemmed_peer() -> None:
    bm25s = pytest.importorskip("bm25s")
    stemmer = pytest.importorskip("Stemmer")
    assert Bm25sIndex(bm25s, TEXTS, stemmer).search("installed packaging")[0] in (2, 3)
