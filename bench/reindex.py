"""Rebuild throughput and query latency idle vs during a rebuild, in one run, on the demo corpus.

    .venv/bin/python -m bench.reindex [--model minilm-rot] [--idle-queries 120] [--data-dir DIR]

1. An embedded Redis and a fresh data dir; the demo corpus (index.demo, ~1,600 chunks) ingested with
   settings.embed_model (MiniLM) through actors.bootstrap.ensure_demo.
2. Idle: closed-loop hybrid queries (golden-set questions made unique so no cache answers them).
3. Rebuild: a real reindex worker process (`python -m actors.reindex`, settings.reindex_embed_threads threads)
   builds the `--model` version from the catalog, gates it on index/golden/demo and cuts over, while the
   same query loop runs through the cutover and a few seconds past it.
Reported: chunks/s of the build, p50/p95 idle vs during, failed queries, the versions that answered.
Target (2 cores): p95 during <= 2x idle, zero failed queries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import redis

from actors.api import enqueue_reindex
from index.evaluate import Query, read_jsonl
from index.reindex.gate import GOLDEN_DEMO_DIR
from index.reindex.jobs import get_job, start_job
from index.search import SearchService
from index.types import Principal
from store.redis import EmbeddedRedis
from store.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PRINCIPAL = Principal(tenant="default", user="bench")
AFTER_CUTOVER_S = 3.0
BUILD_TIMEOUT_S = 900.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class QueryLoop:
    def __init__(self, service: SearchService, questions: list[str]) -> None:
        self.service = service
        self.questions = questions
        self.n = 0

    def one(self) -> tuple[float, str | None, str]:
        """(latency ms, error or None, version)."""
        text = f"{self.questions[self.n % len(self.questions)]} {self.n}"  # unique: never a cache hit
        self.n += 1
        started = time.perf_counter()
        try:
            result = self.service.search_sync(text, PRINCIPAL, k=8, mode="hybrid")
        except Exception as exc:  # every failure is counted, none may happen
            return (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}", ""
        return (time.perf_counter() - started) * 1000, None, result.index_version


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm-rot", help="the embedder of the new version")
    parser.add_argument("--idle-queries", type=int, default=120)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    from actors.bootstrap import ensure_demo

    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="docent-bench-reindex-"))
    server = EmbeddedRedis(workdir / "redis")
    server.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith("DOCENT_")}
        env.update(
            DOCENT_DATA_DIR=str(workdir / "data"), DOCENT_REDIS_URL=server.url, DOCENT_LLM_BACKEND="none"
        )
        env.setdefault("DOCENT_MODEL_DIR", str(REPO / ".cache" / "models"))
        env.setdefault("DOCENT_DEMO_MODULES", "core")  # the corpus its README figures were measured on
        settings = Settings.from_env(env)
        client = redis.Redis.from_url(server.url)

        started = time.perf_counter()
        demo = ensure_demo(settings)
        print(f"demo ingested: {demo['documents']} documents, {demo['chunks']} chunks "
              f"in {time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip

        questions = [q.text for q in read_jsonl(GOLDEN_DEMO_DIR / "queries.jsonl", Query)]
        service = SearchService(settings)
        loop = QueryLoop(service, questions)
        for _ in range(5):  # warm-up: model loads, page cache
            loop.one()
        idle = [loop.one() for _ in range(args.idle_queries)]
        print(f"idle: {summary([ms for ms, _, _ in idle])}", flush=True)

        worker_env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}, **env}
        worker_env["PYTHONPATH"] = str(REPO)
        worker = subprocess.Popen([sys.executable, "-m", "actors.reindex"], cwd=REPO, env=worker_env)
        job = start_job(settings, client, model=args.model, requested_by="bench")
        enqueue_reindex(settings, job.id)
        during: list[tuple[float, str | None, str]] = []
        after: list[tuple[float, str | None, str]] = []
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while time.monotonic() < deadline:
            current = get_job(client, job.id)
            if current.terminal:
                break
            (during if current.status == "building" else after).append(loop.one())
        switched = time.monotonic()
        while time.monotonic() - switched < AFTER_CUTOVER_S:
            after.append(loop.one())
        final = get_job(client, job.id)

        failures = [error for _, error, _ in idle + during + after if error]
        report = {
            "job": {"status": final.status, "model": final.model, "documents": final.docs_total,
                    "chunks": final.chunks_embedded, "build_s": round(final.build_s, 1),
                    "chunks_per_s": final.chunks_per_s, "slices": final.slices,
                    "gate_passed": final.gate.passed if final.gate else None,
                    "gate": msgspec.to_builtins(final.gate.deltas) if final.gate else None},
            "reindex_embed_threads": settings.reindex_embed_threads,
            "embed_threads": settings.embed_threads,
            "idle": summary([ms for ms, _, _ in idle]),
            "during_build": summary([ms for ms, _, _ in during]),
            "validate_cutover_and_after": summary([ms for ms, _, _ in after]),
            "p95_ratio_during_vs_idle": round(
                percentile([ms for ms, _, _ in during], 0.95) / percentile([ms for ms, _, _ in idle], 0.95), 2
            ),
            "failed_queries": len(failures),
            "failure_samples": failures[:5],
            "versions_answering": sorted({v for _, _, v in idle + during + after if v}),
            "new_version": final.new_version,
        }  # fmt: skip
        print(json.dumps(report, indent=2))
        service.close()
        client.close()
        return 0 if final.status == "done" and not failures else 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
