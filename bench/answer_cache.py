"""Answer cache bench: the similarity threshold tuned on question pairs, the exactness guard's worth, and the
first token of a cached answer against the uncached path.

    .venv/bin/python -m bench.answer_cache quality [--eval ../shared/eval]
    .venv/bin/python -m bench.answer_cache speed [--asks 20] [--llm local|scripted]

quality  Question pairs from perlfaq, debfaq, vaswani, cranfield (../shared/eval) and the demo golden set
         (index/golden/demo); never the Python FAQ or the R FAQ.
           near misses  REAL pairs: two questions of one collection that share no judged answer, and the most
                        words (content-word Jaccard >= NEAR_MISS_JACCARD, each question's closest three):
                        "same words, different question". Serving one's answer for the other is a false hit.
           paraphrases  RULE-MADE rewrites of the real questions (no collection ships paraphrases): a question
                        frame swapped ("how do I" -> "how can I", "what is" -> "what's", ...), or a content
                        word swapped for a synonym ("remove" -> "delete"), or case and punctuation changed.
                        They should share the answer.
         Embeddings: MiniLM int8 (the product's query embedder), cosine of the two questions. Pairs are split
         in two halves by a hash of the pair; the threshold is the lowest whose false-hit rate on the first
         half is <= 1 %, and the figures are reported on the second half, with and without the guard.
         A pair stands for "the other question is the cached one" (pairwise, not a full cache simulation).
speed    One process: an embedded Redis, an index of debfaq (judged answers + distractors) embedded with
         MiniLM, the conversation actor run in this thread (no dramatiq hop), the answer cache on. Each round
         asks a question in a new conversation (a miss: retrieval + the model; its answer is stored) and then
         a rule-made paraphrase of it (a hit). First token = the first delta's time - the ask's time (the
         UserMessage's at_ms, stamped when posted). Prints p50 / p95 of both, and the lookup's own time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np

from index.exactness import same_question
from index.followup import content_words

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = ("perlfaq", "debfaq", "vaswani", "cranfield")
NEAR_MISS_JACCARD = 0.25
NEAR_MISSES_PER_QUESTION = 3
MAX_FALSE_HIT = 0.01
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 1.0, 0.01)]

FRAMES: list[tuple[str, str]] = [
    (r"^how do i ", "how can i "), (r"^how can i ", "how do i "), (r"^how do you ", "how does one "),
    (r"^what is ", "what's "), (r"^what's ", "what is "), (r"^what are ", "what exactly are "),
    (r"^why does ", "for what reason does "), (r"^why do ", "for what reason do "),
    (r"^why is ", "how come "), (r"^can i ", "is it possible to "), (r"^is there a way to ", "how can i "),
    (r"^where can i ", "where do i "),
    (r"^where do i ", "where can i "), (r"^how does ", "in what way does "), (r"^does ", "is it true that "),
    (r"^is it possible to ", "can i "), (r"^which ", "what "), (r"^when ", "at what point "),
]  # fmt: skip
SYNONYMS = {
    "remove": "delete", "delete": "remove", "program": "script", "script": "program", "show": "display",
    "create": "make", "make": "create", "change": "modify", "modify": "change", "find": "locate",
    "start": "begin", "big": "large", "large": "big", "error": "problem", "errors": "problems",
    "fast": "quick", "quickly": "fast", "install": "set up", "get": "obtain", "files": "documents",
    "file": "document", "check": "verify", "print": "output", "read": "load", "write": "save",
    "measurement": "measuring", "effect": "influence", "effects": "influences", "methods": "techniques",
    "method": "technique", "problems": "issues", "problem": "issue", "use": "usage", "high": "elevated",
}  # fmt: skip


# ---- pairs ------------------------------------------------------------------------------------------------


def load_collection(root: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    queries = {}
    for line in (root / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        queries[row["_id"]] = row["text"]
    judged: dict[str, set[str]] = defaultdict(set)
    for n, line in enumerate((root / "qrels" / "test.tsv").read_text().splitlines()):
        if n == 0 or not line.strip():
            continue
        query, doc, score = line.split("\t")
        if float(score) > 0:
            judged[query].add(doc)
    return queries, judged


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def near_misses(queries: dict[str, str], judged: dict[str, set[str]]) -> list[tuple[str, str]]:
    words = {q: set(content_words(t)) for q, t in queries.items()}
    pairs: set[tuple[str, str]] = set()
    for q in queries:
        others = [o for o in queries if o != q and not (judged[q] & judged[o]) and judged[o]]
        if not judged[q] or not others:
            continue
        closest = sorted(others, key=lambda o: -_jaccard(words[q], words[o]))[:NEAR_MISSES_PER_QUESTION]
        pairs.update(
            (min(q, o), max(q, o)) for o in closest if _jaccard(words[q], words[o]) >= NEAR_MISS_JACCARD
        )
    return [(queries[a], queries[b]) for a, b in sorted(pairs)]


def paraphrases(text: str) -> Iterator[tuple[str, str]]:
    """(kind, rewrite) of one question: a frame swap, a synonym swap, or case and punctuation."""
    lowered = text.strip().lower()
    for pattern, replacement in FRAMES:
        if re.match(pattern, lowered):
            yield "frame", re.sub(pattern, replacement, lowered, count=1)
            break
    else:
        yield "case", lowered.rstrip("?. ") + ("" if lowered.endswith("?") else "?")
    words = text.split()
    for n, word in enumerate(words):
        core = word.lower().strip("?,.")
        if core in SYNONYMS:
            swapped = [*words[:n], word.lower().replace(core, SYNONYMS[core]), *words[n + 1 :]]
            yield "synonym", " ".join(swapped)
            break


class Pair(msgspec.Struct, frozen=True):
    collection: str
    kind: str  # near_miss | frame | case | synonym
    a: str
    b: str

    @property
    def half(self) -> int:
        return hashlib.sha256(f"{self.a}\x00{self.b}".encode()).digest()[0] % 2


def build_pairs(eval_root: Path) -> list[Pair]:
    roots = {name: eval_root / name for name in COLLECTIONS} | {"demo": REPO / "index" / "golden" / "demo"}
    pairs: list[Pair] = []
    for name, root in roots.items():
        queries, judged = load_collection(root)
        pairs += [Pair(name, "near_miss", a, b) for a, b in near_misses(queries, judged)]
        for text in queries.values():
            pairs += [
                Pair(name, kind, text, rewrite) for kind, rewrite in paraphrases(text) if rewrite != text
            ]
    return pairs


# ---- quality ----------------------------------------------------------------------------------------------


def _rates(
    sims: np.ndarray, guard: np.ndarray, positive: np.ndarray, t: float, guarded: bool
) -> tuple[float, float]:
    served = (sims >= t) & (guard if guarded else True)
    hit = served[positive].mean() if positive.any() else 0.0
    false = served[~positive].mean() if (~positive).any() else 0.0
    return float(hit), float(false)


def quality(eval_root: Path) -> None:
    from index.embed import load_minilm
    from store.settings import Settings

    pairs = build_pairs(eval_root)
    settings = Settings.from_env()
    if not settings.model_dir:
        settings = msgspec.structs.replace(settings, model_dir=str(REPO / ".cache" / "models"))
    embedder = load_minilm(settings, intra_threads=2)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    sims = np.array([float(vectors[p.a] @ vectors[p.b]) for p in pairs])
    started = time.perf_counter()
    guard = np.array([same_question(p.a, p.b).ok for p in pairs])
    guard_us = (time.perf_counter() - started) / len(pairs) * 1e6
    positive = np.array([p.kind != "near_miss" for p in pairs])
    half = np.array([p.half for p in pairs])
    kinds: dict[tuple[str, str], int] = defaultdict(int)
    for p in pairs:
        kinds[(p.collection, p.kind)] += 1
    print(f"pairs: {len(pairs)} ({int(positive.sum())} paraphrases, {int((~positive).sum())} near misses)")
    for collection in (*COLLECTIONS, "demo"):
        row = ", ".join(f"{k} {kinds[(collection, k)]}" for k in ("near_miss", "frame", "case", "synonym"))
        print(f"  {collection:<9} {row}")
    print(f"guard: {guard_us:.1f} us a pair")
    for guarded in (False, True):
        tune, test = half == 0, half == 1
        chosen = next(
            (t for t in THRESHOLDS
             if _rates(sims[tune], guard[tune], positive[tune], t, guarded)[1] <= MAX_FALSE_HIT),
            1.0,
        )  # fmt: skip
        hit, false = _rates(sims[test], guard[test], positive[test], chosen, guarded)
        served_ok = hit * positive[test].sum()
        served_bad = false * (~positive[test]).sum()
        accuracy = served_ok / (served_ok + served_bad) if served_ok + served_bad else 1.0
        label = "with the guard   " if guarded else "without the guard"
        print(f"{label}: threshold {chosen:.2f} (tuned on half 1)  half 2: paraphrase hit rate {hit:.3f}, "
              f"near-miss false-hit rate {false:.3f}, served answers right {accuracy:.3f}")  # fmt: skip
        for kind in ("frame", "case", "synonym"):
            mask = test & np.array([p.kind == kind for p in pairs])
            if mask.any():
                served = (sims[mask] >= chosen) & (guard[mask] if guarded else True)
                print(f"    {kind:<8} hit rate {served.mean():.3f} ({int(mask.sum())} pairs)")
    print("leave one collection out (threshold chosen on the other four, with the guard):")
    collections = np.array([p.collection for p in pairs])
    for held in (*COLLECTIONS, "demo"):
        tune, test = collections != held, collections == held
        chosen = next(
            (
                t
                for t in THRESHOLDS
                if _rates(sims[tune], guard[tune], positive[tune], t, True)[1] <= MAX_FALSE_HIT
            ),
            1.0,
        )
        hit, false = _rates(sims[test], guard[test], positive[test], chosen, True)
        misses = int((~positive[test]).sum())
        print(f"  {held:<9} threshold {chosen:.2f}: paraphrase hit rate {hit:.3f}, "
              f"false-hit rate {false:.3f} ({misses} near misses)")  # fmt: skip
    shipped = Settings().answer_cache_threshold
    print(f"each collection at the shipped threshold {shipped:.2f}, with the guard:")
    for name in (*COLLECTIONS, "demo"):
        mask = collections == name
        hit, false = _rates(sims[mask], guard[mask], positive[mask], shipped, True)
        print(f"  {name:<9} paraphrase hit rate {hit:.3f}, false-hit rate {false:.3f}")
    print("near-miss false-hit rate at fixed thresholds (both halves):")
    for t in (0.80, 0.85, 0.90, 0.95):
        off = _rates(sims, guard, positive, t, False)
        on = _rates(sims, guard, positive, t, True)
        print(f"  {t:.2f}: no guard hit {off[0]:.3f} false {off[1]:.3f} | "
              f"guard hit {on[0]:.3f} false {on[1]:.3f}")  # fmt: skip


# ---- speed ------------------------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def speed(eval_root: Path, asks: int, llm: str) -> None:
    import dramatiq

    from actors.broker import use_stub_broker

    if dramatiq.broker.global_broker is None:  # before the actor module declares its actor: no broker hop
        use_stub_broker()
    from actors.conversation import activate
    from actors.runtime import Runtime
    from actors.testing import ScriptedLLMThread
    from index.embed import load_minilm
    from index.ingest import Ingestor
    from index.types import Access
    from store.events import CacheHit, Delta, UserMessage
    from store.redis import EmbeddedRedis
    from store.settings import Settings

    queries, judged = load_collection(eval_root / "debfaq")
    corpus = [json.loads(line) for line in (eval_root / "debfaq" / "corpus.jsonl").read_text().splitlines()]
    wanted = {d for docs in judged.values() for d in docs}
    docs = [d for d in corpus if d["_id"] in wanted][: asks * 2] + [
        d for d in corpus if d["_id"] not in wanted
    ][:200]
    questions = [q for q in queries.values() if any(k == "frame" for k, _ in paraphrases(q))][:asks]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server, \
            ScriptedLLMThread({}) as scripted:  # fmt: skip
        env = {
            "DOCENT_DATA_DIR": str(Path(tmp) / "data"), "DOCENT_REDIS_URL": server.url,
            "DOCENT_MODEL_DIR": str(REPO / ".cache" / "models"), "DOCENT_ANSWER_CACHE": "true",
            "DOCENT_LLM_BACKEND": "local" if llm == "local" else "openai", "DOCENT_LLM_URL": scripted.url,
        }  # fmt: skip
        settings = Settings.from_env(env)
        embedder = load_minilm(settings, intra_threads=2)
        started = time.perf_counter()
        access = Access(tenant="bench")
        with Ingestor(settings, embedder) as ingestor:
            for doc in docs:
                title = doc.get("title") or ""
                data = doc["text"].encode()
                ingestor.ingest_document(doc["_id"], data=data, fmt="txt", title=title, access=access)
        print(f"indexed {len(docs)} debfaq documents in {time.perf_counter() - started:.0f} s; llm: {llm}")
        rt = Runtime.from_settings(settings)
        first: dict[str, list[float]] = {"uncached": [], "cached": []}
        lookups: list[float] = []
        try:
            for n, question in enumerate(questions):
                rewrite = next(r for k, r in paraphrases(question) if k == "frame")
                for kind, text in (("uncached", question), ("cached", rewrite)):
                    conv = f"{kind}-{n}"
                    asked = int(time.time() * 1000)
                    rt.log.post_inbox(conv, UserMessage(text=text, tenant="bench", user="u", at_ms=asked))
                    activate(conv, rt)
                    live = rt.log.catch_up(conv, "0")
                    delta = next((i for _, i in live if isinstance(i, Delta)), None)
                    hit = next((e for _, e in rt.log.read(conv) if isinstance(e, CacheHit)), None)
                    if delta is None or (kind == "cached") != (hit is not None):
                        print(f"  {kind} {text!r}: {'hit' if hit else 'miss'}, skipped")
                        continue
                    first[kind].append(delta.at_ms - asked)
                    if hit is not None:
                        lookups.append(hit.latency_ms)
        finally:
            rt.close()
    for kind, values in first.items():
        if values:
            print(f"first token, {kind:<8}: p50 {_pct(values, .5):7.1f} ms  p95 {_pct(values, .95):7.1f} ms  "
                  f"({len(values)} asks)")  # fmt: skip
    if lookups:
        p50, p95 = _pct(lookups, 0.5), _pct(lookups, 0.95)
        print(f"cache lookup (embed + search + checks): p50 {p50:.1f} ms  p95 {p95:.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("quality", "speed"))
    parser.add_argument("--eval", type=Path, default=REPO.parent / "shared" / "eval")
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument("--llm", choices=("local", "scripted"), default="local")
    args = parser.parse_args(argv)
    if args.what == "quality":
        quality(args.eval)
    else:
        speed(args.eval, args.asks, args.llm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
