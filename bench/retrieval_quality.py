"""Retrieval quality with parameters chosen leave-one-collection-out: the README's quality table.

    .venv/bin/python -m bench.retrieval_quality                       # the five collections (see below)
    .venv/bin/python -m bench.retrieval_quality --json                # and one JSON line
    .venv/bin/python -m bench.retrieval_quality DIR [DIR ...]         # any BEIR-layout collections
    .venv/bin/python -m bench.retrieval_quality --inverted-grades cranfield   # its grade 1 is the best

Collections: vaswani, cranfield, perlfaq, debfaq (../shared/eval, see README for how to get them) and the
demo golden set (tests/golden/demo, scored on the demo knowledge base built from this machine's Python).
Each index is built once by `docent eval`'s machinery (index.evalrun, cached under DOCENT_DATA_DIR/eval);
the parameters below are query-time only, so one index serves every setting.

Selection, for each held-out collection H:
  1. BM25 (k1, length spread, document weight) over BM25_GRID (the spread fixes b from each index's chunk
     lengths, b = min(1, spread / CV(lengths)), index.lexical_postings.spread_b: b itself does not carry
     over between short abstracts and uniform chunks; the weight of a chunk's document in its score,
     index.lexical_docs; 0 scores chunks alone): the setting whose worst ratio to the per-collection best
     nDCG@10, over the other collections, is highest (a max-min rule: one collection's quirk cannot pull
     the choice);
  2. fusion over FUSION_GRID (z-score with dense weight a, RRF with BM25 weight w and k), with the BM25 of
     step 1, by the same rule;
  3. H is scored with those choices only. The shipped defaults are the same rule applied to all collections.
The table prints, per collection, the LOCO bm25 / dense / hybrid figures, then the choices of every fold.

`--inverted-grades NAME` scores that collection with its grades turned round (g -> top + 1 - g): nDCG's gain
2^g - 1 assumes higher is better, and Cranfield's cranqrel codes run the other way (1: a complete answer,
2: high relevance, 3: useful, 4: minimum interest, per the collection's own readme; every retriever here
puts grade-1 documents in its top 10 about twice as often as grade-4 ones, README). Recall, fail@20 and
MRR do not change; the fold choices may, since nDCG@10 picks them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from index.embed import load_embedder
from index.evalrun import TABLE_METRICS, ensure_index, run_queries
from index.evaluate import Collection, load_collection, score_run
from index.search import Fusion, Mode, Searcher
from index.types import Embedder
from index.versions import get_active
from store.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "eval"
DEFAULT_DIRS = (
    *(SHARED / name for name in ("vaswani", "cranfield", "perlfaq", "debfaq")),
    ROOT / "tests" / "golden" / "demo",
)
BM25_GRID = tuple(itertools.product((0.9, 1.2, 1.6, 2.0), (0.2, 0.25, 0.3, 0.35, 0.4, 0.45), (0.0, 0.5)))
FUSION_GRID: tuple[tuple[Fusion, float, int], ...] = (
    *(("zscore", a, 0) for a in (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)),
    *(("rrf", w, k) for w in (1.0, 0.5, 0.3) for k in (60, 20)),
)
METRIC = "ndcg@10"

Scores = dict[str, dict[str, float]]  # collection -> metric -> value


class MemoEmbedder:
    """The offline embedder, each query text embedded once for the whole grid."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.identity = embedder.identity
        self.count_tokens = embedder.count_tokens
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self.embedder.embed(missing), strict=True))
        return np.stack([self._vectors[t] for t in texts])


class Prepared(msgspec.Struct, kw_only=True):
    collection: Collection
    settings: Settings
    version: str
    embedder: MemoEmbedder


def inverted_grades(collection: Collection) -> Collection:
    """The collection with each query's grades turned round, g -> top + 1 - g (top: its highest grade)."""
    top = max((g for judged in collection.qrels.values() for g in judged.values()), default=1)
    qrels = {q: {doc: top + 1 - g for doc, g in judged.items()} for q, judged in collection.qrels.items()}
    return msgspec.structs.replace(collection, qrels=qrels)


def prepare(settings: Settings, directory: Path, *, invert: bool = False) -> Prepared:
    from index.evalrun import DEMO_COLLECTION, demo_corpus

    corpus = None
    if not (directory / "corpus.jsonl").exists() and directory.name == DEMO_COLLECTION:
        corpus = demo_corpus(settings)
    collection = load_collection(directory, corpus=corpus)
    if invert:
        collection = inverted_grades(collection)
    embedder = load_embedder(settings, None, purpose="offline")
    local, _, _ = ensure_index(settings, collection, corpus or directory / "corpus.jsonl", embedder)
    version = get_active(local)
    assert version is not None
    return Prepared(collection=collection, settings=local, version=version, embedder=MemoEmbedder(embedder))


def score(prepared: Prepared, mode: Mode, **query_settings: object) -> dict[str, float]:
    settings = msgspec.structs.replace(prepared.settings, **query_settings)
    searcher = Searcher(settings, prepared.version, prepared.embedder)
    try:
        run, _ = run_queries(searcher, prepared.collection, mode)
    finally:
        searcher.close()
    return score_run(run, prepared.collection.qrels)


def fusion_settings(fusion: tuple[Fusion, float, int]) -> dict[str, object]:
    kind, weight, k = fusion
    if kind == "zscore":
        return {"fusion": "zscore", "fusion_dense_weight": weight}
    return {"fusion": "rrf", "fusion_dense_weight": 1 / (1 + weight), "rrf_k": k}  # dense 1 : bm25 w


Bm25Choice = tuple[float, float, float]  # k1, length spread, document weight
G = TypeVar("G", bound=tuple[object, ...])  # a grid entry: BM25, fusion, feedback settings


def choose(grid: Sequence[G], table: dict[G, Scores], names: Sequence[str]) -> G:
    """The grid entry whose worst ratio to the per-collection best, over `names`, is highest."""
    best = {n: max(table[g][n][METRIC] for g in grid) or 1.0 for n in names}
    return max(grid, key=lambda g: min(table[g][n][METRIC] / best[n] for n in names))


def grid_scores(
    prepared: dict[str, Prepared], grid: Sequence[G], run: Callable[[Prepared, G], dict[str, float]]
) -> dict[G, Scores]:
    table: dict[G, Scores] = {}
    for g in grid:
        table[g] = {name: run(p, g) for name, p in prepared.items()}
        print(f"  {g}: " + " ".join(f"{n} {s[METRIC]:.3f}" for n, s in table[g].items()), file=sys.stderr)
    return table


def bm25_settings(choice: Bm25Choice) -> dict[str, object]:
    k1, spread, doc_weight = choice
    return {"bm25_k1": k1, "bm25_length_spread": spread, "bm25_doc_weight": doc_weight}


def bm25_scores(prepared: dict[str, Prepared]) -> dict[Bm25Choice, Scores]:
    print("bm25 grid", file=sys.stderr)
    return grid_scores(prepared, BM25_GRID, lambda p, g: score(p, "bm25", **bm25_settings(g)))


FusionChoice = tuple[Fusion, float, int]


def fusion_scores(prepared: dict[str, Prepared], bm25: Bm25Choice) -> dict[FusionChoice, Scores]:
    print(f"fusion grid with bm25 k1, length spread, document weight {bm25}", file=sys.stderr)
    return grid_scores(
        prepared, FUSION_GRID, lambda p, g: score(p, "hybrid", **bm25_settings(bm25), **fusion_settings(g))
    )


def loco(settings: Settings, directories: Sequence[Path], inverted: Sequence[str] = ()) -> dict:
    prepared = {d.name: prepare(settings, d, invert=d.name in inverted) for d in directories}
    names = list(prepared)
    bm25 = bm25_scores(prepared)
    dense = {n: score(p, "dense") for n, p in prepared.items()}
    hybrid: dict[Bm25Choice, dict[FusionChoice, Scores]] = {}
    folds: dict[str, dict] = {}
    for held in [*names, None]:
        train = [n for n in names if n != held]
        params = choose(BM25_GRID, bm25, train)
        if params not in hybrid:
            hybrid[params] = fusion_scores(prepared, params)
        fusion = choose(FUSION_GRID, hybrid[params], train)
        fold: dict = {**bm25_settings(params), "fusion": list(fusion)}
        if held is not None:
            fold["runs"] = {
                "bm25": bm25[params][held],
                "dense": dense[held],
                "hybrid": hybrid[params][fusion][held],
            }
        folds[held or "shipped defaults (all collections)"] = fold
    queries = {n: len(p.collection.qrels) for n, p in prepared.items()}
    return {"metric": METRIC, "folds": folds, "queries": queries, "inverted_grades": sorted(inverted)}


def format_report(report: dict) -> str:
    head = "| collection (held out) | run | " + " | ".join(label for _, label in TABLE_METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(TABLE_METRICS) + 2)]
    for name, fold in report["folds"].items():
        for n, (run, metrics) in enumerate(fold.get("runs", {}).items()):
            cells = " | ".join(f"{metrics[m]:.3f}" for m, _ in TABLE_METRICS)
            lines.append(f"| {name if n == 0 else ''} | {run} | {cells} |")
    lines += ["", "| fold | bm25 k1, length spread, document weight | fusion |", "| --- | --- | --- |"]
    for name, fold in report["folds"].items():
        kind, weight, k = fold["fusion"]
        fusion = f"z-score, dense {weight}" if kind == "zscore" else f"RRF k {k}, bm25 weight {weight}"
        bm25 = f"{fold['bm25_k1']}, {fold['bm25_length_spread']}, {fold['bm25_doc_weight']}"
        lines.append(f"| {name} | {bm25} | {fusion} |")
    return "\n".join(lines)


def collection_args(
    doc: str,
    defaults: Sequence[Path],
    argv: Sequence[str] | None,
    *,
    inverted: bool = False,
    flags: Sequence[str] = (),
) -> argparse.Namespace:
    """The collection benches' command line: DIR ... (default `defaults`), --json, --inverted-grades when
    `inverted`, and a --NAME switch for each of `flags`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("directories", nargs="*", type=Path, default=list(defaults))
    parser.add_argument("--json", action="store_true")
    if inverted:
        add_inverted_grades(parser)
    for flag in flags:
        parser.add_argument(f"--{flag}", action="store_true")
    return parser.parse_args(argv)


def add_inverted_grades(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inverted-grades", action="append", default=[], metavar="NAME",
        help="score this collection with its grades turned round (its grade 1 is the best; repeatable)",
    )  # fmt: skip


def prepare_all(settings: Settings, args: argparse.Namespace) -> dict[str, Prepared]:
    """Every collection of a collection bench's command line (collection_args), by name."""
    inverted = getattr(args, "inverted_grades", [])
    return {d.name: prepare(settings, d, invert=d.name in inverted) for d in args.directories}


def emit(table: str, report: Mapping[str, object], args: argparse.Namespace) -> int:
    """A collection bench's output: its table, then with --json its report as one line (and the grades
    it turned round)."""
    print(table)
    if args.json:
        extra = {"inverted_grades": args.inverted_grades} if hasattr(args, "inverted_grades") else {}
        print(json.dumps({**report, **extra}, separators=(",", ":")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv, inverted=True)
    report = loco(get_settings(), args.directories, args.inverted_grades)
    print(format_report(report))
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
