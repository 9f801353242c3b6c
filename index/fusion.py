"""Weighted reciprocal rank fusion with provenance, and the lexical gate that sets BM25's weight per query.

    score(key) = sum over retrievers r of  weight_r / (k + rank_r(key))      (rank 1-based, k = rrf_k = 60)

A retriever that did not return the key contributes nothing; a weight of 0 keeps a list's ranks as
provenance without letting it vote. Ties are broken by the best single rank, then by key, so the order is
deterministic.

The lexical gate (`hybrid_weights`, used by index.search for every hybrid query, live and in `docent eval`).
Equal-weight RRF loses to dense retrieval alone when the query is phrased in the user's words rather than
the documents' ("tally how many times each word occurs" vs. collections.Counter): BM25 then ranks chunks
on incidental words, and with k = 60 even a small BM25 vote reorders dense's head. Whether a query is in
that regime is visible per query: look at the dense retriever's best chunk and count how many of the
query's analysed terms (stemmed, stop words out: the BM25 analyzer) it contains. When the semantically best
chunk uses the query's own words, lexical matching measures what the user asked and BM25 votes fully;
when it shares few of them, the vocabularies differ and BM25's matches are noise. So

    coverage = |terms(query) & terms(dense top-1 chunk: title, heading, context and text)| / |terms(query)|
    weight_bm25 = base_bm25 * clip((coverage - GATE_LOW) / (GATE_HIGH - GATE_LOW), 0, 1)

Calibration (bench: `docent eval`, see README): (GATE_LOW, GATE_HIGH) = (0.30, 0.40) was picked on half of
the question-style demo golden set (tests/golden/demo, queries at odd positions) and validated on the
other half and on vaswani and cranfield (keyword-style, where the gate is mostly open). Plain RRF lost to
dense on the demo set (nDCG@10 .831 vs .911), and so did every fixed BM25 weight down to 0.05 (.897):
only a per-query decision keeps the hybrid at or above the better retriever on all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from store.exceptions import InputError

DEFAULT_WEIGHTS: Mapping[str, float] = {"dense": 1.0, "bm25": 1.0}
GATE_LOW = 0.30  # query-term coverage of the dense top chunk below which BM25 does not vote
GATE_HIGH = 0.40  # coverage from which BM25 votes with its full base weight (linear in between)


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


def term_coverage(query_terms: Sequence[str], chunk_terms: Iterable[str]) -> float:
    """Share of the query's distinct analysed terms found in a chunk's analysed terms (0 for no terms)."""
    wanted = set(query_terms)
    if not wanted:
        return 0.0
    return len(wanted & set(chunk_terms)) / len(wanted)


def lexical_gate(coverage: float, *, low: float = GATE_LOW, high: float = GATE_HIGH) -> float:
    """BM25's weight multiplier in [0, 1] for a query whose dense top chunk has this term coverage."""
    if not 0.0 <= low <= high:
        raise InputError("gate bounds must satisfy 0 <= low <= high", field="gate")
    if coverage < low:
        return 0.0
    if coverage >= high or high == low:
        return 1.0
    return (coverage - low) / (high - low)


def hybrid_weights(coverage: float, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """The per-query weights of a hybrid query: dense at its base weight, BM25 gated by `coverage`."""
    weights = dict(DEFAULT_WEIGHTS if base is None else base)
    weights["bm25"] = weights.get("bm25", 1.0) * lexical_gate(coverage)
    return weights
