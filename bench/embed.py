"""Embedding bench: query latency (cold, LRU hit, Redis hit) and offline chunk throughput by batch size.

    .venv/bin/python bench/embed.py [--queries 200] [--chunks 96] [--threads N]

MiniLM int8 on CTranslate2, converted into DOCENT_MODEL_DIR (default: .cache/models, shared with the
tests). Queries are short (5-9 words), all distinct; "cold" runs the model, "lru" is a repeat in the same
process, "redis" is a repeat with a fresh in-process cache, from a private embedded redis-server started
for the bench (never the configured Redis: nothing there is touched). Chunks are ~256 tokens of
prose-like text (254 + [CLS]/[SEP]).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: `python bench/embed.py`

import msgspec  # noqa: E402
import redis  # noqa: E402

from index.embed import MAX_TOKENS, CT2Embedder, QueryEmbedder, load_minilm  # noqa: E402
from store.redis import EmbeddedRedis  # noqa: E402
from store.settings import Settings  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16, 64)
PROSE = (
    "the contract supplier shall deliver goods invoice payment within thirty days of receipt any dispute "
    "arising under this agreement will be settled by arbitration employees must submit expense reports "
    "before the end of each month travel policy requires manager approval for flights over budget the "
    "security team reviews access requests quarterly vpn credentials expire after ninety days onboarding "
    "new staff includes laptop setup benefits enrolment and compliance training revenue grew in the third "
    "quarter while operating costs declined due to lower energy prices"
)
WORDS = PROSE.split()


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_ms(fn: Callable[[str], object], inputs: Sequence[str]) -> list[float]:
    out = []
    for text in inputs:
        start = time.perf_counter()
        fn(text)
        out.append((time.perf_counter() - start) * 1000)
    return out


def report(label: str, samples_ms: Sequence[float]) -> None:
    p50, p95 = percentile(samples_ms, 0.5), percentile(samples_ms, 0.95)
    print(f"  {label:<28} p50 {p50:8.3f} ms   p95 {p95:8.3f} ms   (n={len(samples_ms)})")


def make_queries(n: int, rng: random.Random) -> list[str]:
    queries: set[str] = set()
    while len(queries) < n:
        queries.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))) + "?")
    return sorted(queries)


def make_chunk(embedder: CT2Embedder, rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(MAX_TOKENS)]
    while embedder.count_tokens(" ".join(words)) > MAX_TOKENS - 2:
        words.pop()
    return " ".join(words)


def bench_queries(embedder: CT2Embedder, redis_url: str, n: int, rng: random.Random) -> None:
    queries = make_queries(n, rng)
    client = redis.Redis.from_url(redis_url)
    first = QueryEmbedder(embedder, cache_size=4096, redis_client=client)
    for i in range(20):
        first.embed_query(f"warm up the model {i}")
    print(f"query embedding ({n} distinct short queries, intra_threads={embedder.intra_threads}):")
    report("cold (model + redis write)", timed_ms(first.embed_query, queries))
    report("cached (in-process LRU)", timed_ms(first.embed_query, queries))
    second = QueryEmbedder(embedder, cache_size=4096, redis_client=client)
    report("cached (redis, cold LRU)", timed_ms(second.embed_query, queries))
    bare = QueryEmbedder(embedder, cache_size=4096)
    report("cold (model only)", timed_ms(bare.embed_query, [q + " again" for q in queries]))
    client.close()


def bench_throughput(embedder: CT2Embedder, n: int, rng: random.Random) -> None:
    chunks = [make_chunk(embedder, rng) for _ in range(n)]
    tokens = statistics.mean(len(embedder.token_ids(c)) for c in chunks)
    print(f"offline throughput ({n} chunks of {tokens:.0f} tokens, intra_threads={embedder.intra_threads}):")
    embedder.embed(chunks[:4])  # warm-up
    for batch_size in BATCH_SIZES:
        embedder.batch_size = batch_size
        start = time.perf_counter()
        embedder.embed(chunks)
        elapsed = time.perf_counter() - start
        print(f"  batch {batch_size:>3}: {n / elapsed:7.1f} chunks/s   ({elapsed * 1000 / n:6.1f} ms/chunk)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads")
    args = parser.parse_args()

    settings = Settings.from_env()
    if not settings.model_dir:
        settings = msgspec.structs.replace(settings, model_dir=str(REPO / ".cache" / "models"))
    start = time.perf_counter()
    embedder = load_minilm(settings, intra_threads=args.threads)
    elapsed = time.perf_counter() - start
    print(f"MiniLM int8 on {embedder.device}, loaded in {elapsed:.2f} s; cores: {os.cpu_count()}")
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        bench_queries(embedder, server.url, args.queries, rng)
    bench_throughput(embedder, args.chunks, rng)


if __name__ == "__main__":
    main()
