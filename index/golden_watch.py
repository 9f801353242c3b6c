"""The active index version measured on every golden set (the reindex gate's sets and scoring), so an
operator sees quality drift between rebuilds: after ingest batches and on a schedule
(actors.golden_recall_job).

Worker side: loads numpy, the embedder and the indexes.
"""

from __future__ import annotations

from index.reindex.alias import read_alias
from index.reindex.embedders import embedder_for
from index.reindex.gate import GATE_MODES, evaluate_version, golden_dirs, load_golden
from index.reindex.verify import live_documents
from index.types import Embedder
from index.versions import get_active, read_manifest
from store.catalog import Catalog
from store.exceptions import IndexError_
from store.golden_recall import GoldenScore, Trigger
from store.settings import Settings


def active_embedder(settings: Settings) -> tuple[str, Embedder]:
    """The active version and the embedder of its vector space; IndexError_ when no version is active."""
    version = get_active(settings)
    if version is None:
        raise IndexError_("no active index version to measure")
    alias = read_alias(settings)
    hint = alias.embedder if alias is not None and alias.version == version else ""
    return version, embedder_for(settings, read_manifest(settings, version), hint, purpose="offline")[1]


def measure_active(settings: Settings, catalog: Catalog, trigger: Trigger, now_ms: int) -> list[GoldenScore]:
    """nDCG@10 and recall@20 of the active version on every golden set that judges a live document."""
    dirs = golden_dirs(settings)
    if not dirs:
        return []
    version, embedder = active_embedder(settings)
    live = set(live_documents(catalog))
    scores: list[GoldenScore] = []
    for directory in dirs:
        golden = load_golden(directory, live)
        if golden is None:
            continue
        for mode in GATE_MODES:
            metrics = evaluate_version(settings, catalog, version, embedder, golden, mode)
            scores.append(
                GoldenScore(
                    golden_set=golden.name, mode=mode, ndcg_at_10=round(metrics["ndcg@10"], 4),
                    recall_at_20=round(metrics["recall@20"], 4), queries=len(golden.queries),
                    index_version=version, trigger=trigger, at_ms=now_ms,
                )
            )  # fmt: skip
    return scores
