"""BM25 stage latency with and without the document-level blend (index.lexical_docs), interleaved.

    .venv/bin/python -m bench.lexical_docs                      # vaswani and perlfaq (../shared/eval)
    .venv/bin/python -m bench.lexical_docs DIR [DIR ...]        # any BEIR-layout collections

Each collection's `docent eval` index (index.evalrun, cached under DOCENT_DATA_DIR/eval) is opened twice,
doc_weight 0 and settings.bm25_doc_weight; every query runs top 100 on both, alternating which goes first,
REPEATS times; the first pass warms the caches and is not counted. Prints p50 and p95 in ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

from bench.retrieval_quality import SHARED, collection_args, prepare
from index.evalrun import EVAL_PRINCIPAL
from index.lexical import LexicalIndex
from index.versions import version_path
from store.settings import get_settings

REPEATS = 3
TOP_K = 100


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", (SHARED / "vaswani", SHARED / "perlfaq"), argv)
    settings = get_settings()
    tokens = EVAL_PRINCIPAL.reader_tokens()
    for directory in args.directories:
        prepared = prepare(settings, directory)
        path = version_path(prepared.settings, prepared.version)
        weights = (0.0, settings.bm25_doc_weight)
        indexes = [LexicalIndex.open(path, doc_weight=w) for w in weights]
        queries = [q.text for q in prepared.collection.queries]
        times: list[list[float]] = [[] for _ in indexes]
        for repeat in range(REPEATS + 1):
            for n, query in enumerate(queries):
                order = [0, 1] if (n + repeat) % 2 == 0 else [1, 0]
                for i in order:
                    started = time.perf_counter()
                    indexes[i].search(query, TOP_K, tenant=EVAL_PRINCIPAL.tenant, reader_tokens=tokens)
                    if repeat:
                        times[i].append((time.perf_counter() - started) * 1000)
        for weight, samples in zip(weights, times, strict=True):
            p50, p95 = percentiles(samples)
            print(f"{directory.name}: doc_weight {weight}: bm25 p50 {p50:.2f} ms, p95 {p95:.2f} ms")
        for index in indexes:
            index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
