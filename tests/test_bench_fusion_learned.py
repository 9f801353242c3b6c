"""bench/fusion_learned.py's features and ranker, and bench/retrieval_quality.py's grade inversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.fusion_learned import FEATURE_SETS, Query, features, ranked, train
from bench.retrieval_quality import collection_args, inverted_grades
from index.evaluate import Collection

DENSE = [(1, 0.9), (2, 0.8), (3, 0.5)]
BM25 = [(3, 12.0), (4, 3.0)]


def test_candidates_are_the_union_and_a_missing_score_is_the_list_floor() -> None:
    keys, rows = features(DENSE, BM25, 4, ())
    assert keys == [1, 2, 3, 4]
    zd, zb = rows[:, 0], rows[:, 1]
    assert zd[3] == zd.min() == zd[2]  # key 4 is not in the dense list: the dense floor
    assert zb[0] == zb[1] == zb[3] == -1.0 and zb[2] == 1.0  # two BM25 scores standardise to -1, 1


def test_every_feature_set_gives_one_row_per_candidate() -> None:
    widths = {name: features(DENSE, BM25, 4, kinds)[1].shape for name, kinds in FEATURE_SETS.items()}
    assert widths == {"learned z": (4, 2), "learned z+cos+query": (4, 11), "learned z+ranks": (4, 5)}
    _, rows = features(DENSE, BM25, 4, ("ranks",))
    assert rows[:, 4].tolist() == [0.0, 0.0, 1.0, 0.0]  # only key 3 is in both lists


def test_the_ranker_learns_which_list_to_trust() -> None:
    rng = np.random.default_rng(1)
    queries = []
    for _ in range(40):  # the relevant candidate always has the best second feature, never the first
        rows = rng.normal(size=(6, 2))
        rows[0, 1] = rows[:, 1].max() + 1.0
        rows[0, 0] = rows[:, 0].min() - 1.0
        queries.append(Query(list(range(6)), rows, np.arange(6) == 0))
    weights = train(queries)
    assert weights[1] > 0 > weights[0]
    assert all(ranked(q, weights)[0] == 0 for q in queries)


def test_inverted_grades_turn_the_scale_round() -> None:
    collection = Collection(
        name="c", corpus=(), queries=(), qrels={"1": {"a": 1, "b": 4}, "2": {"c": 2, "d": 3}}
    )
    assert inverted_grades(collection).qrels == {"1": {"a": 4, "b": 1}, "2": {"c": 3, "d": 2}}


def test_the_collection_benches_command_line() -> None:
    args = collection_args(
        "doc", [Path("a")], ["--inverted-grades", "cranfield", "--gaps"], inverted=True, flags=("gaps",)
    )
    assert args.directories == [Path("a")] and args.inverted_grades == ["cranfield"] and args.gaps
    assert not hasattr(collection_args("doc", [], [], flags=()), "inverted_grades")
