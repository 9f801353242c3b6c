"""Term proximity, query bigrams and a title field in the lexical score, measured leave-one-collection-out.

    .venv/bin/python -m bench.proximity                               # the five collections
    .venv/bin/python -m bench.proximity --inverted-grades cranfield   # cranfield's grade 1 the best
    .venv/bin/python -m bench.proximity --json DIR [DIR ...]

Each collection's index is bench.retrieval_quality's (cached under DOCENT_DATA_DIR/eval). The product's
dense and BM25 lists are captured before fusion (bench.e5_quality's Capture) at CANDIDATES chunks, for the
BM25 settings main's LOCO folds chose (bench.e5_quality.BM25_FOLDS); each BM25 candidate's indexed text
(the catalog's) is analysed again with the index's own analyser (stop words out, stemmed), which gives the
query terms' positions. A rescoring then adds `weight` x a proximity score to each candidate's BM25, keeps
the best DEPTH, and the z-score fusion runs as in the product (index.fusion, the lexical anchor kept).
Methods (PROXIMITY_GRID: method, window, weight):

  tp      BM25TP (Buttcher, Clarke and Lushman, SIGIR 2006): for each two consecutive occurrences of
          different query terms at distance d <= window (positions after stop words), each term's
          accumulator gains the other's idf / d^2; the proximity score is sum over terms of
          min(1, idf) x acc (k1 + 1) / (acc + K), K = k1 (1 - b + b len / avg) as in BM25;
  bigram  the query's adjacent term pairs (in query order) as extra terms: tf = the pair's occurrences in
          that order within `window` positions, saturated as a BM25 term with the mean of the two idfs;
  prefix  the query terms of the chunk's contextual prefix (title, headings) as a second field: each
          term's idf x tf (k1 + 1) / (tf + k1), unnormalised (a title boost, as the first schema had);
  tp3     no rescoring: BM25TP over the union of both lists' candidates becomes a third list of the
          z-score fusion, with `weight` beside dense w and BM25 1 - w.

The grid (PROXIMITY_GRID x the z-score dense weights of bench.retrieval_quality) is chosen per held-out
collection by bench.retrieval_quality's max-min rule on the other four's hybrid nDCG@10; the BM25 rows use
the same proximity choice. "off" is weight 0: the product's lists unchanged. README: "Term proximity, query
bigrams and the title field, measured and not shipped". `--speed` times, query by query, the product's BM25
stage and then the rescoring of its hits (texts read from the catalog and analysed, BM25TP): off and on share
the machine's noise.
"""

from __future__ import annotations

import itertools
import json
import pickle
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench.e5_quality import BM25_FOLDS, DEFAULT_BM25, Capture
from bench.fusion_learned import Z_WEIGHTS, scores_of, z_fused
from bench.retrieval_quality import (
    DEFAULT_DIRS,
    Prepared,
    Scores,
    choose,
    collection_args,
    emit,
    prepare_all,
)
from index.entries import chunk_of
from index.evalrun import DEPTH, EVAL_PRINCIPAL, TABLE_METRICS
from index.fusion import keep_lexical_top, zscore
from index.keys import Scored
from index.lexical import BODY, lucene_idf
from store.settings import get_settings

CANDIDATES = 200  # BM25 chunks captured (and rescored) per query; the product's list is the first DEPTH
Bm25 = tuple[float, float, float]
Setting = tuple[str, int, float]  # method, window, weight
PROXIMITY_GRID: tuple[Setting, ...] = (
    ("off", 0, 0.0),
    *(("tp", w, a) for w in (3, 8, 1000) for a in (0.25, 0.5, 1.0, 2.0)),
    *(("bigram", w, a) for w in (1, 3, 8) for a in (0.25, 0.5, 1.0, 2.0)),
    *(("prefix", 0, a) for a in (0.1, 0.25, 0.5, 1.0)),
    *(("tp3", 8, a) for a in (0.05, 0.1, 0.2)),
)


Positions = Mapping[str, list[int]]  # query term -> its positions in a chunk (analysed tokens)


class Terms(msgspec.Struct, kw_only=True):
    """A query's analysed terms, in query order, and their idf."""

    terms: list[str]
    idf: list[float]


class Query(Terms, kw_only=True):
    dense: list[Scored]
    bm25: dict[Bm25, list[Scored]]  # CANDIDATES long


class Lists(msgspec.Struct, kw_only=True):
    qids: list[str]
    doc_of: dict[int, str]
    queries: list[Query]
    positions: dict[int, dict[str, list[int]]]  # chunk -> query term -> positions (analysed tokens)
    prefix: dict[int, dict[str, int]]  # chunk -> query term -> count in its contextual prefix (title...)
    lengths: dict[int, int]
    average: float
    b: float


def capture(p: Prepared, cache: Path) -> Lists:
    path = cache / f"proximity-{p.collection.name}-{p.version}-{CANDIDATES}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]
    queries = [q for q in p.collection.queries if q.text.strip()]
    texts = [q.text for q in queries]
    by_setting: dict[Bm25, list[list[Scored]]] = {}
    dense: list[list[Scored]] = []
    for setting in sorted({DEFAULT_BM25, *BM25_FOLDS.values()}):
        k1, spread, doc_weight = setting
        settings = msgspec.structs.replace(
            p.settings, bm25_k1=k1, bm25_length_spread=spread, bm25_doc_weight=doc_weight,
            retrieve_k=CANDIDATES,
        )  # fmt: skip
        searcher = Capture(settings, p.version, p.embedder)
        searcher.captured = []
        try:
            searcher.search_many_sync(texts, EVAL_PRINCIPAL, k=DEPTH, mode="hybrid")
        finally:
            searcher.close()
        dense = [d[:DEPTH] for d, _ in searcher.captured]
        by_setting[setting] = [lexical for _, lexical in searcher.captured]
    searcher = Capture(p.settings, p.version, p.embedder)
    try:
        lexical = searcher.lexical
        slot = lexical._slot()
        n = int(slot.searcher.doc_count_all())
        terms = [lexical.analyse(t) for t in texts]
        idf = [[lucene_idf(n, slot.doc_frequency(BODY, t)) for t in ts] for ts in terms]
        keys = sorted({k for lists in by_setting.values() for scored in lists for k, _ in scored})
        keys = sorted({*keys, *(k for d in dense for k, _ in d)})
        rows = searcher.catalog.chunk_rows(p.version, keys)
        wanted = {t for ts in terms for t in ts}
        positions: dict[int, dict[str, list[int]]] = {}
        lengths: dict[int, int] = {}
        prefix: dict[int, dict[str, int]] = {}
        for key, row in rows.items():
            chunk = chunk_of(row)
            prefix[key] = dict(Counter(t for t in lexical.tokens(chunk.context) if t in wanted))
            tokens = lexical.tokens(chunk.indexed_text())
            lengths[key] = len(tokens)
            found: dict[str, list[int]] = {}
            for at, token in enumerate(tokens):
                if token in wanted:
                    found.setdefault(token, []).append(at)
            positions[key] = found
        leaves = slot.leaves()
        assert leaves is not None
        average = float(slot.searcher.avg_field_length(BODY) or 1)
        b = slot.length_b(BODY, leaves, DEFAULT_BM25[1], p.settings.bm25_b)
        doc_of = {k: row.doc_id for k, row in rows.items()}
    finally:
        searcher.close()
    out = Lists(
        qids=[q._id for q in queries],
        doc_of=doc_of,
        queries=[
            Query(terms=ts, idf=i, dense=d, bm25={s: by_setting[s][n] for s in by_setting})
            for n, (ts, i, d) in enumerate(zip(terms, idf, dense, strict=True))
        ],
        positions=positions,
        prefix=prefix,
        lengths=lengths,
        average=average,
        b=b,
    )
    path.write_bytes(pickle.dumps(out))
    return out


def tp_score(found: Positions, query: Terms, window: int, norm: float, k1: float) -> float:
    """BM25TP's proximity part for one chunk (see the module doc); `norm` = 1 - b + b len / avg."""
    weight = dict(zip(query.terms, query.idf, strict=True))
    stream = sorted((at, term) for term in query.terms for at in found.get(term, ()))
    acc: dict[str, float] = {}
    for (a, s), (c, t) in itertools.pairwise(stream):
        if s == t or c - a > window:
            continue
        d2 = float((c - a) ** 2)
        acc[s] = acc.get(s, 0.0) + weight[t] / d2
        acc[t] = acc.get(t, 0.0) + weight[s] / d2
    big_k = k1 * norm
    return sum(min(1.0, weight[t]) * v * (k1 + 1) / (v + big_k) for t, v in acc.items())


def bigram_score(found: Positions, query: Terms, window: int, norm: float, k1: float) -> float:
    """The query's adjacent pairs as BM25 terms: ordered co-occurrences within `window` positions."""
    total = 0.0
    weighed = list(zip(query.terms, query.idf, strict=True))
    for (s, i), (t, j) in itertools.pairwise(weighed):
        first, second = found.get(s), found.get(t)
        if not first or not second:
            continue
        after = np.asarray(second)
        tf = sum(int(np.count_nonzero((after > a) & (after <= a + window))) for a in first)
        if tf:
            total += (i + j) / 2 * tf * (k1 + 1) / (tf + k1 * norm)
    return total


def prefix_score(counts: Mapping[str, int], query: Terms, k1: float) -> float:
    """The query terms of the chunk's contextual prefix (title, headings) as a second field, unnormalised."""
    return sum(
        i * counts[t] * (k1 + 1) / (counts[t] + k1)
        for t, i in zip(query.terms, query.idf, strict=True)
        if t in counts
    )


SCORERS: dict[str, Callable[..., float]] = {"tp": tp_score, "bigram": bigram_score}


def rescored(lists: Lists, query: Query, bm25: Bm25, setting: Setting) -> list[Scored]:
    """The BM25 candidates with `weight` x the method's score added, best DEPTH first ("off", "tp3": as
    captured)."""
    method, window, weight = setting
    candidates = query.bm25[bm25]
    if method in ("off", "tp3") or (len(query.terms) < 2 and method != "prefix"):
        return candidates[:DEPTH]
    k1 = bm25[0]
    out = []
    for key, score in candidates:
        if method == "prefix":
            extra = prefix_score(lists.prefix.get(key, {}), query, k1)
        else:
            found = lists.positions.get(key, {})
            extra = SCORERS[method](found, query, window, _norm(lists, key), k1)
        out.append((key, score + weight * extra))
    out.sort(key=lambda hit: -hit[1])
    return out[:DEPTH]


def _norm(lists: Lists, key: int) -> float:
    """BM25's length normaliser 1 - b + b len / avg of a chunk (the shipped length spread's b)."""
    return 1 - lists.b + lists.b * lists.lengths.get(key, 0) / lists.average


def fuse(
    lists: Lists, query: Query, bm25_list: list[Scored], bm25: Bm25, setting: Setting, w: float
) -> list[int]:
    """The product's z-score fusion; with "tp3" the candidates' BM25TP scores as a third list (weight)."""
    method, window, weight = setting
    if method != "tp3" or len(query.terms) < 2:
        return z_fused(query.dense, bm25_list, w)
    keys = list(dict.fromkeys([k for k, _ in query.dense] + [k for k, _ in bm25_list]))
    prox = []
    for key in keys:
        found = lists.positions.get(key, {})
        prox.append((key, tp_score(found, query, window, _norm(lists, key), bm25[0])))
    prox.sort(key=lambda hit: -hit[1])
    weights = {"dense": w, "bm25": 1 - w, "prox": weight}
    fused = zscore({"dense": query.dense, "bm25": bm25_list, "prox": prox}, weights=weights)
    return [f.key for f in keep_lexical_top(fused, bm25_list, DEPTH)]


Grid = tuple[Setting, float]  # proximity setting, dense weight


def tables(
    prepared: Mapping[str, Prepared], lists: Mapping[str, Lists], bm25: Bm25
) -> tuple[dict[Setting, Scores], dict[Grid, Scores]]:
    """BM25-only and hybrid scores of every grid entry on every collection, with one BM25 setting."""
    bm25_table: dict[Setting, Scores] = {}
    hybrid: dict[Grid, Scores] = {}
    for setting in PROXIMITY_GRID:
        ranked = {n: [rescored(lists[n], q, bm25, setting) for q in lists[n].queries] for n in prepared}
        bm25_table[setting] = {
            n: scores_of(p, lists[n], [[k for k, _ in r] for r in ranked[n]]) for n, p in prepared.items()
        }
        for w in Z_WEIGHTS:
            hybrid[(setting, w)] = {
                n: scores_of(
                    p, lists[n],
                    [
                        fuse(lists[n], q, r, bm25, setting, w)
                        for q, r in zip(lists[n].queries, ranked[n], strict=True)
                    ],
                )
                for n, p in prepared.items()
            }  # fmt: skip
        line = " ".join(f"{n} {hybrid[(setting, 0.6)][n]['ndcg@10']:.3f}" for n in prepared)
        print(f"  {bm25} {setting} hybrid at .6: {line}", file=sys.stderr)
    return bm25_table, hybrid


def measure(prepared: Mapping[str, Prepared], lists: Mapping[str, Lists]) -> dict[str, Any]:
    names = list(prepared)
    computed: dict[Bm25, tuple[dict[Setting, Scores], dict[Grid, Scores]]] = {}
    folds: dict[str, Any] = {}
    for held in [*names, None]:
        bm25 = BM25_FOLDS.get(held or "", DEFAULT_BM25)
        if bm25 not in computed:
            computed[bm25] = tables(prepared, lists, bm25)
        bm25_table, hybrid = computed[bm25]
        train = [n for n in names if n != held]
        base_grid = [(PROXIMITY_GRID[0], w) for w in Z_WEIGHTS]
        base = choose(base_grid, hybrid, train)
        chosen = choose(list(hybrid), hybrid, train)
        same_w = choose([(s, base[1]) for s in PROXIMITY_GRID], hybrid, train)
        fold: dict[str, Any] = {
            "choice": [list(chosen[0]), chosen[1]], "off": [list(base[0]), base[1]],
            "choice at off's dense weight": list(same_w[0]),
        }  # fmt: skip
        if held is not None:
            fold["runs"] = {
                "bm25": bm25_table[PROXIMITY_GRID[0]][held],
                "bm25 + proximity": bm25_table[chosen[0]][held],
                "hybrid": hybrid[base][held],
                "hybrid + proximity": hybrid[chosen][held],
                "hybrid + proximity, off's dense weight": hybrid[same_w][held],
            }
        folds[held or "all collections"] = fold
    grid = {
        f"{s[0]} {s[1]} {s[2]}": {
            n: round(v["ndcg@10"], 4) for n, v in computed[DEFAULT_BM25][1][(s, 0.6)].items()
        }
        for s in PROXIMITY_GRID
    }
    return {"folds": folds, "grid_hybrid_dense_0.6": grid}


def format_report(report: Mapping[str, Any]) -> str:
    runs = [
        "bm25",
        "bm25 + proximity",
        "hybrid",
        "hybrid + proximity",
        "hybrid + proximity, off's dense weight",
    ]
    lines = [
        "nDCG@10 / R@20 / fail@20, leave-one-collection-out", "",
        f"| collection | {' | '.join(runs)} | choice (method, window, weight; dense) |",
        "|" + " --- |" * (len(runs) + 2),
    ]  # fmt: skip
    for name, fold in report["folds"].items():
        if "runs" not in fold:
            lines.append(f"| {name} | | | | | | {fold['choice']} |")
            continue
        cells = " | ".join(
            " / ".join(f"{fold['runs'][r][m]:.3f}" for m, _ in TABLE_METRICS[:3]) for r in runs
        )
        same = fold["choice at off's dense weight"]
        lines.append(f"| {name} | {cells} | {fold['choice']}; {same} |")
    return "\n".join(lines)


def speed(prepared: Mapping[str, Prepared], rounds: int) -> dict[str, Any]:
    """Per query, one after the other: the product's BM25 stage (top DEPTH), then the rescoring of its
    hits (catalog texts, analysis, BM25TP); "on" is the two together, so on and off share the noise."""
    out: dict[str, Any] = {}
    for name, p in prepared.items():
        searcher = Capture(p.settings, p.version, p.embedder)
        lexical = searcher.lexical
        texts = [q.text for q in p.collection.queries if q.text.strip()]
        off, on = [], []
        for _ in range(rounds):
            for text in texts:
                started = time.perf_counter()
                hits = lexical.search(
                    text, DEPTH, tenant=EVAL_PRINCIPAL.tenant, reader_tokens=EVAL_PRINCIPAL.reader_tokens()
                )
                plain = time.perf_counter() - started
                rows = searcher.catalog.chunk_rows(p.version, [k for k, _ in hits])
                terms = lexical.analyse(text)
                wanted = set(terms)
                for row in rows.values():
                    found: dict[str, list[int]] = {}
                    for at, token in enumerate(lexical.tokens(chunk_of(row).indexed_text())):
                        if token in wanted:
                            found.setdefault(token, []).append(at)
                    tp_score(found, Terms(terms=terms, idf=[1.0] * len(terms)), 8, 1.0, 1.6)
                off.append(plain * 1000)
                on.append((time.perf_counter() - started) * 1000)
        searcher.close()
        out[name] = {
            "off p50": statistics.median(off), "off p95": float(np.percentile(off, 95)),
            "on p50": statistics.median(on), "on p95": float(np.percentile(on, 95)),
            "median ratio": statistics.median(b / a for a, b in zip(off, on, strict=True) if a > 0),
        }  # fmt: skip
        print(name, {k: round(v, 2) for k, v in out[name].items()}, file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv, inverted=True, flags=("speed",))
    settings = get_settings()
    prepared = prepare_all(settings, args)
    if args.speed:
        print(json.dumps(speed(prepared, 3)))
        return 0
    lists = {n: capture(p, settings.data_path / "eval") for n, p in prepared.items()}
    report = measure(prepared, lists)
    return emit(format_report(report), report, args)


if __name__ == "__main__":
    sys.exit(main())
