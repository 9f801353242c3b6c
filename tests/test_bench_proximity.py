"""bench/proximity.py's proximity scores (BM25TP, ordered query bigrams, the prefix field) and rescoring."""

from __future__ import annotations

import pytest

from bench.proximity import Lists, Query, Terms, bigram_score, fuse, prefix_score, rescored, tp_score

TERMS = ["boundari", "layer"]
IDF = [2.0, 3.0]
QUERY = Terms(terms=TERMS, idf=IDF)
BM25 = (1.6, 0.35, 0.5)


def test_tp_rewards_close_pairs_of_different_terms_only() -> None:
    near = tp_score({"boundari": [4], "layer": [5]}, QUERY, 8, 1.0, 1.2)
    far = tp_score({"boundari": [4], "layer": [7]}, QUERY, 8, 1.0, 1.2)
    assert near > far > 0
    assert tp_score({"boundari": [4], "layer": [20]}, QUERY, 8, 1.0, 1.2) == 0.0  # beyond the window
    assert tp_score({"boundari": [1, 2, 3]}, QUERY, 8, 1.0, 1.2) == 0.0  # one term: no pair
    # adjacent pair: acc(boundari) = idf(layer) = 3, acc(layer) = 2; min(1, idf) = 1 for both
    assert near == pytest.approx(3 * 2.2 / (3 + 1.2) + 2 * 2.2 / (2 + 1.2))


def test_bigrams_count_the_query_order_within_the_window() -> None:
    assert bigram_score({"boundari": [4], "layer": [5]}, QUERY, 1, 1.0, 1.2) == pytest.approx(
        2.5 * 2.2 / (1 + 1.2)
    )
    assert bigram_score({"boundari": [5], "layer": [4]}, QUERY, 1, 1.0, 1.2) == 0.0  # reversed
    assert bigram_score({"boundari": [4], "layer": [6]}, QUERY, 1, 1.0, 1.2) == 0.0
    assert bigram_score({"boundari": [4], "layer": [6]}, QUERY, 3, 1.0, 1.2) > 0


def test_prefix_terms_score_as_a_second_field() -> None:
    assert prefix_score({"layer": 1}, QUERY, 1.2) == pytest.approx(3.0)
    assert prefix_score({}, QUERY, 1.2) == 0.0


def test_rescoring_reorders_the_candidates_and_off_changes_nothing() -> None:
    query = Query(terms=TERMS, idf=IDF, dense=[], bm25={BM25: [(1, 10.0), (2, 9.5)]})
    lists = Lists(
        qids=["q"], doc_of={1: "a", 2: "b"}, queries=[query], average=10.0, b=0.5,
        positions={1: {"boundari": [0], "layer": [9]}, 2: {"boundari": [3], "layer": [4]}},
        prefix={}, lengths={1: 10, 2: 10},
    )  # fmt: skip
    assert rescored(lists, query, BM25, ("off", 0, 0.0)) == [(1, 10.0), (2, 9.5)]
    assert [key for key, _ in rescored(lists, query, BM25, ("tp", 8, 1.0))] == [2, 1]


def test_the_prefix_field_and_the_third_list() -> None:
    query = Query(
        terms=TERMS, idf=IDF, dense=[(1, 0.9), (2, 0.8), (3, 0.1)], bm25={BM25: [(1, 10.0), (2, 9.5)]}
    )
    lists = Lists(
        qids=["q"], doc_of={1: "a", 2: "b", 3: "c"}, queries=[query], average=10.0, b=0.5,
        positions={1: {"boundari": [0], "layer": [9]}, 3: {"boundari": [3], "layer": [4]}},
        prefix={2: {"layer": 1}}, lengths={1: 10, 2: 10, 3: 10},
    )  # fmt: skip
    assert [key for key, _ in rescored(lists, query, BM25, ("prefix", 0, 1.0))] == [2, 1]
    assert rescored(lists, query, BM25, ("tp3", 8, 1.0)) == [(1, 10.0), (2, 9.5)]  # fusion's, not BM25's
    assert fuse(lists, query, query.bm25[BM25], BM25, ("off", 0, 0.0), 0.6)[0] == 1
    assert fuse(lists, query, query.bm25[BM25], BM25, ("tp3", 8, 5.0), 0.6)[0] == 3  # the close pair
