"""Follow-up questions: does a question that leans on the turn before it retrieve like the question in full?

    .venv/bin/python -m bench.followups                    # perlfaq and debfaq (../shared/eval, see README)
    .venv/bin/python -m bench.followups DIR [DIR ...] [--json]

The follow-up golden set is built on the fly from a question collection (nothing is stored): FAQ questions
in their file order, where a question shares a phrase with the one before it ("How can I remove duplicate
elements from a list or array?" then "How can I tell whether a certain element is contained in a list or
array?"), become a two-turn conversation: turn 1 the earlier question, turn 2 the later one with the shared
phrase replaced by "it" / "them" ("… is contained in them?"). Its judged answer is the later question's.

Runs, all hybrid through the production Searcher (k = 100, document level):
  full         the later question as written (the ceiling);
  alone        the follow-up searched by itself (what a history-blind system does);
  history      the follow-up through index.followup.retrieval_query with turn 1 as history (what Docent does);
  switch       control: each FULL question after an unrelated question (another section of the FAQ), through
               retrieval_query: a question that names its subject must not be dragged to the old one.
Target (issue 9): history recall@20 within 0.05 of full; switch equal to full.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.retrieval_quality import SHARED, MemoEmbedder, collection_args, prepare
from index.evalrun import DEPTH, EVAL_PRINCIPAL
from index.evaluate import Query, dedupe_docs, score_run
from index.followup import content_words, retrieval_query
from index.search import Searcher
from store.settings import get_settings

DEFAULT_DIRS = (SHARED / "perlfaq", SHARED / "debfaq")
METRICS = ("ndcg@10", "recall@20", "recall@100")
MIN_PHRASE_CHARS = 4


class Pair(msgspec.Struct, frozen=True):
    earlier: str
    follow_up: str
    full: Query


def shared_phrase(earlier: str, later: str) -> str | None:
    """The longest run of the later question's words whose content words all occur in the earlier one."""
    seen = set(content_words(earlier))
    words = re.findall(r"[A-Za-z0-9_']+", later)
    best: tuple[int, int] | None = None
    for start in range(len(words)):
        end = start
        while end < len(words) and (words[end].lower() in seen):
            end += 1
        if end > start and (best is None or end - start > best[1] - best[0]):
            best = (start, end)
    if best is None:
        return None
    phrase = " ".join(words[best[0] : best[1]])
    return phrase if len(phrase) >= MIN_PHRASE_CHARS else None


def make_follow_up(earlier: str, later: str) -> str | None:
    phrase = shared_phrase(earlier, later)
    if phrase is None:
        return None
    pronoun = "them" if phrase.lower().endswith("s") and not phrase.lower().endswith("ss") else "it"
    rewritten = re.sub(re.escape(phrase), pronoun, later, count=1)
    return rewritten if rewritten != later else None


def pairs(queries: Sequence[Query]) -> list[Pair]:
    found = []
    for earlier, later in itertools.pairwise(queries):
        follow_up = make_follow_up(earlier.text, later.text)
        if follow_up is not None:
            found.append(Pair(earlier=earlier.text, follow_up=follow_up, full=later))
    return found


def unrelated(queries: Sequence[Query], n: int) -> str:
    """A question from far away in the file (another FAQ section) to precede question n."""
    return queries[(n + len(queries) // 2) % len(queries)].text


def switched(queries: Sequence[Query]) -> list[str]:
    return [retrieval_query(q.text, [unrelated(queries, n)]) for n, q in enumerate(queries)]


def run(searcher: Searcher, ids: Sequence[str], texts: Sequence[str], qrels: dict) -> dict[str, float]:
    results = searcher.search_many_sync(list(texts), EVAL_PRINCIPAL, k=DEPTH, mode="hybrid")
    ranked = {i: dedupe_docs((h.doc_id for h in r.hits), DEPTH) for i, r in zip(ids, results, strict=True)}
    return score_run(ranked, {i: qrels[i] for i in ids})


def evaluate(directory: Path) -> dict:
    settings = get_settings()
    prepared = prepare(settings, directory)
    queries = list(prepared.collection.queries)
    found = pairs(queries)
    ids = [p.full._id for p in found]
    qrels = prepared.collection.qrels
    searcher = Searcher(prepared.settings, prepared.version, MemoEmbedder(prepared.embedder.embedder))
    try:
        runs = {
            "full": run(searcher, ids, [p.full.text for p in found], qrels),
            "alone": run(searcher, ids, [p.follow_up for p in found], qrels),
            "history": run(searcher, ids, [retrieval_query(p.follow_up, [p.earlier]) for p in found], qrels),
            "switch": run(searcher, [q._id for q in queries], switched(queries), qrels),
            "switch-baseline": run(searcher, [q._id for q in queries], [q.text for q in queries], qrels),
        }
    finally:
        searcher.close()
    examples = [[p.earlier, p.follow_up] for p in found[:3]]
    return {"collection": directory.name, "pairs": len(found), "runs": runs, "examples": examples}


def format_report(reports: Sequence[dict]) -> str:
    lines = ["| collection | run | " + " | ".join(METRICS) + " |", "|" + " --- |" * (len(METRICS) + 2)]
    for report in reports:
        for n, (name, metrics) in enumerate(report["runs"].items()):
            label = f"{report['collection']} ({report['pairs']} pairs)" if n == 0 else ""
            lines.append(f"| {label} | {name} | " + " | ".join(f"{metrics[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = collection_args(__doc__ or "", DEFAULT_DIRS, argv)
    reports = [evaluate(d) for d in args.directories]
    print(format_report(reports))
    for report in reports:
        for earlier, follow_up in report["examples"]:
            print(f"  e.g. {earlier!r} -> {follow_up!r}")
    if args.json:
        print(json.dumps(reports, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
