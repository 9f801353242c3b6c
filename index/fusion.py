"""Weighted reciprocal rank fusion with provenance.

    score(key) = sum over retrievers r of  weight_r / (k + rank_r(key))      (rank 1-based, k = rrf_k = 60)

A retriever that did not return the key contributes nothing. `weights` exists so fusion can be tuned on a
golden set to never lose to the better single retriever (e.g. dense 1.0, bm25 0.5 when BM25 is weak
against question-style queries); a weight of 0 keeps a list's ranks as provenance without letting it vote.
Ties are broken by the best single rank, then by key, so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from store.exceptions import InputError

DEFAULT_WEIGHTS: Mapping[str, float] = {"dense": 1.0, "bm25": 1.0}


class Fused(msgspec.Struct, frozen=True, kw_only=True):
    key: int
    score: float
    ranks: dict[str, int]  # retriever name -> 1-based rank in its list


def rrf(
    ranked: Mapping[str, Sequence[int]],
    *,
    k: int = 60,
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Fuse ranked key lists (best first; duplicates after the first are ignored) into one ranking."""
    if k < 0:
        raise InputError("rrf k must be non-negative", field="rrf_k")
    weights = DEFAULT_WEIGHTS if weights is None else weights
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, keys in ranked.items():
        weight = weights.get(name, 1.0)
        if weight < 0:
            raise InputError(f"fusion weight of {name} must be non-negative", field="weights")
        for rank, key in enumerate(dict.fromkeys(keys), 1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
            ranks.setdefault(key, {})[name] = rank
    order = sorted(scores, key=lambda key: (-scores[key], min(ranks[key].values()), key))
    if limit is not None:
        order = order[:limit]
    return [Fused(key=key, score=scores[key], ranks=ranks[key]) for key in order]
