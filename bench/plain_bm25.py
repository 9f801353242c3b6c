"""The issue's plain-BM25 reference points, rebuilt: Whoosh BM25F over whole documents, beside our BM25.

    .venv/bin/python -m bench.plain_bm25                       # vaswani, cranfield, perlfaq, debfaq
    .venv/bin/python -m bench.plain_bm25 DIR [DIR ...]         # any BEIR-layout collections

Each collection's documents (title + text, one field) go into a fresh Whoosh index in a temporary
directory, scored with Whoosh's own BM25F and searched with every query term OR-ed, top 100:
  whoosh stemmed   StemmingAnalyzer (Whoosh's stop list), BM25F K1 1.2, B .75 (the shared eval README's runs);
  whoosh plain     StandardAnalyzer (no stemming), BM25F K1 .9, B .4 (the issue's question-set runs).
Printed beside them: our BM25 (the collection's `docent eval` index, settings as shipped). nDCG@10 is given
with our gains (2^g - 1, index.evaluate) and with linear gains (g, trec_eval's ndcg_cut): on graded
judgments (cranfield) the two differ; the shared README's reference figures are linear.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Mapping, Sequence

from whoosh import index as whoosh_index
from whoosh import query as Q
from whoosh.analysis import StandardAnalyzer, StemmingAnalyzer
from whoosh.fields import ID, TEXT, Schema
from whoosh.scoring import BM25F

from bench.retrieval_quality import SHARED, collection_args, prepare
from index.evalrun import run_queries
from index.evaluate import Collection, score_run
from index.search import Searcher
from store.settings import get_settings

DEPTH = 100
SYSTEMS = {"whoosh stemmed": (StemmingAnalyzer, 1.2, 0.75), "whoosh plain": (StandardAnalyzer, 0.9, 0.4)}
Run = Mapping[str, Sequence[str]]


def linear_ndcg(run: Run, qrels: Mapping[str, Mapping[str, int]], k: int = 10) -> float:
    total = 0.0
    for query, relevant in qrels.items():
        ranked = run.get(query, ())[:k]
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted(relevant.values(), reverse=True)[:k]
        total += dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return total / len(qrels)


def whoosh_run(collection: Collection, analyzer: type, k1: float, b: float) -> Run:
    with tempfile.TemporaryDirectory() as directory:
        ix = whoosh_index.create_in(directory, Schema(id=ID(stored=True), body=TEXT(analyzer=analyzer())))
        writer = ix.writer()
        for doc in collection.corpus:
            writer.add_document(id=doc._id, body=f"{doc.title} {doc.text}")
        writer.commit()
        analyse = analyzer()
        run: dict[str, list[str]] = {}
        with ix.searcher(weighting=BM25F(K1=k1, B=b)) as searcher:
            for query in collection.queries:
                terms = list(dict.fromkeys(token.text for token in analyse(query.text)))
                found = searcher.search(Q.Or([Q.Term("body", t) for t in terms]), limit=DEPTH)
                run[query._id] = [hit["id"] for hit in found]
        ix.close()
    return run


def main(argv: Sequence[str] | None = None) -> int:
    defaults = tuple(SHARED / name for name in ("vaswani", "cranfield", "perlfaq", "debfaq"))
    args = collection_args(__doc__ or "", defaults, argv)
    print("| collection | run | nDCG@10 | nDCG@10 (linear gains) | R@20 | R@100 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for directory in args.directories:
        prepared = prepare(get_settings(), directory)
        collection = prepared.collection
        runs: dict[str, Run] = {name: whoosh_run(collection, *spec) for name, spec in SYSTEMS.items()}
        searcher = Searcher(prepared.settings, prepared.version, prepared.embedder)
        runs["ours bm25"] = run_queries(searcher, collection, "bm25")[0]
        searcher.close()
        for name, run in runs.items():
            m = score_run(run, collection.qrels)
            linear = linear_ndcg(run, collection.qrels)
            cells = f"{m['ndcg@10']:.3f} | {linear:.3f} | {m['recall@20']:.3f} | {m['recall@100']:.3f}"
            print(f"| {directory.name} | {name} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
