"""Retrieval evaluation on any collection in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv).

Metrics are computed per query at the document level (a document's rank is that of its best chunk) and
averaged over queries that have at least one relevant judgment: nDCG@10 (graded gains), recall@20, the
brief's failure rate (1 - recall@20), recall@100, MRR@10.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from store.exceptions import InputError

METRICS = ("ndcg@10", "recall@20", "failure@20", "recall@100", "mrr@10")


class CorpusDoc(msgspec.Struct, frozen=True):
    _id: str = msgspec.field(name="_id")
    title: str = ""
    text: str = ""


class Query(msgspec.Struct, frozen=True):
    _id: str = msgspec.field(name="_id")
    text: str = ""


class Collection(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    corpus: tuple[CorpusDoc, ...]
    queries: tuple[Query, ...]
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> graded relevance (> 0)


def read_jsonl(path: Path, kind: type[CorpusDoc] | type[Query]) -> list:
    decoder = msgspec.json.Decoder(kind)
    with path.open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text().splitlines()):
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        if n == 0 and not parts[2].strip().lstrip("-").isdigit():
            continue  # header
        query_id, doc_id, score = parts[0].strip(), parts[1].strip(), int(parts[2])
        if score > 0:
            qrels.setdefault(query_id, {})[doc_id] = score
    return qrels


def load_collection(directory: Path, *, corpus: Path | None = None) -> Collection:
    """Load a BEIR-layout collection; `corpus` overrides where corpus.jsonl is read from."""
    directory = Path(directory)
    corpus_path = corpus or directory / "corpus.jsonl"
    for needed in (corpus_path, directory / "queries.jsonl", directory / "qrels" / "test.tsv"):
        if not needed.exists():
            raise InputError(f"not a BEIR collection: {needed} is missing")
    qrels = read_qrels(directory / "qrels" / "test.tsv")
    queries = [q for q in read_jsonl(directory / "queries.jsonl", Query) if q._id in qrels]
    return Collection(
        name=directory.name,
        corpus=tuple(read_jsonl(corpus_path, CorpusDoc)),
        queries=tuple(queries),
        qrels=qrels,
    )


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    return len(set(ranked[:k]) & relevant.keys()) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Average the metrics of a run (query id -> ranked doc ids) over the judged queries."""
    judged = [q for q in qrels if qrels[q]]
    if not judged:
        raise InputError("no judged queries")
    totals = dict.fromkeys(METRICS, 0.0)
    for q in judged:
        ranked, rel = run.get(q, ()), qrels[q]
        r20 = recall_at(ranked, rel, 20)
        totals["ndcg@10"] += ndcg_at(ranked, rel, 10)
        totals["recall@20"] += r20
        totals["failure@20"] += 1.0 - r20
        totals["recall@100"] += recall_at(ranked, rel, 100)
        totals["mrr@10"] += mrr_at(ranked, rel, 10)
    return {m: round(v / len(judged), 4) for m, v in totals.items()}


def dedupe_docs(doc_ids: Iterable[str], limit: int = 100) -> list[str]:
    """Document ranking from a chunk ranking: each document at the rank of its best chunk."""
    seen: dict[str, None] = {}
    for d in doc_ids:
        if d not in seen:
            seen[d] = None
            if len(seen) == limit:
                break
    return list(seen)
