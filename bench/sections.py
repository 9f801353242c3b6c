"""Small-to-big context: how much of the judged answer reaches the prompt, chunks vs enclosing sections.

    .venv/bin/python -m bench.sections                      # perlfaq, debfaq, demo golden set
    .venv/bin/python -m bench.sections DIR [DIR ...] [--json]

For every judged query: the production hybrid search (k hits), then the passages the model is given — the
chunks as found (window 0), or each hit's section up to `window` tokens (index.sections). Reported per
(k, window): prompt tokens of the passages (median), and answer coverage: the share of the judged documents'
text that is in the passages (characters, passages are verbatim slices), averaged over queries. A
better setting gives more of the answer at the same or fewer prompt tokens.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence

from bench.retrieval_quality import ROOT, SHARED, Prepared, collection_args, prepare
from index.evalrun import EVAL_PRINCIPAL
from index.search import Searcher
from index.sections import section_passages
from index.types import Hit
from store.settings import get_settings

DEFAULT_DIRS = (SHARED / "perlfaq", SHARED / "debfaq", ROOT / "tests" / "golden" / "demo")
SETTINGS = ((8, 0), (8, 512), (4, 0), (4, 512), (4, 1024), (2, 1024))  # (hits, window tokens)


def coverage(passages: Sequence[Hit], relevant: dict[str, int], texts: dict[str, str]) -> float:
    shares = []
    for doc_id in relevant:
        size = len(texts.get(doc_id, "")) or 1
        found = sum(len(p.text) for p in passages if p.doc_id == doc_id)
        shares.append(min(1.0, found / size))
    return statistics.mean(shares) if shares else 0.0


def measure(prepared: Prepared) -> dict[str, dict[str, float]]:
    searcher = Searcher(prepared.settings, prepared.version, prepared.embedder)
    collection = prepared.collection
    queries = [q for q in collection.queries if collection.qrels.get(q._id)]
    texts = {doc._id: doc.text for doc in collection.corpus}
    results = searcher.search_many_sync(
        [q.text for q in queries], EVAL_PRINCIPAL, k=max(k for k, _ in SETTINGS)
    )
    report = {}
    for k, window_tokens in SETTINGS:
        tokens, covered = [], []
        for query, result in zip(queries, results, strict=True):
            passages = section_passages(
                searcher.catalog, searcher.version, result.hits[:k], EVAL_PRINCIPAL,
                max_tokens=window_tokens, count_tokens=prepared.embedder.count_tokens,
            )  # fmt: skip
            tokens.append(sum(prepared.embedder.count_tokens(p.text) for p in passages))
            covered.append(coverage(passages, collection.qrels[query._id], texts))
        report[f"k={k} window={window_tokens}"] = {
            "prompt_tokens_p50": statistics.median(tokens), "answer_coverage": statistics.mean(covered),
        }  # fmt: skip
    searcher.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv)
    settings = get_settings()
    reports = {d.name: measure(prepare(settings, d)) for d in args.directories}
    print("| collection | passages | prompt tokens p50 | answer coverage |\n| --- | --- | --- | --- |")
    for name, report in reports.items():
        for n, (setting, figures) in enumerate(report.items()):
            label = name if n == 0 else ""
            tokens, share = figures["prompt_tokens_p50"], figures["answer_coverage"]
            print(f"| {label} | {setting} | {tokens:.0f} | {share:.3f} |")
    if args.json:
        print(json.dumps(reports, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
