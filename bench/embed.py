"""Embedding bench: query latency (cold, LRU hit, Redis hit) and offline chunk throughput by batch size.

    .venv/bin/python bench/embed.py [--queries 200] [--chunks 96] [--threads N] [--model minilm|e5-small]
    .venv/bin/python bench/embed.py --compare minilm e5-small [--rounds 3]   # interleaved, with ratios

MiniLM (or e5-small) int8 on CTranslate2, converted into DOCENT_MODEL_DIR (default: .cache/models, shared
with the tests). `--compare` alternates the models round by round on the same texts (a shared machine's
load moves between rounds) and prints each round's batch-4 chunks/s and cold query p50 / p95, then the
median of the per-round ratios to the first model. Queries are short (5-9 words), all distinct; "cold"
runs the model, "lru" is a repeat in the same process, "redis" is a repeat with a fresh in-process cache,
from a private embedded redis-server started for the bench (never the configured Redis: nothing there is
touched). Chunks are ~256 tokens of prose-like text (254 + [CLS]/[SEP]).
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

from index.embed import MAX_TOKENS, CT2Embedder, PrefixedEmbedder, QueryEmbedder, load_embedder  # noqa: E402
from index.types import Embedder  # noqa: E402
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


def ct2(embedder: Embedder) -> CT2Embedder:
    """The CTranslate2 embedder underneath (e5's PrefixedEmbedder wraps one)."""
    base = embedder.base if isinstance(embedder, PrefixedEmbedder) else embedder
    assert isinstance(base, CT2Embedder)
    return base


def make_chunk(embedder: Embedder, rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(MAX_TOKENS)]
    while embedder.count_tokens(" ".join(words)) > MAX_TOKENS - 2:
        words.pop()
    return " ".join(words)


def bench_queries(embedder: Embedder, redis_url: str, n: int, rng: random.Random) -> None:
    queries = make_queries(n, rng)
    client = redis.Redis.from_url(redis_url)
    first = QueryEmbedder(embedder, cache_size=4096, redis_client=client)
    for i in range(20):
        first.embed_query(f"warm up the model {i}")
    print(f"query embedding ({n} distinct short queries, intra_threads={ct2(embedder).intra_threads}):")
    report("cold (model + redis write)", timed_ms(first.embed_query, queries))
    report("cached (in-process LRU)", timed_ms(first.embed_query, queries))
    second = QueryEmbedder(embedder, cache_size=4096, redis_client=client)
    report("cached (redis, cold LRU)", timed_ms(second.embed_query, queries))
    bare = QueryEmbedder(embedder, cache_size=4096)
    report("cold (model only)", timed_ms(bare.embed_query, [q + " again" for q in queries]))
    client.close()


def bench_throughput(embedder: Embedder, n: int, rng: random.Random) -> None:
    chunks = [make_chunk(embedder, rng) for _ in range(n)]
    base = ct2(embedder)
    tokens = statistics.mean(base.count_tokens(c) for c in chunks)
    print(f"offline throughput ({n} chunks of {tokens:.0f} tokens, intra_threads={base.intra_threads}):")
    embedder.embed(chunks[:4])  # warm-up
    for batch_size in BATCH_SIZES:
        base.batch_size = batch_size
        start = time.perf_counter()
        embedder.embed(chunks)
        elapsed = time.perf_counter() - start
        print(f"  batch {batch_size:>3}: {n / elapsed:7.1f} chunks/s   ({elapsed * 1000 / n:6.1f} ms/chunk)")


def compare_round(
    embedder: Embedder, chunks: Sequence[str], queries: Sequence[str]
) -> tuple[float, float, float]:
    """(batch-4 chunks/s, cold query p50 ms, p95 ms) of one model on these texts."""
    base = ct2(embedder)
    base.batch_size = 4
    start = time.perf_counter()
    embedder.embed(chunks)
    rate = len(chunks) / (time.perf_counter() - start)
    samples = timed_ms(QueryEmbedder(embedder, cache_size=len(queries) + 1).embed_query, queries)
    return rate, percentile(samples, 0.5), percentile(samples, 0.95)


def compare(settings: Settings, names: Sequence[str], rounds: int, n_chunks: int, n_queries: int) -> None:
    embedders = {name: load_embedder(settings, name, purpose="offline") for name in names}
    rng = random.Random(7)
    chunks = [make_chunk(embedders[names[0]], rng) for _ in range(n_chunks)]
    for embedder in embedders.values():
        embedder.embed(chunks[:4])  # warm-up
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        queries = [f"{q} {r}" for q in make_queries(n_queries, rng)]  # fresh per round: every query is cold
        for name, embedder in embedders.items():
            results[name].append(compare_round(embedder, chunks, queries))
            rate, p50, p95 = results[name][-1]
            print(f"round {r + 1} {name:<10} {rate:6.1f} chunks/s   query p50 {p50:6.2f} / p95 {p95:6.2f} ms")
    first = results[names[0]]
    for name in names[1:]:
        ratios = [
            [mine[i] / theirs[i] for mine, theirs in zip(results[name], first, strict=True)] for i in range(3)
        ]
        cells = " / ".join(f"{statistics.median(r):.2f}" for r in ratios)
        print(f"{name} / {names[0]}, median of {rounds} rounds: chunks/s, query p50, p95 = {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads")
    parser.add_argument("--model", default="minilm", choices=("minilm", "e5-small"))
    parser.add_argument("--compare", nargs="+", metavar="MODEL", help="interleave these models, with ratios")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = Settings.from_env()
    if not settings.model_dir:
        settings = msgspec.structs.replace(settings, model_dir=str(REPO / ".cache" / "models"))
    settings = msgspec.structs.replace(settings, bulk_embed_threads=args.threads, embed_threads=args.threads)
    if args.compare:
        compare(settings, args.compare, args.rounds, args.chunks, args.queries)
        return
    start = time.perf_counter()
    embedder = load_embedder(settings, args.model, purpose="online")
    elapsed = time.perf_counter() - start
    device = ct2(embedder).device
    print(f"{embedder.identity.name} int8 on {device}, loaded in {elapsed:.2f} s; cores: {os.cpu_count()}")
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        bench_queries(embedder, server.url, args.queries, rng)
    bench_throughput(embedder, args.chunks, rng)


if __name__ == "__main__":
    main()
