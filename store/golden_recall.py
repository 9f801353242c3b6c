"""The golden-set recall of the active index, re-measured on a schedule and after ingest batches.

`actors.golden_recall_job` measures (nDCG@10 and recall@20 of every golden set, dense and hybrid) and
records here; `/metrics`, `GET /admin/golden/recall` and the admin console read it. Keys, one hash tag:

    golden:{recall}:latest         hash: "<set>/<mode>" -> the newest GoldenScore (msgspec JSON)
    golden:{recall}:history        list: GoldenScores, newest first, HISTORY_MAX kept
    golden:{recall}:pending_docs   documents ingested since the last measurement (golden_pending.lua)
    golden:{recall}:due            the scheduled chain's slot (SET NX, expiring before the next run)
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from prometheus_client.core import GaugeMetricFamily

from store import metrics
from store.scripts import Batch, Call, Eval, Plan, lua

LATEST = "golden:{recall}:latest"
HISTORY = "golden:{recall}:history"
PENDING_DOCS = "golden:{recall}:pending_docs"
DUE = "golden:{recall}:due"
HISTORY_MAX = 2_000  # e.g. 4 sets x 2 modes, hourly, for ten days
PENDING = lua("golden_pending.lua")

Trigger = Literal["schedule", "ingest", "admin"]


class GoldenScore(msgspec.Struct, frozen=True, kw_only=True):
    golden_set: str
    mode: str  # "dense" | "hybrid"
    ndcg_at_10: float
    recall_at_20: float
    queries: int
    index_version: str
    trigger: Trigger
    at_ms: int


_decode = msgspec.json.Decoder(GoldenScore)


def record_plan(scores: list[GoldenScore]) -> Plan[None]:
    def queue(pipe: Any) -> None:
        for score in scores:
            raw = msgspec.json.encode(score)
            pipe.hset(LATEST, f"{score.golden_set}/{score.mode}", raw)
            pipe.lpush(HISTORY, raw)
        pipe.ltrim(HISTORY, 0, HISTORY_MAX - 1)

    if scores:
        yield Batch(queue, transaction=True)


def latest_plan() -> Plan[list[GoldenScore]]:
    found = yield Call(lambda r: r.hgetall(LATEST))
    return sorted((_decode.decode(v) for v in found.values()), key=lambda s: (s.golden_set, s.mode))


def history_plan(limit: int) -> Plan[list[GoldenScore]]:
    raw = yield Call(lambda r: r.lrange(HISTORY, 0, max(0, min(limit, HISTORY_MAX)) - 1))
    return [_decode.decode(v) for v in raw]


def ingested_plan(documents: int, threshold: int) -> Plan[bool]:
    """Count ingested documents; True once `threshold` are in since the last measurement (counter reset)."""
    if documents <= 0 or threshold <= 0:
        return False
    due = yield Eval(PENDING, [PENDING_DOCS], [documents, threshold])
    return bool(due)


def exposition(scores: list[GoldenScore]) -> bytes:
    """The newest scores as gauges for GET /metrics (labels: golden set and mode, both bounded)."""
    ndcg = GaugeMetricFamily(
        "docent_golden_ndcg_at_10_ratio", "nDCG@10 of the active index on a golden set, newest measurement.",
        labels=["golden_set", "mode"],
    )  # fmt: skip
    recall = GaugeMetricFamily(
        "docent_golden_recall_at_20_ratio", "Recall@20 of the active index on a golden set, newest.",
        labels=["golden_set", "mode"],
    )  # fmt: skip
    measured = GaugeMetricFamily(
        "docent_golden_measured_timestamp_seconds", "When a golden set was last measured (Unix time).",
        labels=["golden_set", "mode"],
    )  # fmt: skip
    for score in scores:
        labels = [score.golden_set, score.mode]
        ndcg.add_metric(labels, score.ndcg_at_10)
        recall.add_metric(labels, score.recall_at_20)
        measured.add_metric(labels, score.at_ms / 1000)
    return metrics.families_exposition([ndcg, recall, measured])
