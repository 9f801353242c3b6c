"""BM25's b from the index's length spread (index.lexical_postings.spread_b, LexicalIndex(length_spread=))."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from index.lexical import LexicalEntry, LexicalIndex
from index.lexical_postings import spread_b

BODIES = (
    "solar wind measurements",
    "solar wind and the magnetosphere observed over many years by several satellites in orbit",
    "wind tunnel tests",
    "the magnetosphere of jupiter",
    "measurements of solar flares and their wind",
)


def _entry(key: int, body: str) -> LexicalEntry:
    return LexicalEntry(key=key, chunk_id=f"c{key}", doc_id=f"d{key}", tenant="t", readers=("*",), body=body)


def _search(lexical: LexicalIndex, query: str) -> dict[int, float]:
    return dict(lexical.search(query, 10, tenant="t", reader_tokens=("*",)))


def test_b_is_the_spread_over_the_lengths_coefficient_of_variation() -> None:
    lengths = np.array([10.0, 20.0, 30.0, 40.0])
    cv = float(lengths.std() / lengths.mean())
    assert math.isclose(spread_b(lengths, 0.2, 0.75), 0.2 / cv)
    assert spread_b(lengths, 5.0, 0.75) == 1.0  # never past full normalisation
    assert spread_b(lengths, 0.0, 0.75) == 0.75  # off: b as given
    assert spread_b(np.full(4, 12.0), 0.3, 0.75) == 0.75  # equal lengths: b changes nothing, keep it


def test_the_same_spread_normalises_uneven_lengths_less() -> None:
    uniform, uneven = np.array([90.0, 100.0, 110.0]), np.array([10.0, 100.0, 190.0])
    assert spread_b(uneven, 0.35, 0.75) < spread_b(uniform, 0.35, 0.75)


@pytest.mark.parametrize("doc_weight", [0.0, 0.5])
def test_scores_equal_bm25_with_the_derived_b(tmp_path: Path, doc_weight: float) -> None:
    LexicalIndex.create(tmp_path)
    spread = LexicalIndex.open(tmp_path, length_spread=0.3, doc_weight=doc_weight, check_interval_ms=0)
    spread.apply(add=[_entry(key, body) for key, body in enumerate(BODIES, 1)])
    slot = spread._slot()
    b = spread_b(slot.field_lengths("body", slot.leaves() or []), 0.3, 0.75)
    assert 0 < b < 1 and b != 0.75
    fixed = LexicalIndex.open(tmp_path, b=b, doc_weight=doc_weight, check_interval_ms=0)
    default = LexicalIndex.open(tmp_path, doc_weight=doc_weight, check_interval_ms=0)
    for query in ("solar wind", "magnetosphere measurements", "wind"):
        found, expected = _search(spread, query), _search(fixed, query)
        assert found.keys() == expected.keys()
        assert all(math.isclose(found[key], expected[key], rel_tol=1e-12) for key in expected)
    assert _search(default, "solar wind") != _search(spread, "solar wind")
    for lexical in (spread, fixed, default):
        lexical.close()


def test_b_follows_the_index_as_it_grows(tmp_path: Path) -> None:
    LexicalIndex.create(tmp_path)
    lexical = LexicalIndex.open(tmp_path, length_spread=0.3, check_interval_ms=0)
    lexical.apply(add=[_entry(1, BODIES[0]), _entry(3, BODIES[2])])
    lexical.search("wind", 5, tenant="t", reader_tokens=("*",))
    slot = lexical._slot()
    before = slot.length_b("body", slot.leaves() or [], 0.3, 0.75)
    lexical.apply(add=[_entry(2, BODIES[1])])  # a long chunk: the lengths' CV grows, b falls
    lexical.search("wind", 5, tenant="t", reader_tokens=("*",))
    slot = lexical._slot()
    assert slot.length_b("body", slot.leaves() or [], 0.3, 0.75) < before
    lexical.close()
