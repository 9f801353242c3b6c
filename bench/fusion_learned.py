"""A small learned fusion and dense pseudo-relevance feedback, measured leave-one-collection-out (README).

    .venv/bin/python -m bench.fusion_learned                               # the five collections
    .venv/bin/python -m bench.fusion_learned --inverted-grades cranfield   # cranfield's grade 1 the best
    .venv/bin/python -m bench.fusion_learned --json DIR [DIR ...]
    .venv/bin/python -m bench.fusion_learned --gaps              # where hybrid and dense differ, and why

Each collection's index is bench.retrieval_quality's (cached under DOCENT_DATA_DIR/eval); its dense and BM25
lists (top 100 chunks each) come from the product's Searcher, captured before fusion (bench.e5_quality's
Capture), for the BM25 settings main's LOCO folds chose (bench.e5_quality.BM25_FOLDS). A minute or two.

Learned fusion. Candidates are the union of the two lists. Each candidate's features (FEATURE_SETS): its
standardised dense and BM25 scores (a list's floor where it is missing, as index.fusion.zscore); "cos" its
raw cosine; "ranks" 1 / log2(1 + rank) in each list (0 when missing) and whether it is in both; "query" the
standardised scores multiplied by per-query signals (the dense list's top-1 to top-10 gap over its spread,
the BM25 list's top-1 to top-10 gap in z, the query's analysed terms / 10 (at most 2), the two lists' top-10
overlap), so that the weight of each list can move with the query. A linear pairwise ranker (RankNet: the
logistic loss of each relevant-minus-irrelevant pair of a query, every query weighing the same, L2 1e-2,
features standardised; numpy gradient descent, deterministic) is trained on four collections' judgments
and scores the fifth, whose BM25 is its fold's. The z-score row is index.fusion with the dense weight
chosen leave-one-collection-out over bench.retrieval_quality's z-score grid (RRF never won a fold there).

Dense pseudo-relevance feedback (Rocchio): q' = q + beta * mean(vectors of the top k), normalised, and the
dense search runs again; "dense" takes the first dense list's top k, "fused" the z-score hybrid's. Measured
with the shipped BM25 and fusion; (source, k, beta) or off chosen leave-one-collection-out by
bench.retrieval_quality's max-min rule on nDCG@10.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from bench.e5_quality import BM25_FOLDS, DEFAULT_BM25, Capture
from bench.retrieval_quality import (
    DEFAULT_DIRS,
    FUSION_GRID,
    Prepared,
    Scores,
    choose,
    collection_args,
    emit,
    prepare_all,
)
from index.evalrun import DEPTH, EVAL_PRINCIPAL, TABLE_METRICS
from index.evaluate import dedupe_docs, ndcg_at, score_run
from index.fusion import DENSE_WEIGHT, dense_weighted, keep_lexical_top, zscore
from index.keys import Scored
from store.settings import get_settings

Floats = npt.NDArray[np.float64]
Bm25 = tuple[float, float, float]
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "learned z": (),
    "learned z+cos+query": ("cos", "query"),
    "learned z+ranks": ("ranks",),
}
L2 = 1e-2
STEPS = 300
RATE = 0.5
PAIRS_PER_QUERY = 2000  # sampled (seeded) beyond this
QUERY_TERMS_CAP = 20
PRF_GRID: tuple[tuple[str, int, float], ...] = (
    ("off", 0, 0.0),
    *((source, k, beta) for source in ("dense", "fused") for k in (3, 5) for beta in (0.5, 1.0)),
)
Z_WEIGHTS = tuple(w for kind, w, _ in FUSION_GRID if kind == "zscore")


class Lists(msgspec.Struct, kw_only=True):
    """One collection's captured lists, in query order."""

    qids: list[str]
    doc_of: dict[int, str]
    dense: list[list[Scored]]
    bm25: dict[Bm25, list[list[Scored]]]
    terms: list[int]  # analysed query terms
    prf: dict[tuple[str, int, float], list[list[Scored]]]  # the dense list again, after feedback


def _z(scores: Sequence[float]) -> Floats:
    v = np.asarray(scores, dtype=np.float64)
    if not len(v):
        return v
    return (v - v.mean()) / (float(v.std()) or 1.0)


def _column(keys: Sequence[int], scored: Sequence[Scored], values: Floats, floor: float) -> Floats:
    at = {key: i for i, (key, _) in enumerate(reversed(scored))}  # the first occurrence wins
    last = len(scored) - 1
    return np.array([values[last - at[k]] if k in at else floor for k in keys], dtype=np.float64)


def _gap(values: Floats) -> float:
    return float(values[0] - values[min(9, len(values) - 1)]) if len(values) else 0.0


def features(
    dense: Sequence[Scored], bm25: Sequence[Scored], terms: int, kinds: Sequence[str]
) -> tuple[list[int], Floats]:
    """The candidates (the union of both lists, dense first) and their feature rows; see the module doc."""
    keys = list(dict.fromkeys([k for k, _ in dense] + [k for k, _ in bm25]))
    zd_list, zb_list = _z([s for _, s in dense]), _z([s for _, s in bm25])
    zd = _column(keys, dense, zd_list, float(zd_list.min()) if len(zd_list) else 0.0)
    zb = _column(keys, bm25, zb_list, float(zb_list.min()) if len(zb_list) else 0.0)
    columns = [zd, zb]
    if "cos" in kinds:
        cosines = np.array([s for _, s in dense], dtype=np.float64)
        columns.append(_column(keys, dense, cosines, float(cosines.min()) if len(cosines) else 0.0))
    if "ranks" in kinds:
        rd = _column(keys, dense, 1 / np.log2(2 + np.arange(len(dense))), 0.0)
        rb = _column(keys, bm25, 1 / np.log2(2 + np.arange(len(bm25))), 0.0)
        columns += [rd, rb, ((rd > 0) & (rb > 0)).astype(np.float64)]
    if "query" in kinds:
        raw = np.array([s for _, s in dense], dtype=np.float64)
        spread = (float(raw.std()) if len(raw) else 0.0) or 1.0
        overlap = len({k for k, _ in dense[:10]} & {k for k, _ in bm25[:10]}) / 10
        signals = (_gap(raw) / spread, _gap(zb_list), min(terms, QUERY_TERMS_CAP) / 10, overlap)
        columns += [signal * column for signal in signals for column in (zd, zb)]
    return keys, np.column_stack(columns)


class Query(msgspec.Struct):
    keys: list[int]
    rows: Floats
    relevant: npt.NDArray[np.bool_]


def _pairs(queries: Sequence[Query]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], Floats]:
    rng = np.random.default_rng(0)
    better, worse, weight, offset = [], [], [], 0
    for q in queries:
        pos, neg = np.flatnonzero(q.relevant) + offset, np.flatnonzero(~q.relevant) + offset
        offset += len(q.keys)
        if not len(pos) or not len(neg):
            continue
        b, w = (m.ravel() for m in np.meshgrid(pos, neg))
        if len(b) > PAIRS_PER_QUERY:
            pick = rng.choice(len(b), PAIRS_PER_QUERY, replace=False)
            b, w = b[pick], w[pick]
        better.append(b)
        worse.append(w)
        weight.append(np.full(len(b), 1 / len(b)))
    total = np.concatenate(weight)
    return np.concatenate(better), np.concatenate(worse), total / total.sum()


def train(queries: Sequence[Query]) -> Floats:
    """Weights of a linear pairwise ranker (RankNet loss, L2) over the queries' feature rows."""
    rows = np.vstack([q.rows for q in queries])
    scale = rows.std(axis=0) + 1e-9
    better, worse, weight = _pairs(queries)
    diff = (rows[better] - rows[worse]) / scale
    w = np.zeros(rows.shape[1])
    for _ in range(STEPS):
        margin = diff @ w
        grad = -(diff.T @ (weight / (1 + np.exp(margin)))) + L2 * w
        w -= RATE * grad
    return w / scale


def ranked(query: Query, weights: Floats) -> list[int]:
    order = np.argsort(-(query.rows @ weights), kind="stable")
    return [query.keys[i] for i in order]


def capture(p: Prepared) -> Lists:
    """The product's dense and BM25 lists for every query, and the dense lists after feedback."""
    queries = [q for q in p.collection.queries if q.text.strip()]
    texts = [q.text for q in queries]
    bm25: dict[Bm25, list[list[Scored]]] = {}
    for setting in sorted({DEFAULT_BM25, *BM25_FOLDS.values()}):
        k1, spread, doc_weight = setting
        settings = msgspec.structs.replace(
            p.settings, bm25_k1=k1, bm25_length_spread=spread, bm25_doc_weight=doc_weight
        )
        searcher = Capture(settings, p.version, p.embedder)
        searcher.captured = []
        try:
            searcher.search_many_sync(texts, EVAL_PRINCIPAL, k=DEPTH, mode="hybrid")
        finally:
            searcher.close()
        dense = [d for d, _ in searcher.captured]
        bm25[setting] = [lexical for _, lexical in searcher.captured]
    searcher = Capture(p.settings, p.version, p.embedder)
    try:
        terms = [len(searcher.lexical.analyse(t)) for t in texts]
        prf = feedback_lists(searcher, p.embedder.embed(texts), dense, bm25[DEFAULT_BM25])
        keys = {k for lists in (dense, *bm25.values(), *prf.values()) for scored in lists for k, _ in scored}
        doc_of = {k: row.doc_id for k, row in searcher.catalog.chunk_rows(p.version, sorted(keys)).items()}
    finally:
        searcher.close()
    return Lists(qids=[q._id for q in queries], doc_of=doc_of, dense=dense, bm25=bm25, terms=terms, prf=prf)


def z_fused(dense: Sequence[Scored], bm25: Sequence[Scored], dense_weight: float) -> list[int]:
    """index.fusion as the product fuses (z-score, the lexical anchor kept in the top k)."""
    fused = zscore({"dense": dense, "bm25": bm25}, weights=dense_weighted(dense_weight))
    return [f.key for f in keep_lexical_top(fused, bm25, DEPTH)]


def feedback_lists(
    searcher: Capture,
    vectors: npt.NDArray[np.float32],
    dense: Sequence[list[Scored]],
    bm25: Sequence[list[Scored]],
) -> dict[tuple[str, int, float], list[list[Scored]]]:
    out: dict[tuple[str, int, float], list[list[Scored]]] = {}
    for source, k, beta in PRF_GRID[1:]:
        lists = []
        for vector, d, b in zip(vectors, dense, bm25, strict=True):
            top = [key for key, _ in d[:k]] if source == "dense" else z_fused(d, b, DENSE_WEIGHT)[:k]
            stored = searcher.vectors.get(top)
            moved = vector + beta * np.mean([stored[key] for key in top if key in stored], axis=0)
            moved = (moved / np.linalg.norm(moved)).astype(np.float32)
            lists.append(searcher.vectors.search(moved, searcher.settings.retrieve_k))
        out[(source, k, beta)] = lists
    return out


class Judged(Protocol):
    """What scoring a run of chunk rankings needs of a collection's captured lists."""

    qids: list[str]
    doc_of: dict[int, str]


def scores_of(p: Prepared, lists: Judged, chunk_rankings: Sequence[Sequence[int]]) -> dict[str, float]:
    run = {
        qid: dedupe_docs((lists.doc_of[k] for k in keys if k in lists.doc_of), DEPTH)
        for qid, keys in zip(lists.qids, chunk_rankings, strict=True)
    }
    return score_run(run, p.collection.qrels)


def labelled(p: Prepared, lists: Lists, bm25: Bm25, kinds: Sequence[str]) -> list[Query]:
    out = []
    for qid, d, b, terms in zip(lists.qids, lists.dense, lists.bm25[bm25], lists.terms, strict=True):
        keys, rows = features(d, b, terms, kinds)
        judged = p.collection.qrels.get(qid, {})
        out.append(Query(keys, rows, np.array([judged.get(lists.doc_of.get(k, ""), 0) > 0 for k in keys])))
    return out


def learned_loco(prepared: Mapping[str, Prepared], lists: Mapping[str, Lists]) -> dict[str, dict[str, Any]]:
    """Per held-out collection: each feature set's LOCO scores and the trained weights."""
    out: dict[str, dict[str, Any]] = {}
    for held in prepared:
        bm25 = BM25_FOLDS.get(held, DEFAULT_BM25)
        out[held] = {}
        for name, kinds in FEATURE_SETS.items():
            sets = {n: labelled(p, lists[n], bm25, kinds) for n, p in prepared.items()}
            weights = train([q for n, qs in sets.items() if n != held for q in qs])
            rankings = [ranked(q, weights) for q in sets[held]]
            out[held][name] = {
                "runs": scores_of(prepared[held], lists[held], rankings),
                "weights": weights.tolist(),
            }
    return out


def grid_table(
    prepared: Mapping[str, Prepared],
    lists: Mapping[str, Lists],
    grid: Sequence[Any],
    run: Callable[[Lists, Any], list[list[int]]],
) -> dict[Any, Scores]:
    return {g: {n: scores_of(p, lists[n], run(lists[n], g)) for n, p in prepared.items()} for g in grid}


def loco_choice(table: Mapping[Any, Scores], grid: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
    folds = {}
    for held in names:
        g = choose(grid, dict(table), [n for n in names if n != held])
        folds[held] = {"choice": list(g) if isinstance(g, tuple) else g, "runs": table[g][held]}
    return folds


def zscore_run(bm25: Bm25) -> Callable[[Lists, tuple[float]], list[list[int]]]:
    def run(lists: Lists, g: tuple[float]) -> list[list[int]]:
        return [z_fused(d, b, g[0]) for d, b in zip(lists.dense, lists.bm25[bm25], strict=True)]

    return run


def prf_run(lists: Lists, g: tuple[str, int, float]) -> list[list[int]]:
    dense = lists.dense if g[0] == "off" else lists.prf[g]
    return [z_fused(d, b, DENSE_WEIGHT) for d, b in zip(dense, lists.bm25[DEFAULT_BM25], strict=True)]


def single_runs(p: Prepared, lists: Lists) -> dict[str, dict[str, float]]:
    bm25 = lists.bm25[BM25_FOLDS.get(p.collection.name, DEFAULT_BM25)]
    return {
        "bm25": scores_of(p, lists, [[k for k, _ in b] for b in bm25]),
        "dense": scores_of(p, lists, [[k for k, _ in d] for d in lists.dense]),
    }


def measure(prepared: Mapping[str, Prepared], lists: Mapping[str, Lists]) -> dict[str, Any]:
    names = list(prepared)
    grid_z = [(w,) for w in Z_WEIGHTS]
    zscore_folds = {}
    for held in names:  # the fold's BM25 on every collection, as bench.retrieval_quality
        table = grid_table(prepared, lists, grid_z, zscore_run(BM25_FOLDS.get(held, DEFAULT_BM25)))
        zscore_folds[held] = loco_choice(table, grid_z, names)[held]
    prf_table = grid_table(prepared, lists, PRF_GRID, prf_run)
    return {
        "single": {n: single_runs(p, lists[n]) for n, p in prepared.items()},
        "zscore": zscore_folds,
        "learned": learned_loco(prepared, lists),
        "prf": loco_choice(prf_table, PRF_GRID, names),
        "prf_grid": {
            " ".join(map(str, g)): {n: s["ndcg@10"] for n, s in prf_table[g].items()} for g in PRF_GRID
        },
    }


def _cell(metrics: Mapping[str, float]) -> str:
    return " / ".join(f"{metrics[m]:.3f}" for m, _ in TABLE_METRICS[:3])


def format_report(report: Mapping[str, Any]) -> str:
    runs = ["bm25", "dense", "hybrid z-score", *FEATURE_SETS, "z-score + dense PRF"]
    lines = [
        f"nDCG@10 / R@20 / fail@20, leave-one-collection-out\n\n| collection | {' | '.join(runs)} |",
        "|" + " --- |" * (len(runs) + 1),
    ]
    for name, single in report["single"].items():
        cells = [single["bm25"], single["dense"], report["zscore"][name]["runs"]]
        cells += [report["learned"][name][f]["runs"] for f in FEATURE_SETS]
        cells.append(report["prf"][name]["runs"])
        lines.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "| fold | z-score dense weight | dense PRF (source, k, beta) |", "| --- | --- | --- |"]
    for name in report["single"]:
        lines.append(f"| {name} | {report['zscore'][name]['choice'][0]} | {report['prf'][name]['choice']} |")
    return "\n".join(lines)


def _first_ranks(docs: Sequence[str], judged: Mapping[str, int]) -> list[int]:
    return [i + 1 for i, d in enumerate(docs) if d in judged][:3]


def gaps(p: Prepared, lists: Lists) -> list[str]:
    """Queries whose shipped hybrid nDCG@10 differs from dense's (judged documents' ranks in each list,
    BM25's top 3), the queries with no judged document in the hybrid's top 20, and the share of each
    grade's judgments that the hybrid puts in its top 10."""
    lines, misses = [], 0
    in_top10: dict[int, list[bool]] = {}
    for qid, text, d, b in zip(
        lists.qids, lists_texts(p), lists.dense, lists.bm25[DEFAULT_BM25], strict=True
    ):
        judged = p.collection.qrels.get(qid, {})
        docs = {
            name: dedupe_docs((lists.doc_of[k] for k in keys if k in lists.doc_of), DEPTH)
            for name, keys in (
                ("hybrid", z_fused(d, b, DENSE_WEIGHT)),
                ("dense", [k for k, _ in d]),
                ("bm25", [k for k, _ in b]),
            )
        }  # fmt: skip
        misses += not set(docs["hybrid"][:20]) & judged.keys()
        for doc, grade in judged.items():
            in_top10.setdefault(grade, []).append(doc in docs["hybrid"][:10])
        delta = ndcg_at(docs["hybrid"], judged, 10) - ndcg_at(docs["dense"], judged, 10)
        if abs(delta) > 1e-9:
            ranks = " ".join(f"{n} {_first_ranks(r, judged)}" for n, r in docs.items())
            lines.append(f"  {delta:+.3f} {qid} {text!r}: {ranks}; bm25 top 3 {docs['bm25'][:3]}")
    shares = ", ".join(f"grade {g} {np.mean(v):.0%} of {len(v)}" for g, v in sorted(in_top10.items()))
    head = (
        f"{p.collection.name}: {misses} of {len(lists.qids)} queries, nothing judged in the hybrid's top 20"
    )
    return [head, f"  judged documents in the hybrid's top 10: {shares}", *lines]


def lists_texts(p: Prepared) -> list[str]:
    return [q.text for q in p.collection.queries if q.text.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv, inverted=True, flags=("gaps",))
    prepared = prepare_all(get_settings(), args)
    lists = {n: capture(p) for n, p in prepared.items()}
    if args.gaps:
        print("\n".join(line for n, p in prepared.items() for line in gaps(p, lists[n])))
        return 0
    report = measure(prepared, lists)
    return emit(format_report(report), report, args)


if __name__ == "__main__":
    sys.exit(main())
