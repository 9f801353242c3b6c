"""Issue 14, Metrics: observations counted in the process (`store.metrics_tally`) reach prometheus-client's
multiprocess files as they would have one by one: scraped from the directory by another process and parsed
with prometheus-client's own text parser. Each writer is a real process of its own (multiprocess mode is
decided when prometheus-client is imported, and this test process has no directory)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from store.metrics_tally import FLUSH_MS

REPO = Path(__file__).resolve().parent.parent
# Generous: the bound is FLUSH_MS, but a loaded 2-core machine delays any thread by seconds at worst.
ARRIVAL_DEADLINE_S = 30.0

_PRELUDE = """
import os, sys
from prometheus_client import Counter, Histogram
from store import metrics, metrics_tally
from store.events import ToolResult
assert metrics_tally.multiprocess()
"""


def _writer(directory: Path, body: str) -> subprocess.Popen[str]:
    script = _PRELUDE + textwrap.dedent(body)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _run(directory: Path, body: str) -> str:
    process = _writer(directory, body)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def _scrape(directory: Path) -> dict[str, list[Any]]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    text = generate_latest(registry).decode()
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def _value(families: dict[str, list[Any]], family: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families.get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_tallied_observations_expose_as_the_childrens_own(tmp_path: Path) -> None:
    """The same values observed through tallies and directly on prometheus-client's children (bucket
    bounds themselves, between them, 0, negative, +Inf, NaN) expose the same buckets, sums and counts."""
    _run(tmp_path, """
        from store.metrics import LATENCY_BUCKETS
        from store.metrics_tally import tally_of, flush
        h = Histogram("t_seconds", "h", ["way"], buckets=LATENCY_BUCKETS)
        c = Counter("t_things", "c", ["way"])
        th, tc = tally_of(h.labels("tally")), tally_of(c.labels("tally"))
        assert type(th).__name__ == "HistogramTally" and type(tc).__name__ == "CounterTally"
        dh, dc = h.labels("direct"), c.labels("direct")
        for v in (0.005, 0.0051, 0.0, -1.0, 0.3, 60.0, 120.0, 121.0, float("inf"), 2.5, 0.005):
            th.observe(v)
            dh.observe(v)
        for v in (1, 2.5, 0, 7):
            tc.inc(v)
            dc.inc(v)
        flush()
        th.observe(0.01); dh.observe(0.01)  # written at exit
    """)  # fmt: skip
    families = _scrape(tmp_path)
    by_way: dict[str, list[tuple[str, str | None, float]]] = {}
    for s in families["t_seconds"]:
        by_way.setdefault(s.labels["way"], []).append((s.name, s.labels.get("le"), s.value))
    assert sorted(by_way["tally"]) == sorted(by_way["direct"])
    assert _value(families, "t_seconds", "t_seconds_count", way="tally") == 12
    things = {s.labels["way"]: s.value for s in families["t_things"] if s.name == "t_things_total"}
    assert things["tally"] == things["direct"] == 10.5


def test_another_process_s_observations_reach_a_scrape_while_it_runs(tmp_path: Path) -> None:
    """A worker's seams, scraped from the directory by this process while the worker lives: its thread
    writes them within FLUSH_MS, with no scrape, exit or flush of its own."""
    process = _writer(tmp_path, """
        metrics.observe_retrieval({"embed": 1.0, "ann": 0.5, "bm25": 7.0, "total": 9.0})
        metrics.observe_event(ToolResult(step=1, call_id="c", tool="search", idempotency_key="k"), now_ms=0)
        print("observed", flush=True)
        sys.stdin.read()  # alive until the test is done
    """)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "observed"
        deadline = time.monotonic() + ARRIVAL_DEADLINE_S
        while True:
            families = _scrape(tmp_path)
            stages = "docent_retrieval_stage_seconds"
            if _value(families, stages, f"{stages}_count", stage="total") == 1:
                break
            assert time.monotonic() < deadline, f"not written within {ARRIVAL_DEADLINE_S} s"
            time.sleep(FLUSH_MS / 1000 / 5)
        for stage in ("embed", "ann", "bm25"):
            assert _value(families, stages, f"{stages}_count", stage=stage) == 1
        assert _value(families, stages, f"{stages}_bucket", stage="bm25", le="0.01") == 1
        assert _value(families, stages, f"{stages}_bucket", stage="bm25", le="0.005") == 0
        assert _value(families, "docent_tool_calls", "docent_tool_calls_total", tool="search") == 1
        assert process.poll() is None  # the worker is still running: its thread wrote them
    finally:
        process.communicate(input="", timeout=30)


def test_the_scraping_process_writes_its_own_first_and_every_process_at_exit(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        metrics.observe_answer_cache("hit")
        text = metrics.exposition().decode()  # at once: no wait for the thread
        print([line for line in text.splitlines() if line.startswith("docent_answer_cache_lookups_total")])
        metrics.observe_answer_cache("miss")  # never flushed but by the exit
    """)  # fmt: skip
    assert 'outcome="hit"} 1.0' in out
    families = _scrape(tmp_path)
    lookups = "docent_answer_cache_lookups"
    assert _value(families, lookups, f"{lookups}_total", outcome="hit") == 1
    assert _value(families, lookups, f"{lookups}_total", outcome="miss") == 1


def test_a_forked_child_does_not_write_its_parent_s_counts(tmp_path: Path) -> None:
    """Counted, not yet written, then a fork (dramatiq forks its worker processes): the parent writes its
    counts, the child its own only."""
    _run(tmp_path, """
        metrics.observe_answer_cache("hit")
        pid = os.fork()
        if pid == 0:
            metrics.observe_answer_cache("miss")
            sys.exit(0)  # atexit: the child's own count
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
    """)  # fmt: skip
    families = _scrape(tmp_path)
    lookups = "docent_answer_cache_lookups"
    assert _value(families, lookups, f"{lookups}_total", outcome="hit") == 1
    assert _value(families, lookups, f"{lookups}_total", outcome="miss") == 1
