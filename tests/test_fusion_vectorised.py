"""The vectorised z-score fusion gives exactly what its definition (per-key dicts, one sort) gives."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from index.fusion import keep_lexical_top, lexical_top_stands_out, standardised, zscore
from index.keys import Scored


def reference_zscore(
    lists: Mapping[str, Sequence[Scored]], weights: Mapping[str, float]
) -> list[tuple[int, float, dict[str, int]]]:
    """The definition, written plainly: the module doc's rule, key by key."""
    ranks: dict[int, dict[str, int]] = {}
    for name, scored in lists.items():
        for rank, key in enumerate(dict.fromkeys(key for key, _ in scored), 1):
            ranks.setdefault(key, {})[name] = rank
    totals = dict.fromkeys(ranks, 0.0)
    for name, scored in lists.items():
        first: dict[int, float] = {}
        for key, score in scored:
            first.setdefault(key, score)
        if not first:
            continue
        values = np.array(list(first.values()))
        z = dict(zip(first, ((values - values.mean()) / (values.std() or 1.0)).tolist(), strict=True))
        floor = min(z.values())
        for key in totals:
            totals[key] += weights.get(name, 1.0) * z.get(key, floor)
    order = sorted(totals, key=lambda key: (-totals[key], min(ranks[key].values()), key))
    return [(key, totals[key], ranks[key]) for key in order]


def _lists(rng: random.Random) -> dict[str, list[Scored]]:
    shared = [rng.getrandbits(63) for _ in range(rng.randint(0, 40))]
    dense = [*shared, *(rng.getrandbits(63) for _ in range(rng.randint(0, 60)))]
    bm25 = [*shared[: len(shared) // 2], *(rng.getrandbits(63) for _ in range(rng.randint(0, 60)))]
    rng.shuffle(dense)
    rng.shuffle(bm25)
    if bm25 and rng.random() < 0.3:
        bm25.append(bm25[0])  # a repeated key: its first score counts
    scores = [round(rng.uniform(0, 20), 1) for _ in bm25]  # rounded: ties happen
    return {
        "dense": [(key, 1.0 - i * 0.01) for i, key in enumerate(dense)],
        "bm25": sorted(zip(bm25, scores, strict=True), key=lambda pair: -pair[1]),
    }


@pytest.mark.parametrize("seed", range(40))
def test_vectorised_zscore_matches_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    lists = _lists(rng)
    weights = {"dense": rng.choice((0.6, 0.5, 1.0)), "bm25": rng.choice((0.4, 0.0, 1.0))}
    expected = reference_zscore(lists, weights)
    fused = zscore(lists, weights=weights)
    assert [(f.key, f.ranks) for f in fused] == [(key, ranks) for key, _, ranks in expected]
    assert [f.score for f in fused] == pytest.approx([score for _, score, _ in expected], abs=1e-9)
    limit = rng.randint(1, 30)
    assert zscore(lists, weights=weights, limit=limit) == fused[:limit]
    for key, z in standardised(lists["bm25"]).items():
        assert isinstance(key, int) and isinstance(z, float)


def test_edge_lists_and_the_lexical_anchor() -> None:
    assert zscore({}) == [] and zscore({"dense": [], "bm25": []}) == []
    only = zscore({"dense": [(5, 0.9), (6, 0.1)], "bm25": []})
    assert [(f.key, f.ranks) for f in only] == [(5, {"dense": 1}), (6, {"dense": 2})]
    flat = [(key, 1.0) for key in range(1, 50)]
    sharp = [(99, 30.0), *flat]
    assert lexical_top_stands_out(sharp) and not lexical_top_stands_out(flat)
    assert not lexical_top_stands_out([])
    dense = [(key, 1.0 - key * 0.01) for key in range(1, 50)]
    fused = zscore({"dense": dense, "bm25": sharp})
    kept = keep_lexical_top(fused, sharp, 3)
    assert 99 in [f.key for f in kept[:3]]
