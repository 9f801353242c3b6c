"""LexicalIndex.optimize: every bulk segment merged into one; the same matches, deleted entries stay gone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.lexical import LexicalIndex
from tests.test_lexical_segment import QUERIES, _build, _corpus

TOKENS = ("*", "group:x")


def _results(lexical: LexicalIndex, k: int = 2000) -> dict[str, list[tuple[int, float]]]:
    return {query: lexical.search(query, k, tenant="t", reader_tokens=TOKENS) for query in QUERIES}


def test_one_segment_scores_exactly_as_the_segments_it_replaced(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, check_interval_ms=0)
    rng = np.random.default_rng(5)
    for start, count in ((0, 400), (400, 30), (430, 250)):
        lexical.apply(add=_corpus(rng, start, count))
    assert len(lexical.ix._segments()) == 3
    before = _results(lexical)
    assert lexical.optimize() == 1 and len(lexical.ix._segments()) == 1
    after = _results(lexical)
    assert any(before.values())
    for query, hits in before.items():
        assert [key for key, _ in after[query]] == [key for key, _ in hits]
        assert [score for _, score in after[query]] == pytest.approx([score for _, score in hits])
    assert lexical.optimize() == 1  # already one segment: nothing to do
    lexical.close()


def test_deleted_entries_are_left_out_of_the_merged_segment(tmp_path: Path) -> None:
    lexical = _build(tmp_path / "bulk", bulk=True)  # three batches with replacements and deletions
    before = {query: {key for key, _ in hits} for query, hits in _results(lexical).items()}
    live = lexical.keys()
    assert lexical.optimize() == 1
    assert lexical.keys() == live and lexical.ix.doc_count_all() == len(live)
    assert {query: {key for key, _ in hits} for query, hits in _results(lexical).items()} == before
    lexical.close()


def test_segments_whooshs_writer_made_are_left_alone(tmp_path: Path) -> None:
    lexical = _build(tmp_path / "whoosh", bulk=False)
    segments = len(lexical.ix._segments())
    assert lexical.optimize() == segments
    lexical.close()
