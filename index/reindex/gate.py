"""The golden-set gate: old vs new version on every golden set (BEIR layout), dense and hybrid.

Any nDCG@10 or recall@20 drop beyond `settings.gate_tolerance` fails the gate. The demo golden set ships
inside the package (`index/golden/demo`, package data, so an installed wheel has it too); more sets come
from `settings.golden_dirs`, and `{data dir}/golden/feedback` once admins have accepted down-voted answers
(`store.golden_candidates`). Worker side: searching loads numpy and the indexes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import msgspec

from index.evaluate import Query, dedupe_docs, read_jsonl, read_qrels, score_run
from index.reindex.jobs import GateReport, MetricDelta
from index.reindex.verify import live_documents
from index.search import Mode, Searcher
from index.types import Embedder, Principal
from store.catalog import Catalog
from store.exceptions import InputError
from store.golden_candidates import golden_dir
from store.settings import Settings

GOLDEN_DEMO_DIR = Path(str(resources.files("index") / "golden" / "demo"))
GATE_MODES: tuple[Mode, ...] = ("dense", "hybrid")
GATE_METRICS = ("ndcg@10", "recall@20")
GATE_PRINCIPAL = "reindex-gate"

Pair = tuple[str, Embedder]  # (version, the embedder of its vector space)


class GoldenSet(msgspec.Struct, kw_only=True):
    name: str
    queries: list[tuple[str, str]]  # (query id, text)
    qrels: dict[str, dict[str, int]]


def golden_dirs(settings: Settings) -> list[Path]:
    dirs = [GOLDEN_DEMO_DIR] if settings.golden_demo and GOLDEN_DEMO_DIR.is_dir() else []
    dirs += [Path(p) for p in settings.golden_dirs.split(os.pathsep) if p]
    feedback = golden_dir(settings.data_path)  # built by admins from down-voted answers
    if (feedback / "queries.jsonl").is_file():
        dirs.append(feedback)
    return dirs


def load_golden(directory: Path, live: set[str]) -> GoldenSet | None:
    """A BEIR-layout golden set restricted to judged documents present in the catalog (None: nothing left)."""
    qrels_path, queries_path = directory / "qrels" / "test.tsv", directory / "queries.jsonl"
    if not qrels_path.exists() or not queries_path.exists():
        raise InputError(f"golden set {directory} needs queries.jsonl and qrels/test.tsv")
    qrels = {
        q: kept
        for q, judged in read_qrels(qrels_path).items()
        if (kept := {d: g for d, g in judged.items() if d in live})
    }
    queries = [(q._id, q.text) for q in read_jsonl(queries_path, Query) if q._id in qrels]
    return GoldenSet(name=directory.name, queries=queries, qrels=qrels) if queries else None


def evaluate_version(
    settings: Settings, catalog: Catalog, version: str, embedder: Embedder, golden: GoldenSet, mode: Mode
) -> dict[str, float]:
    principal = Principal(tenant=settings.golden_tenant, user=GATE_PRINCIPAL)
    searcher = Searcher(settings, version, embedder, catalog=catalog, check_interval_ms=0)
    try:
        results = searcher.search_many_sync(
            [text for _, text in golden.queries], principal, k=settings.retrieve_k, mode=mode
        )
    finally:
        searcher.close()
    run = {
        qid: dedupe_docs(h.doc_id for h in r.hits)
        for (qid, _), r in zip(golden.queries, results, strict=True)
    }
    return score_run(run, golden.qrels)


def _compare(
    settings: Settings, catalog: Catalog, old: Pair, new: Pair, golden: GoldenSet, mode: Mode
) -> list[MetricDelta]:
    before = evaluate_version(settings, catalog, old[0], old[1], golden, mode)
    after = evaluate_version(settings, catalog, new[0], new[1], golden, mode)
    return [
        MetricDelta(golden_set=golden.name, mode=mode, metric=metric, old=before[metric], new=after[metric],
                    regressed=before[metric] - after[metric] > settings.gate_tolerance + 1e-9)
        for metric in GATE_METRICS
    ]  # fmt: skip


def run_gate(
    settings: Settings, catalog: Catalog, old: Pair, new: Pair, *, dirs: Sequence[Path] | None = None
) -> GateReport:
    """Old vs new on every golden set: passed unless some metric drops by more than the tolerance."""
    live = set(live_documents(catalog))
    report = GateReport(passed=True, tolerance=settings.gate_tolerance)
    for directory in golden_dirs(settings) if dirs is None else dirs:
        golden = load_golden(directory, live)
        if golden is None:
            report.skipped.append(directory.name)
            continue
        report.sets.append(golden.name)
        report.queries += len(golden.queries)
        for mode in GATE_MODES:
            report.deltas += _compare(settings, catalog, old, new, golden, mode)
    return _verdict(report)


def _verdict(report: GateReport) -> GateReport:
    worse = [d for d in report.deltas if d.regressed]
    if not report.sets:
        report.passed, report.reason = False, "no golden set judges any document of the catalog"
    elif worse:
        report.passed = False
        report.reason = "; ".join(
            f"{d.golden_set}/{d.mode} {d.metric} {d.old:.3f} -> {d.new:.3f}" for d in worse
        )
    return report
