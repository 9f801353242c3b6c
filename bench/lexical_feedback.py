"""RM3 feedback for BM25 (index.lexical_feedback): quality leave-one-collection-out, and its cost in ms.

    .venv/bin/python -m bench.lexical_feedback                     # bench.retrieval_quality's collections
    .venv/bin/python -m bench.lexical_feedback DIR [DIR ...] [--json]

Quality: bm25 and hybrid with the shipped settings and each of PRF_GRID (feedback chunks, expansion terms, the
query's own share; 0 chunks = off), per collection; then, per held-out collection, the setting the other
collections choose by bench.retrieval_quality's max-min rule on hybrid nDCG@10, against off.
Cost: the BM25 stage's ms (timings_ms["bm25"]) with feedback off and at COST_SETTING, alternated query by
query over ROUNDS rounds on the first two collections: p50, p95, and the median of the per-query ratios.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import msgspec
import numpy as np

from bench.retrieval_quality import DEFAULT_DIRS, Prepared, Scores, choose, collection_args, prepare, score
from index.evalrun import DEPTH, EVAL_PRINCIPAL
from index.search import Mode, Searcher
from store.settings import get_settings

Prf = tuple[int, int, float]  # feedback chunks, expansion terms, the original query's share
PRF_GRID: tuple[Prf, ...] = (
    (0, 10, 0.5),
    (5, 10, 0.5),
    (5, 10, 0.7),
    (10, 10, 0.7),
    (5, 20, 0.7),
    (10, 20, 0.5),
)
COST_SETTING: Prf = (5, 10, 0.5)
ROUNDS = 3
MODES: tuple[Mode, ...] = ("bm25", "hybrid")


def prf_settings(prf: Prf) -> dict[str, object]:
    docs, terms, original = prf
    return {"bm25_prf_docs": docs, "bm25_prf_terms": terms, "bm25_prf_original": original}


def quality(prepared: dict[str, Prepared]) -> dict[str, dict[Prf, Scores]]:
    table: dict[str, dict[Prf, Scores]] = {"bm25": {}, "hybrid": {}}
    for prf in PRF_GRID:
        for mode in MODES:
            table[mode][prf] = {n: score(p, mode, **prf_settings(prf)) for n, p in prepared.items()}
        row = " ".join(f"{n} {table['hybrid'][prf][n]['ndcg@10']:.3f}" for n in prepared)
        print(f"  {prf}: hybrid {row}", file=sys.stderr, flush=True)
    return table


def cost(prepared: Prepared) -> dict[str, float]:
    """BM25-stage ms, feedback off and on, alternated query by query."""
    off = Searcher(prepared.settings, prepared.version, prepared.embedder)
    settings = msgspec.structs.replace(prepared.settings, **prf_settings(COST_SETTING))
    on = Searcher(settings, prepared.version, prepared.embedder)
    queries = [q.text for q in prepared.collection.queries if q.text.strip()]
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(ROUNDS):
            for query in queries:
                for label, searcher in (("off", off), ("on", on)):
                    result = searcher.search_sync(query, EVAL_PRINCIPAL, k=DEPTH, mode="bm25")
                    times[label].append(result.timings_ms["bm25"])
    finally:
        off.close()
        on.close()
    a, b = np.array(times["off"]), np.array(times["on"])
    return {
        "off_p50": float(np.median(a)), "off_p95": float(np.percentile(a, 95)),
        "on_p50": float(np.median(b)), "on_p95": float(np.percentile(b, 95)),
        "ratio_median": float(np.median(b / np.maximum(a, 1e-6))),
    }  # fmt: skip


def report(prepared: dict[str, Prepared]) -> dict:
    table = quality(prepared)
    names = list(prepared)
    hybrid = table["hybrid"]
    folds = {}
    for held in names:
        chosen = choose(PRF_GRID, hybrid, [n for n in names if n != held])
        folds[held] = {"chosen": list(chosen), "off": hybrid[PRF_GRID[0]][held], "loco": hybrid[chosen][held]}
    runs = {mode: {str(list(prf)): scores for prf, scores in by.items()} for mode, by in table.items()}
    costs = {name: cost(prepared[name]) for name in names[:2]}
    return {"runs": runs, "folds": folds, "cost_ms": costs, "cost_setting": list(COST_SETTING)}


def format_report(result: dict) -> str:
    lines = ["| held out | chosen (chunks, terms, share) | hybrid nDCG@10 off | chosen | R@20 off | chosen |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, fold in result["folds"].items():
        off, loco = fold["off"], fold["loco"]
        lines.append(
            f"| {name} | {tuple(fold['chosen'])} | {off['ndcg@10']:.3f} | {loco['ndcg@10']:.3f} | "
            f"{off['recall@20']:.3f} | {loco['recall@20']:.3f} |"
        )
    lines += ["", f"BM25 stage ms, off vs {tuple(result['cost_setting'])}, {ROUNDS} rounds interleaved:", ""]
    lines += ["| collection | off p50 | off p95 | on p50 | on p95 | median per-query ratio |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, c in result["cost_ms"].items():
        lines.append(
            f"| {name} | {c['off_p50']:.2f} | {c['off_p95']:.2f} | {c['on_p50']:.2f} | {c['on_p95']:.2f} | "
            f"{c['ratio_median']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv)
    prepared = {d.name: prepare(get_settings(), d) for d in args.directories}
    result = report(prepared)
    print(format_report(result))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
