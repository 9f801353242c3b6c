"""Pseudo-relevance feedback for BM25: RM3 query expansion from the first pass's top chunks.

    weights = rm3_weights(query_terms, [(chunk_terms, bm25_score), ...], terms=10, original=0.5)
    hits = lexical.search(query, k, ..., weights=weights)      # the second pass: a weighted bag of terms

RM3 (Lavrenko and Croft's relevance model, mixed with the query as in Abdul-Jaleel et al., TREC 2004):
P(w | R) = sum over the feedback chunks d of P(w | d) P(d | q), with P(w | d) = tf / |d| over the chunk's
analysed terms (stop words out, stemmed: the index's own analyser) and P(d | q) the chunk's share of the
feedback chunks' BM25 scores. The `terms` most likely terms are kept and renormalised; the new query is
original x (the query's terms, uniform) + (1 - original) x those terms. The weights are scaled so that an
original term alone weighs 1 (original 1.0 gives back the plain query).

Measured (`python -m bench.retrieval_quality --prf`, leave-one-collection-out, README): it helps cranfield
and loses on the question collections and the demo set, so settings.bm25_prf_docs defaults to 0 (off). The
cost is a catalog read of the feedback chunks and a second BM25 query.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from index.keys import Scored
from store.exceptions import InputError

Feedback = Sequence[tuple[Sequence[str], float]]  # (a chunk's analysed terms, its first-pass score)


def rm3_weights(
    query_terms: Sequence[str], feedback: Feedback, *, terms: int, original: float
) -> dict[str, float]:
    """Term -> weight of the expanded query (see the module doc); the query's own terms when no feedback."""
    if not 0.0 < original <= 1.0:
        raise InputError("the original query's weight must be in (0, 1]", field="original")
    query = list(dict.fromkeys(query_terms))
    if not query:
        return {}
    weights: dict[str, float] = dict.fromkeys(query, original / len(query))
    total = sum(score for _, score in feedback if score > 0)
    relevance: dict[str, float] = {}
    for chunk_terms, score in feedback:
        if score <= 0 or not chunk_terms:
            continue
        share = score / total / len(chunk_terms)
        for term, count in Counter(chunk_terms).items():
            relevance[term] = relevance.get(term, 0.0) + count * share
    top = sorted(relevance.items(), key=lambda item: (-item[1], item[0]))[:terms] if original < 1 else []
    mass = sum(value for _, value in top)
    for term, value in top:
        weights[term] = weights.get(term, 0.0) + (1 - original) * value / mass
    scale = len(query) / original
    return {term: weight * scale for term, weight in weights.items()}


def feedback_weights(
    analyse: Callable[[str], list[str]],
    tokens: Callable[[str], list[str]],
    query: str,
    first: Sequence[Scored],
    texts: Mapping[int, str],
    *,
    terms: int,
    original: float,
) -> dict[str, float]:
    """The expanded query from the first pass's hits (key, score) and their indexed texts by key (a hit
    without a text, e.g. hidden since, gives no feedback): `analyse` gives the query's distinct terms,
    `tokens` a text's every term (LexicalIndex.analyse and .tokens)."""
    feedback = [(tokens(texts[key]), score) for key, score in first if key in texts]
    return rm3_weights(analyse(query), feedback, terms=terms, original=original)
